"""The companion tools: ``llmlab mlflow`` (the MLflow UI), ``llmlab app`` (the Streamlit app) and
``llmlab setup`` (the pinned llama.cpp GGUF converter)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmlab.errors import LlmlabError


def cmd_mlflow(args: argparse.Namespace) -> int:
    import subprocess

    from llmlab import tracking

    argv = tracking.ui_command(args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(argv)


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess

    app = Path(__file__).resolve().parents[3] / "app" / "streamlit_app.py"
    if not app.is_file():
        raise LlmlabError("The app is not found next to the package.",
                          "Run `llmlab app` from a clone of the llmlab repository (pip install -e .).")
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
            "--server.port", str(args.port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    print(f"llmlab app on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(argv)


def cmd_setup(args: argparse.Namespace) -> int:
    from llmlab.quantize import gguf

    path = gguf.setup()
    print(f"GGUF converter ready at {path}")
    return 0
