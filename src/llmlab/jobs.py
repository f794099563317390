"""Jobs: long work runs out of process, queued, observable and cancellable.

A job is a recipe run as ``llmlab run RECIPE --events --job DIR`` in its own process group, so
the app's pages stay responsive and a job outlives a page reload (or the app itself). Its folder
under ``$LLMLAB_HOME/.jobs/<id>/`` holds everything anyone needs to follow it:

```
job.json       id, title, status, pid, times, error (written only by the job process itself)
recipe.yaml    the resolved recipe it runs: every default filled in, so it can be replayed
events.jsonl   its progress events, one JSON object per line
log.txt        its stderr
cancel         present once someone asked it to stop
```

At most ``LLMLAB_MAX_JOBS`` (default 1) queued jobs run at once, first come first served; a
``llmlab run`` typed at the terminal records a job too, but starts at once. A job whose process
is gone without writing a final status shows as ``died`` (or ``cancelled`` if it was asked to
stop), so a SIGKILL is visible rather than a job that looks forever "running".

What a job is about is read from its recorded recipe through typed steps (``JobQueue.steps``: each
validated by its station's config, with ``input_names()`` and ``output_names()``), so front ends
never dig into recipe dicts: ``latest_job(queue, "quantize", reads="demo")``, ``jobs_with_step``,
``step_of``, ``job_outputs``; and what it reported through ``task_events`` and ``last_log``. A job's
card reads ``job_report`` (each step's phases and ETA while it runs, then the outputs it wrote with
their headline numbers, and its own metrics), ``job_log`` (log events and stderr) and ``current_job``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel

from llmlab.errors import NotFoundError
from llmlab.events import StepState, duration_text, step_states
from llmlab.store import Store, process_alive, write_json

if TYPE_CHECKING:
    from llmlab.recipes import Step

Status = Literal["queued", "running", "done", "failed", "cancelled", "died"]
FINAL = ("done", "failed", "cancelled", "died")


class Cancelled(BaseException):
    """Raised inside a job when it receives SIGTERM (a cancel), so cleanups run."""


class JobInfo(BaseModel):
    id: str
    title: str
    status: Status = "queued"
    created: float
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    pid_started: float | None = None  # the process's start time, to tell it from a reused pid
    queued: bool = True  # waits for a slot (app/queue) rather than starting at once (terminal)
    error: str | None = None
    dir: str = ""
    session: str | None = None  # the app session that submitted it (llmlab.session_code exports one)

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return round((self.ended or time.time()) - self.started, 1)


def _now() -> float:
    return round(time.time(), 3)


def time_id() -> str:
    """A fresh id that sorts by time and is unique by its random tail: ``20261124-001700-ab12cd``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def max_jobs() -> int:
    return max(1, int(os.environ.get("LLMLAB_MAX_JOBS", "1")))


