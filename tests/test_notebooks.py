"""The marimo notebooks: every one passes `marimo check`, and the tour runs headless end to end.

The tour runs in a subprocess (``apptest.run_notebook``: ``app.run()`` on the notebook file) with
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


def test_open_or_build_builds_once_behind_a_bar_then_opens(store):
    from llmlab.build import open_or_build

    _Bar.made.clear()
    art = open_or_build("m", "micro", store, _Bar)
    assert art.kind == "base" and store.exists("m")
    (made,) = _Bar.made
    assert made["title"] == "Training m" and sum(made["bar"].increments) == made["total"] > 0
    again = open_or_build("m", "micro", store, _Bar)
    assert again.content_hash == art.content_hash and len(_Bar.made) == 1  # opened, no second bar
