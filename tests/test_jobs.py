"""Jobs: out-of-process runs that can be followed, queued, cancelled and killed safely."""

from __future__ import annotations

import os
import signal
import time

import pytest

from llmlab import recipes
from llmlab.jobs import JobQueue
from llmlab.store import Store

pytestmark = pytest.mark.slow


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


def test_cancel_stops_a_running_job_and_leaves_no_artifact(store):
    queue = JobQueue(store)
    job = queue.submit(_recipe("b", steps=100000))
    _wait_for_training(queue, job.id)
    assert queue.cancel(job.id).status == "cancelled"
    assert not store.exists("b")
    assert Store(store.root).list() == [] and list((store.root / ".tmp").iterdir()) == []


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


def test_queue_runs_one_job_at_a_time_in_order(store):
    queue = JobQueue(store)
    first = queue.submit(_recipe("d"))
    second = queue.submit(_recipe("e"))
    a, b = queue.wait(first.id, 300), queue.wait(second.id, 300)
    assert a.status == b.status == "done"
    assert b.started >= a.ended


def test_second_writer_of_the_same_artifact_fails_cleanly(store):
    queue = JobQueue(store)
    with store.write("f", "base") as w:
        (w.path / "x").write_text("held")
        job = queue.submit(_recipe("f"), force=True)
        failed = queue.wait(job.id, 300)
    assert failed.status == "failed" and "being written by another job" in failed.error
    assert store.verify("f") == [] and list(store.get("f").manifest.files) == ["x"]


def test_progress_keeps_one_counter_per_task(store):
    import json

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