class JobQueue:
    """The jobs of one store."""

    def __init__(self, store: Store | None = None):
        self.store = store or Store()
        self.root = self.store.root / ".jobs"
        self.root.mkdir(exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}

    # ----- submitting -----
    def submit(self, recipe: Any, title: str | None = None, *, force: bool = False,
               session: str | None = None) -> JobInfo:
        """Queue a recipe (a Recipe, a dict or a YAML path) to run in its own process; ``session``
        records which app session asked for it."""
        from llmlab import recipes

        r = recipe if isinstance(recipe, recipes.Recipe) else recipes.load(recipe)
        job = self.create(r, title, session=session)
        argv = [sys.executable, "-m", "llmlab", "run", str(Path(job.dir) / "recipe.yaml"),
                "--events", "--job", job.dir]
        if force:
            argv.append("--force")
        env = {**os.environ, "LLMLAB_HOME": str(self.store.root), "PYTHONUNBUFFERED": "1"}
        with open(Path(job.dir) / "events.jsonl", "ab") as out, open(Path(job.dir) / "log.txt", "ab") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self._children[proc.pid] = proc
        return job

    def create(self, recipe: Any, title: str | None = None, *, queued: bool = True,
               session: str | None = None) -> JobInfo:
        """Make a job folder holding the resolved recipe (the job process fills in the rest)."""
        job_id = time_id()
        folder = self.root / job_id
        folder.mkdir()
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False))
        job = JobInfo(id=job_id, title=title or recipe.name, created=_now(), queued=queued, dir=str(folder),
                      session=session)
        write_json(folder / "job.json", job.model_dump())
        return job

    # ----- reading -----
    def get(self, job_id: str) -> JobInfo:
        self._reap()
        folder = self.root / job_id
        if not (folder / "job.json").is_file() or "/" in job_id or job_id.startswith("."):
            raise NotFoundError(f"No job '{job_id}'.", "List jobs with `llmlab jobs ls`.")
        job = JobInfo.model_validate_json((folder / "job.json").read_text())
        if job.status not in FINAL:
            waiting_to_spawn = job.pid is None and time.time() - job.created < 30
            if not waiting_to_spawn and not process_alive(job.pid, job.pid_started):
                job.status = "cancelled" if (folder / "cancel").exists() else "died"
                job.error = job.error or "the job's process ended without reporting (killed?)"
        return job

    def list(self) -> list[JobInfo]:
        ids = sorted((p.name for p in self.root.iterdir() if (p / "job.json").is_file()), reverse=True)
        return [self.get(i) for i in ids]

    def events(self, job_id: str, since: int = 0) -> list[dict[str, Any]]:
        """Progress events from line ``since`` on (a partly written last line is left for later)."""
        path = self.root / job_id / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines()[since:]:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def log(self, job_id: str, tail: int = 200) -> str:
        path = self.root / job_id / "log.txt"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    def recipe(self, job_id: str) -> dict[str, Any]:
        return yaml.safe_load((self.root / job_id / "recipe.yaml").read_text())

    def steps(self, job_id: str) -> list[Step]:
        """The steps of a job's recorded recipe, each validated by its station's config (so a step's
        ``kind``, ``config``, ``input_names()`` and ``output_names()`` are typed). A recipe that cannot
        be read gives none; a step that no longer validates (an older job) is left out."""
        from llmlab import recipes
        from llmlab.errors import LlmlabError

        try:
            raw = self.recipe(job_id).get("steps") or []
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return []
        out = []
        for item in raw if isinstance(raw, list) else []:
            if not isinstance(item, dict) or len(item) != 1:
                continue
            kind, config = next(iter(item.items()))
            try:
                out.append(recipes.make_step(str(kind), config or {}, where=f"job {job_id}"))
            except (LlmlabError, ValueError, TypeError):
                continue
        return out

    def progress(self, job_id: str) -> dict[str, Any]:
        """A summary for progress bars: the current step (``step``, ``index`` of ``total``), the
        latest task counter (``task``, ``done`` of ``of``, its ``eta`` in seconds or None) and the
        current step's latest metrics, ``tasks``: one entry per task of the current step
        (``{"train": {"done", "of", "eta", "metrics"}, "accuracy": ...}``), so a page can show its own
        task's bar while the job reports others, and ``phase``: the step's current outer phase
        (``{"task", "done", "of", "eta", "inner"}``: ``quality`` 2/3 while ``perplexity`` runs inside it)."""
        state: dict[str, Any] = {"step": None, "index": 0, "total": 0, "done": 0, "of": 0, "eta": None,
                                 "metrics": {}, "tasks": {}, "phase": None}
        events = self.events(job_id)
        for e in events:
            if e.get("type") == "step":
                state.update(step=e.get("kind"), index=e.get("index", 0), total=e.get("total", 0))
                if e.get("status") == "start":
                    state.update(tasks={}, metrics={})  # a step's numbers are never shown as the next one's
                else:
                    state["index"] = e.get("index", 0) + 1
            elif e.get("type") == "progress":
                state.update(task=e.get("task"), done=e.get("done", 0), of=e.get("total", 0))
                task = state["tasks"].setdefault(e.get("task"), {"metrics": {}})
                task.update(done=e.get("done", 0), of=e.get("total", 0))
            elif e.get("type") == "metric":
                state["metrics"] = {k: v for k, v in e.items() if k not in ("type", "time")}
                task = state["tasks"].setdefault(e.get("task"), {"done": 0, "of": 0})
                task["metrics"] = state["metrics"]
        steps = step_states(events)
        if steps and steps[-1].status == "running" and self.get(job_id).status == "running":
            now, step = time.time(), steps[-1]
            for name, task in state["tasks"].items():
                task["eta"] = step.tasks[name].eta(now) if name in step.tasks else None
            state["eta"] = state["tasks"].get(state.get("task"), {}).get("eta")
            phase, inner = step.current, step.inner_now()
            if phase is not None:
                running_inside = inner.text(now) if inner is not None and not inner.finished else None
                state["phase"] = {"task": phase.task, "done": phase.done, "of": phase.total,
                                  "eta": phase.eta(now), "inner": running_inside}
        return state

    def wait(self, job_id: str, timeout: float = 600) -> JobInfo:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.get(job_id)
            if job.status in FINAL:
                return job
            time.sleep(0.2)
        return self.get(job_id)

    # ----- controlling -----
    def cancel(self, job_id: str, grace: float = 10.0) -> JobInfo:
        """Ask a job to stop (SIGTERM to its process group), then kill it after ``grace`` s."""
        job = self.get(job_id)
        if job.status in FINAL:
            return job
        (Path(job.dir) / "cancel").touch()
        if job.pid and process_alive(job.pid, job.pid_started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end and process_alive(job.pid, job.pid_started):
                self._reap()
                time.sleep(0.1)
            if process_alive(job.pid, job.pid_started):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGKILL)
        return self.wait(job_id, timeout=5)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]


