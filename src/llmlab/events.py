"""Progress events: how long work reports what it is doing.

Every long-running function takes ``progress: Reporter | None``. It calls it with small dicts:

- ``{"type": "progress", "task": "train", "done": 10, "total": 200}``
- ``{"type": "metric", "task": "train", "step": 10, "loss": 3.2, "tok_s": 3500.0}``
- ``{"type": "log", "message": "converted to GGUF"}``

``llmlab run --events`` writes them to stdout as JSON lines (the app's Jobs page reads those);
the CLI draws them as progress bars; notebooks feed them to ``mo.status.progress_bar``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

Event = dict[str, Any]
Reporter = Callable[[Event], None]


def emit(progress: Reporter | None, type_: str, **fields: Any) -> None:
    """Send one event if anyone listens."""
    if progress is not None:
        progress({"type": type_, **fields})


def json_lines(stream: TextIO = sys.stdout) -> Reporter:
    """A reporter that writes each event as one JSON line (with a timestamp)."""

    def report(event: Event) -> None:
        stream.write(json.dumps({"time": round(time.time(), 3), **event}, default=str) + "\n")
        stream.flush()

    return report


def tee(*reporters: Reporter | None) -> Reporter:
    """One reporter that forwards each event to several."""
    active = [r for r in reporters if r is not None]

    def report(event: Event) -> None:
        for r in active:
            r(event)

    return report
