"""The marimo notebooks: every one passes `marimo check`, and each runs headless end to end (the tour,
agents and export notebooks here; tune, quantize, merge and evaluate beside their app pages' tests).

A notebook runs in a subprocess (``apptest.run_notebook``: ``app.run()`` on the notebook file) with
a temporary store, ``LLMLAB_NOTEBOOK_AUTORUN=1`` pressing its run buttons and the micro model size,
and reports a few of its definitions back as JSON.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("marimo")
from apptest import run_notebook  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOUR = NOTEBOOKS / "00_tour.py"

# The tour's definitions the test checks (an expression over ``defs``).
TOUR_REPORT = """{
    "artifact": defs["artifact"].name if defs.get("artifact") is not None else None,
    "exists": defs.get("artifact") is not None and defs["store"].exists(defs["artifact"].name),
    "answer": defs.get("answer"),
    "loss_rows": len(defs["loss_frame"]) if "loss_frame" in defs else 0,
}"""


def marimo_cli() -> str:
    exe = Path(sys.executable).with_name("marimo")
    return str(exe) if exe.exists() else "marimo"


def test_every_notebook_passes_marimo_check():
    notebooks = sorted(str(p) for p in NOTEBOOKS.glob("*.py"))
    assert notebooks, "no notebooks found"
    result = subprocess.run([marimo_cli(), "check", "--strict", *notebooks], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_tour_runs_headless_with_the_micro_model(tmp_path: Path):
    defs = run_notebook(TOUR, tmp_path, TOUR_REPORT, timeout=600)
    assert defs["artifact"] == "demo-micro" and defs["exists"]
    assert isinstance(defs["answer"], str) and defs["answer"]  # micro: often just whitespace
    assert defs["loss_rows"] > 0


class _Bar:
    """Records what a progress bar (marimo's ``mo.status.progress_bar``) is told."""

    made: list[dict] = []

    def __init__(self, total: int, title: str):
        self.total, self.title, self.increments = total, title, []
        _Bar.made.append({"total": total, "title": title, "bar": self})

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, increment: int = 1, title: str | None = None, subtitle: str | None = None) -> None:
        self.increments.append(increment)


def test_bar_updates_turns_progress_events_into_increments():
    from llmlab.events import bar_updates

    bar = _Bar(10, "t")
    report = bar_updates(bar, task="train")
    for e in [{"type": "progress", "task": "train", "done": 2, "total": 10}, {"type": "log", "message": "x"},
              {"type": "progress", "task": "eval", "done": 5, "total": 5},
              {"type": "progress", "task": "train", "done": 7, "total": 10}]:
        report(e)
    assert bar.increments == [2, 5]


def test_bar_updates_scaled_counts_a_task_in_percent():
    # tune's number of steps is known only once it has read its data: its bar counts in percent
    from llmlab.events import bar_updates

    bar = _Bar(100, "t")
    report = bar_updates(bar, task="tune", scale=100)
    for done in (1, 2, 3):
        report({"type": "progress", "task": "tune", "done": done, "total": 3})
    assert bar.increments == [33, 33, 34] and sum(bar.increments) == 100


def test_open_or_build_builds_once_behind_a_bar_then_opens(store):
    from llmlab.build import open_or_build

    _Bar.made.clear()
    art = open_or_build("m", "micro", store, _Bar)
    assert art.kind == "base" and store.exists("m")
    (made,) = _Bar.made
    assert made["title"] == "Training m" and sum(made["bar"].increments) == made["total"] > 0
    again = open_or_build("m", "micro", store, _Bar)
    assert again.content_hash == art.content_hash and len(_Bar.made) == 1  # opened, no second bar


# The agents notebook: index the micro world, ask the agent, evaluate with vs without retrieval.
AGENTS_REPORT = """{
    "index_kind": defs["index"].kind,
    "sources": len(defs["reply"].sources),
    "refused": defs["reply"].refused,
    "answered": isinstance(defs["reply"].answer, str),
    "nodes": [s["node"] for s in defs["TraceStore"].for_store(defs["store"]).steps(defs["reply"].run_id)],
    "parts": {p: defs["report"][p]["n"] for p in ("retrieval", "closed_book")},
    "gold_doc_recall": defs["report"]["retrieval"].get("gold_doc_recall"),
}"""

# The export notebook: a GGUF of the micro model, its bundle, parity, and one answer over HTTP.
EXPORT_REPORT = """{
    "kind": defs["bundle"].kind,
    "parity_ok": defs["bundle"].metrics["parity"]["ok"],
    "files": sorted(p.name for p in defs["bundle"].path.iterdir()),
    "answer": defs["answer"],
    "tokens": defs["served_metrics"],
}"""


@pytest.mark.slow
def test_agents_notebook_runs_headless(tmp_path: Path):
    report = run_notebook(NOTEBOOKS / "agents.py", tmp_path, AGENTS_REPORT, timeout=900)
    assert report["index_kind"] == "index" and report["answered"]
    assert "retrieve" in report["nodes"] and "answer" in report["nodes"]  # the graph ran, traced node by node
    assert report["sources"] >= 1 or report["refused"]  # it cites its sources or says it cannot answer
    assert report["parts"] == {"retrieval": 10, "closed_book": 10}  # the micro run asks 10 questions twice
    assert report["gold_doc_recall"] is not None and report["gold_doc_recall"] > 0.5


@pytest.mark.slow
def test_export_notebook_runs_headless(tmp_path: Path):
    report = run_notebook(NOTEBOOKS / "export.py", tmp_path, EXPORT_REPORT, timeout=900)
    assert report["kind"] == "bundle" and report["parity_ok"] is True
    assert {"Dockerfile", "Modelfile", "manifest.json", "requirements.lock"} <= set(report["files"])
    assert isinstance(report["answer"], str)
    assert sum(report["tokens"].values()) > 0  # the server counted the tokens of that answer


@pytest.mark.parametrize("notebook", sorted(p.name for p in NOTEBOOKS.glob("*.py")))
def test_marimo_run_serves_each_notebook_as_an_app(notebook: str, tmp_path: Path):
    """`marimo run` (read-only app mode, loopback, no token) serves the notebook's page."""
    import time

    import httpx

    from llmlab.serve.process import free_port

    port = free_port()
    proc = subprocess.Popen([marimo_cli(), "run", str(NOTEBOOKS / notebook), "--headless", "--no-token",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"marimo run did not answer on port {port} within 60 s"
                time.sleep(0.3)
        assert page.status_code == 200 and '"mode": "read"' in page.text and notebook in page.text
    finally:
        proc.terminate()
        proc.wait(10)
