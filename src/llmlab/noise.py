"""Keeping other libraries' chatter out of llmlab's output.

peft imports GPTQModel (when installed, as it is for the Quantize station) the first time it wraps
a layer, and GPTQModel prints a banner and environment notes to stdout on import; transformers
warns about a deprecated name that peft still calls. ``quiet_peft`` runs before peft does any of
that: it imports GPTQModel with its output swallowed, turns its logger down to warnings, and
filters that one FutureWarning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
import warnings


def quiet_peft() -> None:
    """Silence peft's dependencies' start-up output (safe to call many times)."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if "gptqmodel" in sys.modules or importlib.util.find_spec("gptqmodel") is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gptqmodel  # noqa: F401
    logging.getLogger("logbar").setLevel(logging.WARNING)
