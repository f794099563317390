"""Where llmlab keeps things, read from environment variables with sensible defaults.

| variable | default | what |
| --- | --- | --- |
| ``LLMLAB_HOME`` | ``./models`` | the store: one folder per artifact, plus hidden ``.jobs``, ``.mlflow``, ``.tmp`` |
| ``LLMLAB_DATA`` | ``../shared/data`` if it exists | public data sets used by tests and benchmarks |
| ``LLMLAB_TRACKING_URI`` | ``sqlite:///$LLMLAB_HOME/.mlflow/mlflow.db`` | an MLflow tracking URI; ``off``: none |
| ``LLMLAB_THREADS`` | all cores | CPU threads for torch and llama.cpp (fewer on a busy machine: see ``warn_if_cores_busy``) |
| ``LLMLAB_NOTEBOOK_SIZE`` | ``small`` | the demo model size the notebooks open or build |
| ``LLMLAB_NOTEBOOK_AUTORUN`` | unset | ``1``: the notebooks press their own run buttons (headless runs, CI) |
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import NamedTuple


def home() -> Path:
    """The store folder (created on first use)."""
    return Path(os.environ.get("LLMLAB_HOME") or Path.cwd() / "models").resolve()


def data_dir() -> Path | None:
    """The folder of public data sets, or None when it is not there."""
    env = os.environ.get("LLMLAB_DATA")
    candidates = [Path(env)] if env else [Path.cwd() / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def tracking_uri() -> str | None:
    """The MLflow tracking URI, or None when tracking is switched off."""
    uri = os.environ.get("LLMLAB_TRACKING_URI", "")
    if uri.lower() in {"off", "none", "0", "false"}:
        return None
    if uri:
        return uri
    return f"sqlite:///{home() / '.mlflow' / 'mlflow.db'}"


def threads() -> int:
    """CPU threads to use for inference and training."""
    env = os.environ.get("LLMLAB_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache  # once a process
def warn_if_cores_busy() -> None:
    """Warn when other work holds the cores that llama.cpp's threads would use: its threads wait for each
    other at every step, so a busy machine slows generation many times over, more than fewer threads do."""
    n = threads()
    if os.environ.get("LLMLAB_THREADS") or n < 2 or not hasattr(os, "getloadavg"):
        return  # the user chose the threads, or there is nothing to share
    load = os.getloadavg()[0]
    if load > n:
        logging.getLogger("llmlab").warning(
            f"This machine is busy (load {load:.1f} on {n} cores): llama.cpp's {n} threads will wait for each "
            f"other and generation may run several times slower (measured on 2 cores beside a training job: "
            f"14.6 tokens/s with 2 threads, 32.5 with 1). Set LLMLAB_THREADS to the cores that are free, "
            f"e.g. LLMLAB_THREADS=1, or run when the machine is quiet.")


class NotebookSettings(NamedTuple):
    autorun: bool  # press the run buttons
    size: str  # demo model size
    model_name: str  # "demo" (the quickstart's model) for the small size, else "demo-<size>"


def notebook_settings() -> NotebookSettings:
    """What the notebooks read from the environment: ``AUTORUN, SIZE, MODEL_NAME = notebook_settings()``."""
    size = os.environ.get("LLMLAB_NOTEBOOK_SIZE", "small")
    return NotebookSettings(os.environ.get("LLMLAB_NOTEBOOK_AUTORUN") == "1", size,
                            "demo" if size == "small" else f"demo-{size}")
