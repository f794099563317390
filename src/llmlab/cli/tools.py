"""The companion tools: ``llmlab mlflow`` (the MLflow UI), ``llmlab app`` (the Streamlit app) and
``llmlab setup`` (the pinned llama.cpp GGUF converter)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmlab.errors import ConfigError, LlmlabError


def cmd_mlflow(args: argparse.Namespace) -> int:
    import subprocess

    from llmlab import tracking

    _refuse_open_host(args, "the MLflow UI", "read and delete the tracked runs")
    argv = tracking.ui_command(args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(argv)


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess

    _refuse_open_host(args, "the app", "run jobs, read the store and delete models")
    app = Path(__file__).resolve().parents[3] / "app" / "streamlit_app.py"
    if not app.is_file():
        raise LlmlabError("The app is not found next to the package.",
                          "Run `llmlab app` from a clone of the llmlab repository (pip install -e .).")
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
            "--server.port", str(args.port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    print(f"llmlab app on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(argv)


def _refuse_open_host(args: argparse.Namespace, what: str, can: str) -> None:
    """Like ``llmlab serve`` without an API key: only loopback unless ``--expose`` says otherwise."""
    from llmlab.serve.config import is_loopback

    if not getattr(args, "expose", False) and not is_loopback(args.host):
        raise ConfigError(f"Refusing to listen on {args.host}: {what} has no login, so anyone who can reach "
                          f"this address could {can}.",
                          "Pass --expose to listen there anyway (e.g. behind a firewall or an authenticating "
                          "proxy), or bind 127.0.0.1 and use an SSH tunnel.")


def cmd_setup(args: argparse.Namespace) -> int:
    from llmlab.quantize import gguf

    path = gguf.setup()
    print(f"GGUF converter ready at {path}")
    return 0
