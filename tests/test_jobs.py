"""Jobs: out-of-process runs that can be followed, queued, cancelled and killed safely; what their
events tell (each step's phases, an ETA, each step's own metrics) and a job's log."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from llmlab import recipes
from llmlab.events import duration_text, phases, step_states
from llmlab.jobs import JobQueue, current_job, headline, job_log, job_report
from llmlab.store import Store


def _recipe(name: str, steps: int | None = None) -> recipes.Recipe:
    cfg = {"name": name, "size": "micro"}
    if steps:
        cfg["steps"] = steps
    return recipes.load({"name": f"build-{name}", "steps": [{"build-demo": cfg}]})


def _wait_for_training(queue: JobQueue, job_id: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(e.get("type") == "progress" and e.get("done", 0) > 0 for e in queue.events(job_id)):
            return
        assert queue.get(job_id).status in ("queued", "running"), queue.log(job_id)
        time.sleep(0.1)
    raise AssertionError("the job never started training")


@pytest.mark.slow
def test_job_runs_out_of_process_and_records_its_recipe(store):
    queue = JobQueue(store)
    job = queue.submit(_recipe("a"))
    done = queue.wait(job.id, timeout=300)
    assert done.status == "done", queue.log(job.id)
    assert done.pid != os.getpid() and done.seconds > 0
    kinds = [(e["kind"], e["status"]) for e in queue.events(job.id) if e["type"] == "step"]
    assert kinds == [("build-demo", "start"), ("build-demo", "done")]
    resolved = queue.recipe(job.id)["steps"][0]["build-demo"]
    assert resolved["size"] == "micro" and "seed" in resolved  # defaults are filled in
    assert store.verify("a") == []
    assert queue.progress(job.id)["index"] == 1


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_leaves_no_artifact(store):
    queue = JobQueue(store)
    job = queue.submit(_recipe("b", steps=100000))
    _wait_for_training(queue, job.id)
    assert queue.cancel(job.id).status == "cancelled"
    assert not store.exists("b")
    assert Store(store.root).list() == [] and list((store.root / ".tmp").iterdir()) == []


@pytest.mark.slow
def test_sigkill_mid_write_leaves_the_store_consistent(store):
    queue = JobQueue(store)
    job = queue.submit(_recipe("c", steps=100000))
    _wait_for_training(queue, job.id)
    assert any((store.root / ".tmp").iterdir())  # the artifact is being written
    os.killpg(queue.get(job.id).pid, signal.SIGKILL)
    assert queue.wait(job.id, timeout=10).status == "died"
    assert not store.exists("c") and not (store.root / "c").exists()
    fresh = Store(store.root)  # the next run cleans the dead writer's leftovers
    assert list((store.root / ".tmp").iterdir()) == [] and fresh.list() == []
    again = queue.submit(_recipe("c"))
    assert queue.wait(again.id, timeout=300).status == "done"
    assert fresh.verify("c") == []


@pytest.mark.slow
def test_queue_runs_one_job_at_a_time_in_order(store):
    queue = JobQueue(store)
    first = queue.submit(_recipe("d"))
    second = queue.submit(_recipe("e"))
    a, b = queue.wait(first.id, 300), queue.wait(second.id, 300)
    assert a.status == b.status == "done"
    assert b.started >= a.ended


@pytest.mark.slow
def test_second_writer_of_the_same_artifact_fails_cleanly(store):
    queue = JobQueue(store)
    with store.write("f", "base") as w:
        (w.path / "x").write_text("held")
        job = queue.submit(_recipe("f"), force=True)
        failed = queue.wait(job.id, 300)
    assert failed.status == "failed" and "being written by another job" in failed.error
    assert store.verify("f") == [] and list(store.get("f").manifest.files) == ["x"]


def test_progress_keeps_one_counter_per_task(store):
    queue = JobQueue(store)
    job = queue.create(_recipe("p"))
    events = [
        {"type": "step", "index": 0, "total": 1, "kind": "tune", "status": "start"},
        {"type": "progress", "task": "tune", "done": 3, "total": 10},
        {"type": "metric", "task": "tune", "step": 3, "loss": 1.5},
        {"type": "progress", "task": "accuracy", "done": 2, "total": 50},
    ]
    (queue.root / job.id / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    p = queue.progress(job.id)
    assert p["tasks"]["tune"] == {"done": 3, "of": 10, "metrics": {"task": "tune", "step": 3, "loss": 1.5}}
    assert p["tasks"]["accuracy"] == {"done": 2, "of": 50, "metrics": {}}
    assert (p["task"], p["done"], p["of"]) == ("accuracy", 2, 50)  # the latest counter, as before


# ----- what the events tell: phases, ETA, each step's own numbers, the log -----
def _unit(t: float, name: str, reference: bool) -> list[dict]:
    """One model scored by the quality table from time ``t``: the events it sends (4 s per sub-task)."""
    out = [{"time": t, "type": "log", "message": f"scoring {name}"}]
    tasks = ["perplexity", "compare", "speed"] if reference else ["perplexity", "speed"]
    for k, task in enumerate(tasks):
        out += [{"time": t + 4 * k + d, "type": "progress", "task": task, "done": d, "total": 4} for d in (1, 2, 3, 4)]
    return out


def quantize_events(upto: float) -> list[dict]:
    """A one-step quantize job's events (convert, quantize, then the quality table over three models,
    each a unit of scoring sub-tasks), those sent by time ``upto``."""
    events = [{"time": 0.0, "type": "step", "index": 0, "total": 1, "kind": "quantize", "status": "start",
               "outputs": ["m-f16", "m-q8_0"]},
              {"time": 0.0, "type": "log", "message": "converting m to GGUF f16"}]
    events += [{"time": 2.0 + d, "type": "progress", "task": "convert", "done": d, "total": 12} for d in range(13)]
    events += [{"time": 15.0, "type": "progress", "task": "quantize", "done": 0, "total": 1},
               {"time": 16.0, "type": "progress", "task": "quantize", "done": 1, "total": 1}]
    t = 20.0
    for i, (name, ref) in enumerate([("m", False), ("m-f16", True), ("m-q8_0", True)]):
        events += _unit(t, name, ref)
        t += 12 if ref else 8
        events.append({"time": t, "type": "progress", "task": "quality", "done": i + 1, "total": 3})
        t += 1
    events.append({"time": t, "type": "step", "index": 0, "total": 1, "kind": "quantize", "status": "done",
                   "outputs": ["m-f16", "m-q8_0"], "seconds": t, "metrics": {"ppl": 20.5, "kld_mean": 0.01}})
    return [e for e in events if e["time"] <= upto]


def test_a_phase_eta_comes_from_its_rate_since_it_began():
    [step] = step_states(quantize_events(upto=8.0))  # convert 6/12, 6 s after it began at 2 s
    assert step.status == "running" and step.current.task == "convert"
    assert step.current.eta(now=8.0) == pytest.approx(6.0)
    assert step.current.eta(now=10.0) == pytest.approx(8 / 6 * 6)  # no news for 2 s: the rate falls
    assert step.current.text(now=8.0) == "convert 6/12 · ETA 6 s"


def test_scoring_sub_tasks_run_inside_the_quality_phase_whose_eta_counts_them():
    # quality 2/3 (at 41 s), the third model's perplexity running: quality began with the first model's
    # scoring at 20 s, so 2 models took 21 s + the time since: the ETA of the last one follows from that.
    [step] = step_states(quantize_events(upto=44.0))
    assert [p.task for p in step.phases] == ["convert", "quantize", "quality"]
    quality = step.current
    assert (quality.task, quality.done, quality.total, quality.started) == ("quality", 2, 3, 20.0)
    assert set(quality.inner) == {"perplexity", "compare", "speed"}
    assert quality.eta(now=44.0) == pytest.approx((44.0 - 20.0) / 2)
    assert step.inner_now().task == "perplexity" and step.inner_now().done == 2
    assert step.inner_now().started == 42.0  # its current run began after the log line at 42 s
    # already at quality 1/3, once the next model's scoring starts, its start is known
    [early] = step_states(quantize_events(upto=31.0))
    assert early.current.task == "quality" and early.current.started == 20.0
    assert early.current.eta(now=31.0) == pytest.approx(11.0 * 2)


def test_training_has_an_eta_from_its_first_step_with_validation_inside_it():
    events = [{"time": 0.0, "type": "step", "index": 0, "total": 1, "kind": "tune", "status": "start"},
              {"time": 0.5, "type": "log", "message": "tuning 'demo' with lora on torch (cpu)"}]
    for step in range(1, 11):  # 2 s a step; validation (two batches) after steps 1 and 10
        t = 0.5 + 2 * step
        events.append({"time": t, "type": "progress", "task": "tune", "done": step, "total": 100})
        if step in (1, 10):
            events += [{"time": t + 0.2, "type": "progress", "task": "validation", "done": d, "total": 2} for d in (1, 2)]
            events.append({"time": t + 0.3, "type": "metric", "task": "tune", "step": step, "loss": 3.0})
    [step] = step_states(events)
    [train] = step.phases
    assert (train.task, train.started, train.inner) == ("tune", 0.5, ["validation"])
    assert train.eta(now=20.5) == pytest.approx(20 / 10 * 90)


def test_an_eta_needs_one_unit_done_and_ends_with_the_phase():
    [step] = step_states(quantize_events(upto=2.0))  # convert 0/12
    assert step.current.eta(now=3.0) is None
    [done] = step_states(quantize_events(upto=1e9))
    assert done.status == "done" and done.current is None and all(p.eta(now=99.0) is None for p in done.phases)
    assert phases([]) == ([], {})


def test_each_step_keeps_its_own_metrics_and_progress_drops_an_earlier_steps(store):
    events = [
        {"type": "step", "index": 0, "total": 2, "kind": "build-demo", "status": "start", "outputs": ["demo"]},
        {"type": "progress", "task": "train", "done": 10, "total": 10},
        {"type": "metric", "task": "train", "step": 10, "loss": 3.2, "val_loss": 3.4},
        {"type": "step", "index": 0, "total": 2, "kind": "build-demo", "status": "done", "outputs": ["demo"],
         "seconds": 5.0, "metrics": {"train_loss": 3.2, "val_loss": 3.4}},
        {"type": "step", "index": 1, "total": 2, "kind": "score", "status": "start", "outputs": []},
        {"type": "progress", "task": "perplexity", "done": 1, "total": 4},
    ]
    queue = JobQueue(store)
    job = queue.create(_recipe("s"))
    (queue.root / job.id / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    p = queue.progress(job.id)
    assert p["step"] == "score" and p["metrics"] == {}, "the training numbers belong to step 1, not step 2"
    first, second = step_states(events)
    assert first.metrics == {"train_loss": 3.2, "val_loss": 3.4} and second.metrics == {}
    events.append({"type": "step", "index": 1, "total": 2, "kind": "score", "status": "done", "outputs": [],
                   "seconds": 2.0, "metrics": {"ppl": 12.5, "accuracy": {"heldout": 0.5}, "ok": True}})
    (queue.root / job.id / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    reports = job_report(queue, job.id)
    assert [r.state.kind for r in reports] == ["build-demo", "score"]
    assert reports[0].outputs[0].name == "demo" and reports[0].outputs[0].kind is None  # not in this store
    assert reports[0].metrics == {}  # a step that writes artifacts shows theirs
    assert reports[1].metrics == {"ppl": 12.5, "accuracy.heldout": 0.5}


def test_headline_prefers_the_quality_numbers_and_falls_back_to_any():
    assert headline({"size_bytes": 10, "ppl": 2.0, "kld_mean": 0.1, "engine": "x", "top1": 0.9}) == \
        {"ppl": 2.0, "kld_mean": 0.1, "top1": 0.9}
    assert headline({"chunks": 12, "name": "x", "index_seconds": 1.5}) == {"chunks": 12, "index_seconds": 1.5}
    assert [duration_text(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def test_the_log_shows_log_events_and_stderr_together(store):
    queue = JobQueue(store)
    job = queue.create(_recipe("l"))
    events = [{"time": 0.0, "type": "step", "index": 0, "total": 1, "kind": "quantize", "status": "start",
               "outputs": ["m-q8_0"]},
              {"time": 1.0, "type": "log", "message": "converting m to GGUF f16"},
              {"time": 2.0, "type": "log", "level": "warning", "message": "no demo world"},
              {"time": 3.0, "type": "step", "index": 0, "total": 1, "kind": "quantize", "status": "done",
               "outputs": ["m-q8_0"], "seconds": 3.0}]
    (queue.root / job.id / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    log = job_log(queue, job.id)
    assert "step 1/1 quantize → m-q8_0" in log and "converting m to GGUF f16" in log
    assert "warning: no demo world" in log and "quantize: done in 3 s" in log and "stderr" not in log
    (queue.root / job.id / "log.txt").write_text("UserWarning: something\n")
    assert job_log(queue, job.id).endswith("── stderr\nUserWarning: something")


def test_the_current_job_is_the_running_one_else_the_newest(store):
    queue = JobQueue(store)
    older, newer = queue.create(_recipe("o")), queue.create(_recipe("n"))
    assert current_job(queue.list()).id == newer.id
    running = older.model_copy(update={"status": "running"})
    assert current_job([queue.get(newer.id), running]).id == older.id
    assert current_job([]) is None
