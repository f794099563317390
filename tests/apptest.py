"""Helpers for the front-end tests: Streamlit AppTest pages (``open_page``, ``texts``), a page file's
helpers without running it (``load_page``) and marimo notebooks run headless in a subprocess
(``run_notebook``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
HOME = "views/home.py"


def open_page(page: str, timeout: float = 60) -> AppTest:
    """Run the app, switch to ``page`` and check that nothing raised."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    if page != HOME:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def load_page(page: str) -> ModuleType:
    """The page file ``app/<page>`` as a module: its helpers, without running the page."""
    path = APP.parent / page
    spec = importlib.util.spec_from_file_location(path.stem + "_page", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Runs a notebook file's app, then prints REPORT (a Python expression over ``defs``, the notebook's
# definitions) as one JSON line.
_RUN_NOTEBOOK = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("notebook", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
_, defs = module.app.run()
print(json.dumps(REPORT))
"""


def run_notebook(notebook: Path, workdir: Path, report: str, timeout: float = 600) -> dict[str, Any]:
    """Run a marimo notebook headless in a subprocess, as CI does: a fresh store under ``workdir``,
    ``LLMLAB_NOTEBOOK_AUTORUN=1`` pressing its run buttons, the micro model size, no tracking.
    ``report`` is a Python expression over ``defs`` (the notebook's definitions) giving a
    JSON-able dict, which is returned."""
    env = {**os.environ, "LLMLAB_HOME": str(workdir / "models"), "LLMLAB_NOTEBOOK_AUTORUN": "1",
           "LLMLAB_NOTEBOOK_SIZE": "micro", "LLMLAB_TRACKING_URI": "off"}
    code = _RUN_NOTEBOOK.replace("REPORT", report)
    result = subprocess.run([sys.executable, "-c", code, str(notebook)], capture_output=True, text=True, env=env,
                            cwd=workdir, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def texts(at: AppTest) -> str:
    """Everything the page wrote as markdown, captions, alerts and code, joined."""
    parts = [*at.markdown, *at.caption, *at.info, *at.success, *at.error, *at.warning, *at.code]
    return "\n".join(str(p.value) for p in parts)
