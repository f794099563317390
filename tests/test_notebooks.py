"""The marimo notebooks: every one passes `marimo check`, and the tour runs headless end to end.

The tour runs in a subprocess (``app.run()`` on the notebook file) with a temporary store,
``LLMLAB_NOTEBOOK_AUTORUN=1`` pressing its run buttons and the micro model size, and reports
a few of its definitions back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("marimo")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOUR = NOTEBOOKS / "00_tour.py"

# Runs a notebook file's app and prints the definitions the test checks, as one JSON line.
RUN_TOUR = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("tour", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
_, defs = module.app.run()
art = defs.get("artifact")
print(json.dumps({
    "artifact": art.name if art is not None else None,
    "exists": art is not None and defs["store"].exists(art.name),
    "answer": defs.get("answer"),
    "loss_rows": len(defs["loss_frame"]) if "loss_frame" in defs else 0,
}))
"""


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
    env = {**os.environ, "LLMLAB_HOME": str(tmp_path / "models"), "LLMLAB_NOTEBOOK_AUTORUN": "1",
           "LLMLAB_NOTEBOOK_SIZE": "micro", "LLMLAB_TRACKING_URI": "off"}
    result = subprocess.run([sys.executable, "-c", RUN_TOUR, str(TOUR)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    defs = json.loads(result.stdout.strip().splitlines()[-1])
    assert defs["artifact"] == "demo-micro" and defs["exists"]
    assert isinstance(defs["answer"], str) and defs["answer"]  # micro: often just whitespace
    assert defs["loss_rows"] > 0