# ----- what a job is about, and what it reported -----
def step_of(queue: JobQueue, job_id: str, kind: str) -> Step | None:
    """The first step of ``kind`` in a job's recipe (None if it runs no such step)."""
    return next((s for s in queue.steps(job_id) if s.kind == kind), None)


def job_outputs(queue: JobQueue, job_id: str) -> list[str]:
    """The artifacts a job's steps write, in order."""
    return [o for s in queue.steps(job_id) for o in s.output_names()]


def jobs_with_step(queue: JobQueue, kind: str, *, limit: int | None = None) -> list[tuple[JobInfo, Step]]:
    """The jobs (newest first; the newest ``limit`` looked at) that run a step of ``kind``, each with that step."""
    out = []
    for job in queue.list()[:limit]:
        step = step_of(queue, job.id, kind)
        if step is not None:
            out.append((job, step))
    return out


def latest_job(queue: JobQueue, kind: str, *, reads: str | None = None) -> JobInfo | None:
    """The newest job with a step of ``kind`` (that reads the artifact ``reads``, when given), whoever
    started it: a page, the Jobs page or ``llmlab run`` at the terminal."""
    for job in queue.list():
        if any(s.kind == kind and (reads is None or reads in s.input_names()) for s in queue.steps(job.id)):
            return job
    return None


