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

Read back, a recipe run's events tell each step's state (``step_states``): its phases (the tasks
it ran, sub-tasks nested in the task they ran inside), each with an ETA from its observed rate, and
once it ended its outputs and its own metrics.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


# ----- reading events back: what a step is doing, and how long it has left -----
@dataclass
class Phase:
    """One task of a step (``convert``, ``quantize``, ``quality``, ``train``...) as its events tell it."""

    task: str
    done: int = 0
    total: int = 0
    started: float | None = None  # when it began (estimated for a counter first seen past 0); None: unknown
    updated: float | None = None  # the time of its latest event
    inner: list[str] = field(default_factory=list)  # tasks that ran inside it (each unit's sub-tasks)

    @property
    def finished(self) -> bool:
        return bool(self.total) and self.done >= self.total

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate observed since the phase began; None when finished or not yet known."""
        if self.finished or self.done <= 0 or not self.total or self.started is None:
            return None
        elapsed = (now if now is not None else time.time()) - self.started
        return elapsed / self.done * (self.total - self.done) if elapsed > 0 else None

    def text(self, now: float | None = None) -> str:
        """``quality 2/3 · ETA 1 min 05 s``."""
        out = f"{self.task} {self.done}/{self.total or '?'}"
        eta = self.eta(now)
        return out + (f" · ETA {duration_text(eta)}" if eta is not None else "")


@dataclass
class StepState:
    """One recipe step as its ``step`` events and the events between them tell it."""

    index: int  # 0-based
    total: int
    kind: str | None
    status: str = "running"  # then the final event's: done, skipped
    started: float | None = None
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # the step's own, from its final event
    phases: list[Phase] = field(default_factory=list)  # the outer ones, in the order they began
    tasks: dict[str, Phase] = field(default_factory=dict)  # every task, inner ones too

    @property
    def current(self) -> Phase | None:
        """The phase running now: the latest outer one not finished (None between phases)."""
        return next((p for p in reversed(self.phases) if not p.finished), None)

    def inner_now(self) -> Phase | None:
        """The latest task running inside the current phase (e.g. ``perplexity`` inside ``quality``)."""
        phase = self.current
        inner = [self.tasks[t] for t in phase.inner] if phase else []
        return max(inner, key=lambda p: p.updated or 0.0) if inner else None


def _is_counter(event: Event) -> bool:
    return event.get("type") == "progress" and event.get("task") is not None


def phases(events: list[Event]) -> tuple[list[Phase], dict[str, Phase]]:
    """The tasks of one step's ``events``: (the outer phases in the order they began, every task by name).

    A task runs inside another (its ``inner``) when its events come between that one's: the quality
    table's ``perplexity``, ``compare`` and ``speed`` run once per model it scores. A task whose counter
    restarts is such a sub-task (its ``started`` is that of its current run) and holds none itself.
    A counter first seen after its first unit (``quality 1/3``) began with the first of its sub-tasks
    (and the log lines just before it), which are known once one of them runs again; until then, and
    for any other counter first seen past 0, it began after the event before its first one."""
    seen: dict[str, list[int]] = {}
    run_first: dict[str, int] = {}  # the first event of each task's current run
    restarts: set[str] = set()
    tasks: dict[str, Phase] = {}
    for i, e in enumerate(events):
        if not _is_counter(e):
            continue
        task = str(e["task"])
        phase = tasks.setdefault(task, Phase(task))
        done = int(e.get("done") or 0)
        if task in seen and done < phase.done:
            restarts.add(task)
            run_first[task] = i
        seen.setdefault(task, []).append(i)
        run_first.setdefault(task, i)
        phase.done, phase.total, phase.updated = done, int(e.get("total") or 0), e.get("time")

    def interleaved(task: str) -> set[str]:
        first, last = seen[task][0], seen[task][-1]
        end = last if tasks[task].finished else len(events)
        return {str(events[k]["task"]) for k in range(first + 1, end) if _is_counter(events[k])} - {task}

    inside = {t: interleaved(t) for t in tasks}
    start_at: dict[str, int | None] = {}
    for task, phase in tasks.items():
        i = run_first[task]
        begun = [seen[t][0] for t in inside[task] if seen[t][0] < i] if task not in restarts else []
        if not events[i].get("done"):
            start = i
        elif begun:  # its first unit began with the first of its sub-tasks (and the log lines just before)
            start = min(begun)
            while start and events[start - 1].get("type") in ("log", "metric"):
                start -= 1
        else:  # it began after the event before its first one
            start = i - 1 if i > 0 else None
        start_at[task] = start
        phase.started = events[start].get("time") if start is not None else None

    order = sorted(tasks, key=lambda t: (start_at[t] if start_at[t] is not None else seen[t][0], seen[t][0]))
    outer: list[Phase] = []
    for task in order:
        hosts = [h for h in order if h != task and h not in restarts and task in inside[h]
                 and start_at[h] is not None and start_at[h] <= seen[task][0]]
        if hosts:
            tasks[hosts[-1]].inner.append(task)
        else:
            outer.append(tasks[task])
    return outer, tasks


def step_states(events: list[Event]) -> list[StepState]:
    """Each step a recipe run's ``events`` reported, with its phases (``phases``) and, once it ended, its
    status, seconds, outputs and own metrics (from its final ``step`` event, so never another step's)."""
    steps: list[StepState] = []
    bodies: list[list[Event]] = []
    for e in events:
        if e.get("type") == "step" and e.get("status") == "start":
            steps.append(StepState(index=int(e.get("index") or 0), total=int(e.get("total") or 0),
                                   kind=e.get("kind"), started=e.get("time"),
                                   outputs=list(e.get("outputs") or [])))
            bodies.append([])
        elif e.get("type") == "step" and steps:
            step = steps[-1]
            step.status, step.seconds = str(e.get("status")), e.get("seconds")
            step.outputs = list(e.get("outputs") or [])
            step.metrics = dict(e.get("metrics") or {})
        elif steps:
            bodies[-1].append(e)
    for step, body in zip(steps, bodies):
        step.phases, step.tasks = phases(body)
    return steps


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
