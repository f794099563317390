"""Progress events: how long work reports what it is doing.

Every long-running function takes ``progress: Reporter | None``. It calls it with small dicts:

- ``{"type": "progress", "task": "train", "done": 10, "total": 200}``
- ``{"type": "metric", "task": "train", "step": 10, "loss": 3.2, "tok_s": 3500.0}``
- ``{"type": "log", "message": "converted to GGUF"}``

``llmlab run --events`` writes them to stdout as JSON lines (the app's Jobs page reads those);
the CLI draws them as progress bars; notebooks feed them to ``mo.status.progress_bar`` through
``bar_updates``::

    with mo.status.progress_bar(total=500, title="Training") as bar:
        build_demo(config, progress=bar_updates(bar, task="train"))
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

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


class Bar(Protocol):
    """A progress bar advanced by increments (marimo's ``mo.status.progress_bar`` is one)."""

    def update(self, increment: int = 1, title: str | None = None, subtitle: str | None = None) -> None: ...


def bar_updates(bar: Bar, task: str | None = None, *, scale: int | None = None) -> Reporter:
    """A reporter that turns ``progress`` events (of ``task`` only, when given) into increments of
    ``bar``: events say how far a task is (done of total), a bar wants how much it moved. With
    ``scale`` the bar counts in ``scale`` units for the whole task (a bar of ``total=100`` with
    ``scale=100`` shows percent), for a task whose number of steps is known only once it runs."""
    seen: dict[Any, int] = {}

    def report(event: Event) -> None:
        if event.get("type") != "progress" or (task is not None and event.get("task") != task):
            return
        key, done, total = event.get("task"), int(event.get("done", 0)), event.get("total")
        position = int(scale * done / total) if scale and total else done
        bar.update(increment=max(position - seen.get(key, 0), 0), subtitle=f"{key or 'step'} {done}/{total or '?'}")
        seen[key] = position

    return report
