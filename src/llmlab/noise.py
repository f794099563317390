"""Keeping other libraries' chatter out of llmlab's output: the one place that silences it.

- ``quiet_loggers``: third-party loggers turned down (torchao's "Failed to load ..." for its
  CUDA-only kernels on every CPU import of transformers, mlflow's migrations, mergekit's notes);
- ``no_progress_bars`` / ``quiet_loading``: transformers' weight-loading bars, for good or for one block;
- ``quiet_peft``: peft imports GPTQModel (when installed) the first time it wraps a layer, and
  GPTQModel prints a banner to stdout on import; transformers warns about a name peft still calls;
- ``quiet_llama_cpp``: llama.cpp's own log routed into Python logging, errors only;
- ``captured_output``: file descriptors 1 and 2 sent to a log file (C code and compilers too), with
  ``log_tail`` to quote it in an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Loggers that say nothing a user of llmlab needs, whenever their library is used.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_loggers(*names: str, level: int = logging.WARNING) -> None:
    """Turn the named loggers down to ``level``."""
    for name in names:
        logging.getLogger(name).setLevel(level)


def no_progress_bars() -> None:
    """Switch off transformers' loading and writing bars: llmlab's own progress events say what is happening."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide the weight-loading bar and the import noise of optional kernels (torchao on CPU) for one block."""
    from transformers.utils import logging as hf_logging

    quiet_loggers(*NOISY_LOGGERS, level=logging.ERROR)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def quiet_peft() -> None:
    """Silence peft's dependencies' start-up output (safe to call many times)."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if "gptqmodel" in sys.modules or importlib.util.find_spec("gptqmodel") is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gptqmodel  # noqa: F401
    quiet_loggers("logbar")


_log_callback: Any = None  # the ctypes callback must stay referenced while llama.cpp may call it


def quiet_llama_cpp() -> None:
    """Route llama.cpp's own log into Python logging, errors only.

    llama-cpp-python's callback maps ggml's log levels with an outdated table (a warning counts
    as an error) and prints to stderr, so its ``verbose=False`` still shows warnings."""
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes

    import llama_cpp

    log = logging.getLogger("llmlab.llama_cpp")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level == 4:  # GGML_LOG_LEVEL_ERROR (0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continued)
            log.error(text.decode("utf-8", errors="replace").rstrip())

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


@contextlib.contextmanager
def captured_output(prefix: str = "llmlab-gptqmodel-") -> Iterator[Path]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so compilers and C code too)
    to a temporary log file for the duration; yield its path. The file is removed afterwards, unless
    the block raised: then it is kept, so the error can quote it (``log_tail``) and name it."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    failed = False
    log = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115  (closed below, after the handlers move)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield Path(name)
    except BaseException:
        failed = True
        raise
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        # Libraries imported inside the block (GPTQModel's logbar) attach logging handlers to the
        # redirected stream: drop them before it closes, so later log records are not written to it.
        loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values()
                                          if isinstance(v, logging.Logger))]
        for lg in loggers:
            for handler in [h for h in lg.handlers if getattr(h, "stream", None) is log]:
                lg.removeHandler(handler)
        log.close()
        for f in (*saved, fd):
            os.close(f)
        quiet_loggers("gptqmodel", "logbar", "tokenicer", *NOISY_LOGGERS)
        if not failed:
            os.unlink(name)


def log_tail(path: Path, lines: int = 5) -> str:
    """The last non-empty lines of a captured log (progress-bar redraws dropped)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    keep = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
    return " | ".join([ln for ln in keep if ln][-lines:])
