"""The Jobs page (``app/views/jobs.py``) and the widgets it shares with the other pages (``app/widgets.py``),
through Streamlit's ``AppTest`` on a temporary store.

The job card comes first: the running job (else the newest), each step with its phases and an ETA while
it runs, and once done its outputs (links to the Models page opened on each) with their own metrics, and
a Log tab with the job's log events and stderr. Fast tests write a job's folder by hand (its events and
the artifacts it "made"); the slow one runs a real build-then-quantize job submitted through the page's
form. The app session id lives in the URL (``?session=``), so a reload keeps it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from apptest import APP, open_page, texts  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402
from test_jobs import quantize_events  # noqa: E402

from llmlab import recipes  # noqa: E402
from llmlab.jobs import JobQueue  # noqa: E402
from llmlab.store import Store  # noqa: E402

PAGE = "views/jobs.py"
SESSION = "20261124-001700-ab12cd"


def fake_artifact(store: Store, name: str, kind: str, metrics: dict) -> None:
    with store.write(name, kind) as w:
        (w.path / f"{name}.bin").write_bytes(b"x")
    store.record_metrics(name, metrics)


def fake_job(store: Store, events: list[dict], *, running: bool = False, stderr: str = "") -> str:
    """A job folder as a job process leaves it: a quantize recipe, its events, its status."""
    import psutil

    queue = JobQueue(store)
    job = queue.create(recipes.load({"name": "quantize-m", "steps": [{"quantize": {"model": "m", "types": ["q8_0"]}}]}))
    (queue.root / job.id / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (queue.root / job.id / "log.txt").write_text(stderr)
    info = job.model_copy(update={"status": "running" if running else "done", "started": events[0]["time"],
                                  "ended": None if running else events[-1]["time"], "pid": os.getpid(),
                                  "pid_started": psutil.Process().create_time()})
    (queue.root / job.id / "job.json").write_text(info.model_dump_json())
    return job.id


def shifted(events: list[dict], start: float) -> list[dict]:
    return [{**e, "time": e["time"] + start} for e in events]


def links(at: AppTest) -> dict[str, str]:
    """The page links drawn: label -> query string."""
    return {link.proto.label: link.proto.query_string for link in at.get("page_link")}


def bars(at: AppTest) -> list[str]:
    return [bar.proto.text for bar in at.get("progress")]


# ----- the job card -----
def test_a_finished_jobs_card_lists_its_outputs_with_links_and_their_own_metrics(empty_home: Store):
    store = empty_home
    fake_artifact(store, "m-f16", "gguf", {"ppl": 20.25, "kld_mean": 0.0001, "top1": 0.999})
    fake_artifact(store, "m-q8_0", "gguf", {"ppl": 20.5, "kld_mean": 0.0123, "top1": 0.98, "size_bytes": 7})
    events = quantize_events(upto=1e9)
    events.insert(3, {"time": 3.0, "type": "metric", "task": "train", "loss": 9.9})  # not this step's numbers
    fake_job(store, shifted(events, time.time() - 100), stderr="UserWarning: a warning on stderr\n")

    at = open_page(PAGE)
    shown = texts(at)
    assert "**step 1/1 · quantize · m** · done in 55 s" in shown
    session = at.query_params["session"]
    assert links(at) == {"m-f16": f"artifact=m-f16&session={session}", "m-q8_0": f"artifact=m-q8_0&session={session}"}
    assert "gguf · perplexity 20.5 · KLD vs reference 0.0123 · top-1 vs reference 0.98" in shown  # m-q8_0's own, from the store
    assert "gguf · perplexity 20.25 · KLD vs reference 0.0001 · top-1 vs reference 0.999" in shown
    assert "loss" not in shown and not bars(at)  # nothing of the training metric, no live bar once done
    log = next(c.value for c in at.code if "converting m to GGUF f16" in c.value)
    assert "scoring m-q8_0" in log and log.endswith("── stderr\nUserWarning: a warning on stderr")
    # the recipe editor is folded away; the card comes before the form
    editor = next(e for e in at.expander if e.label == "Edit the recipe (YAML)")
    assert editor.proto.expanded is False


def test_a_running_jobs_card_shows_its_phases_and_an_eta(empty_home: Store):
    start = time.time() - 44.0  # quality 2/3 since 41 s, the last model's perplexity running
    job_id = fake_job(empty_home, shifted(quantize_events(upto=44.0), start), running=True)
    before = time.time()
    at = open_page(PAGE)
    after = time.time()
    shown = texts(at)
    assert re.search(r"\*\*step 1/1 · quantize · m\*\* · running for \d\d s", shown)
    assert "Phases: ✓ convert 12/12 · ✓ quantize 1/1 · ▸ quality 2/3" in shown
    [bar] = bars(at)
    eta = re.fullmatch(r"quality 2/3 · ETA (\d+) s — perplexity 2/4 · ETA \d+ s", bar)
    # quality began with the first model's scoring (20 s in): 2 models in that time, so one more takes half
    assert eta and (before - start - 20) / 2 - 1 <= int(eta.group(1)) <= (after - start - 20) / 2 + 1, bar
    assert at.button(key=f"jobs:cancel:{job_id}")  # a running job can be cancelled
    assert not links(at)  # nothing written yet


def test_the_current_job_comes_first_then_a_picked_one(empty_home: Store):
    done = fake_job(empty_home, shifted(quantize_events(upto=1e9), time.time() - 300))
    running = fake_job(empty_home, shifted(quantize_events(upto=10.0), time.time() - 10), running=True)
    newest = fake_job(empty_home, shifted(quantize_events(upto=1e9), time.time() - 50))
    at = open_page(PAGE)
    assert at.selectbox[0].value == running and f"`{running}`" in texts(at)
    at.selectbox[0].select(done).run()
    assert f"`{done}`" in texts(at) and f"`{running}`" not in texts(at)
    at.run()  # the picked job stays shown
    assert at.selectbox[0].value == done and any(o.endswith(newest) for o in at.selectbox[0].options)


def test_page_says_how_to_start_when_there_are_no_jobs(empty_home: Store):
    at = open_page(PAGE)
    assert "No jobs yet" in texts(at) and "Steps: build-demo" in texts(at)


@pytest.mark.slow
def test_a_real_job_submitted_on_the_page_lists_each_steps_outputs_and_metrics(empty_home: Store):
    pytest.importorskip("llama_cpp")
    recipe = ("name: build-and-quantize\nsteps:\n  - build-demo: {name: demo, size: micro}\n"
              "  - quantize: {model: demo, types: [q8_0], qa_limit: 5, texts_tokens: 2048}\n")
    at = open_page(PAGE, timeout=120)
    at.selectbox(key="jobs:recipe").select("(write your own)").run()
    at.text_area(key="jobs:yaml:(write your own)").input(recipe).run()
    assert "Steps: build-demo → quantize" in texts(at)
    at.button(key="jobs:submit").click().run()
    assert not at.exception and "Submitted job" in at.success[0].value
    queue = JobQueue(empty_home)
    [job] = queue.list()
    assert queue.wait(job.id, timeout=900).status == "done", queue.log(job.id)

    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    assert "step 1/2 · build-demo** · done in" in shown and "step 2/2 · quantize · demo** · done in" in shown
    assert set(links(at)) == {"demo", "demo-f16", "demo-q8_0"}
    assert links(at)["demo-q8_0"].startswith("artifact=demo-q8_0&session=")
    q8 = empty_home.get("demo-q8_0").metrics
    q8_line = next(c.value for c in at.caption
                   if c.value.startswith("gguf · perplexity") and f"{q8['ppl']:.4g}" in c.value)
    assert f"KLD vs reference {q8['kld_mean']:.4g}" in q8_line and "loss" not in q8_line  # its own, not training's
    demo_line = next(c.value for c in at.caption if c.value.startswith("base"))
    assert f"train_loss {empty_home.get('demo').manifest.info['train_loss']:.4g}" in demo_line  # its build's
    log = next(c.value for c in at.code if "scoring demo-q8_0" in c.value)
    assert "step 2/2 quantize: done in" in log


# ----- the app session, kept in the URL -----
def test_the_session_id_survives_a_reload_and_export_offers_it_as_this_one(empty_home: Store):
    first = AppTest.from_file(str(APP), default_timeout=60)
    first.run()
    session = first.query_params["session"]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", session)
    first.switch_page(PAGE).run()
    assert first.query_params["session"] == session  # kept when moving between pages

    reloaded = AppTest.from_file(str(APP), default_timeout=60)  # a reload: a fresh session, the same URL
    reloaded.query_params["session"] = session
    reloaded.run()
    reloaded.switch_page(PAGE).run()
    assert not reloaded.exception
    box = reloaded.selectbox(key="jobs:export:session")
    assert box.value == session and box.options[0] == f"{session} (this one)"


@pytest.mark.parametrize("bad", ["../../etc", "a b", "x" * 80, ""])
def test_a_bad_session_id_in_the_url_gets_a_fresh_one(empty_home: Store, bad: str):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["session"] = bad
    at.run()
    assert not at.exception
    fresh = at.query_params["session"]
    assert fresh != bad and re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", fresh)


# ----- shared widgets -----
def test_an_output_link_opens_the_models_page_on_that_artifact_once(micro_home: Store):
    fake_artifact(micro_home, "other", "base", {})
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["artifact"] = "micro"  # what the Jobs card links to
    at.run()
    at.switch_page("views/models.py").run()
    assert not at.exception and at.selectbox(key="models:selected").value == "micro"
    at.selectbox(key="models:selected").select("other").run()  # the user may then pick another
    assert at.selectbox(key="models:selected").value == "other"


def test_the_chat_has_no_system_prompt_by_default(micro_home: Store):
    at = open_page("views/models.py")
    [system] = [t for t in at.text_input if t.label == "System prompt"]
    assert system.value == "" and "chat template default" in system.placeholder


def test_a_station_pages_job_panel_shows_the_phase_with_its_eta(micro_home: Store, monkeypatch, tmp_path: Path):
    """The Quantize page follows its own job with the same phase bar and ETA as the Jobs page."""
    events = [{**e, "outputs": ["micro-f16", "micro-q8_0"]} if e["type"] == "step" else e
              for e in quantize_events(upto=8.0)]
    queue = JobQueue(micro_home)
    job = queue.create(recipes.load({"name": "q", "steps": [{"quantize": {"model": "micro", "types": ["q8_0"]}}]}))
    import psutil

    (queue.root / job.id / "events.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in shifted(events, time.time() - 8.0)))
    info = job.model_copy(update={"status": "running", "started": time.time() - 8.0, "pid": os.getpid(),
                                  "pid_started": psutil.Process().create_time()})
    (queue.root / job.id / "job.json").write_text(info.model_dump_json())
    at = open_page("views/quantize.py")
    assert any(re.fullmatch(r"convert 6/12 · ETA \d s", b) for b in bars(at)), bars(at)