def task_events(queue: JobQueue, job_id: str, task: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A job's ``metric`` events of ``task`` (step, loss, val_loss, tok_s...) and its last ``progress`` event of it."""
    metrics, last = [], None
    for e in queue.events(job_id):
        if e.get("task") != task:
            continue
        if e.get("type") == "metric":
            metrics.append(e)
        elif e.get("type") == "progress":
            last = e
    return metrics, last


def last_log(queue: JobQueue, job_id: str) -> str | None:
    """The message of a job's latest ``log`` event."""
    message = next((e.get("message") for e in reversed(queue.events(job_id)) if e.get("type") == "log"), None)
    return None if message is None else str(message)


# ----- a job's card: its steps, what each made and measured, its log -----
# The numbers worth a glance, in this order (a per-split dict shows as ``accuracy.heldout``...).
HEADLINE = ("ppl", "kld_mean", "top1", "accuracy", "train_loss", "val_loss", "val_loss_after", "gen_tok_s",
            "bpw")


def headline(metrics: dict[str, Any], limit: int = 6) -> dict[str, float]:
    """The ``HEADLINE`` numbers among ``metrics`` (else its first numbers), at most ``limit``."""
    def numbers(keys: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in keys:
            value = metrics.get(key)
            for sub, v in value.items() if isinstance(value, dict) else [(None, value)]:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}.{sub}" if sub else key] = v
        return out

    found = numbers(HEADLINE) or numbers(metrics)
    return dict(list(found.items())[:limit])


@dataclass
class OutputInfo:
    """An artifact a job's step wrote, as the store has it now (its measured metrics, and the numbers its
    manifest records, such as a build's training loss)."""

    name: str
    kind: str | None = None  # None: no longer in the store
    metrics: dict[str, float] = field(default_factory=dict)  # its headline metrics (``headline``)


@dataclass
class StepReport:
    """One step of a job: what its events say (``state``), its inputs, outputs and headline metrics."""

    state: StepState
    inputs: list[str] = field(default_factory=list)
    outputs: list[OutputInfo] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # its own (final event), if it writes nothing

    @property
    def label(self) -> str:
        """``step 2/3 · quantize · demo``: its place, kind and (the first three of) its inputs."""
        names = ", ".join(self.inputs[:3]) + (", …" if len(self.inputs) > 3 else "")
        where = f"step {self.state.index + 1}/{self.state.total} · {self.state.kind}"
        return f"{where} · {names}" if names else where


def job_report(queue: JobQueue, job_id: str) -> list[StepReport]:
    """Each step a job started, in order: its progress (phases, ETA), inputs and, once it ended, the
    outputs it wrote with each one's headline numbers (from the store) and, for a step that writes
    nothing (``score``, ``evaluate``, ``serve``), its own metrics from its final ``step`` event."""
    recipe_steps = queue.steps(job_id)
    out = []
    for state in step_states(queue.events(job_id)):
        step = recipe_steps[state.index] if state.index < len(recipe_steps) else None
        report = StepReport(state=state, inputs=step.input_names() if step else [])
        if state.status != "running":
            for name in state.outputs:
                art = queue.store.get(name) if queue.store.exists(name) else None
                # what it measured (metrics.json) over what its maker recorded (build-demo's train_loss...)
                numbers = {**art.manifest.info, **art.metrics} if art else {}
                report.outputs.append(OutputInfo(name, art.kind if art else None, headline(numbers)))
            if not state.outputs:
                report.metrics = headline(state.metrics)
        out.append(report)
    return out


def current_job(jobs: list[JobInfo]) -> JobInfo | None:
    """The job to show first: the running one (the oldest, if several), else the newest."""
    running = [j for j in jobs if j.status == "running"]
    if running:
        return min(running, key=lambda j: j.created)
    return max(jobs, key=lambda j: j.created) if jobs else None


def job_log(queue: JobQueue, job_id: str, tail: int = 200) -> str:
    """A job's log: its steps and ``log`` events, timed, then its stderr (warnings, tracebacks)."""
    lines = []
    for e in queue.events(job_id):
        stamp = e.get("time")
        when = datetime.fromtimestamp(stamp).strftime("%H:%M:%S ") if isinstance(stamp, (int, float)) else ""
        if e.get("type") == "log":
            level = f"{e['level']}: " if e.get("level") not in (None, "info") else ""
            lines.append(f"{when}{level}{e.get('message', '')}")
        elif e.get("type") == "step":
            where = f"step {int(e.get('index') or 0) + 1}/{e.get('total')} {e.get('kind')}"
            if e.get("status") == "start":
                writes = f" → {', '.join(e['outputs'])}" if e.get("outputs") else ""
                lines.append(f"{when}── {where}{writes}")
            else:
                took = duration_text(float(e.get("seconds") or 0))
                lines.append(f"{when}── {where}: {e.get('status')} in {took}")
    stderr = queue.log(job_id, tail=tail)
    if stderr.strip():
        lines += ["── stderr", stderr]
    return "\n".join(lines[-tail:])


class RunningJob:
    """The job side: used by ``llmlab run --job DIR`` to take a slot and report its status."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.info = JobInfo.model_validate_json((self.folder / "job.json").read_text())
        self._slot_fd: int | None = None

    def _save(self) -> None:
        write_json(self.folder / "job.json", self.info.model_dump())

    def start(self, poll: float = 0.3) -> None:
        """Record this process, wait for a free slot (queued jobs only), then mark running."""
        import psutil

        signal.signal(signal.SIGTERM, _raise_cancelled)
        self.info.pid = os.getpid()
        self.info.pid_started = psutil.Process().create_time()
        self._save()
        if self.info.queued:
            queue = JobQueue(Store(self.folder.parents[1]))
            while not self._take_slot(queue):
                time.sleep(poll)
        self.info.status = "running"
        self.info.started = _now()
        self._save()

    def _take_slot(self, queue: JobQueue) -> bool:
        earlier = [j for j in queue.list() if j.status == "queued" and j.queued and j.created < self.info.created]
        if earlier:
            return False
        slots = queue.root / "slots"
        slots.mkdir(exist_ok=True)
        for k in range(max_jobs()):
            fd = os.open(slots / f"{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._slot_fd = fd  # held until this process exits
            return True
        return False

    def finish(self, status: Status, error: str | None = None) -> None:
        self.info.status = status
        self.info.error = error
        self.info.ended = _now()
        self._save()


def _raise_cancelled(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Cancelled("cancelled by request")
