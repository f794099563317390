"""Export as code: the jobs of one app session become a recipe, a Python script and a marimo notebook.

Every job the app submits records the app session that asked for it (``session`` in the job's
``job.json``: an id the app draws once per browser session). ``gather`` reads that session's jobs
in submission order, keeps those that finished ``done`` (by default), merges their resolved
recipes into one (a step repeated with the same config is kept once) and, when a step reads an
artifact that no earlier step makes, prepends the step recorded in that artifact's manifest, so
the code rebuilds it in an empty store. ``write`` then writes ``recipe.yaml`` (for ``llmlab run``),
``<name>.py`` (``recipes.export_script``) and ``<name>_notebook.py`` (a marimo notebook, one cell
per step)::

    from llmlab import session_code
    from llmlab.jobs import JobQueue

    code = session_code.gather(JobQueue(), session="20261124-001700-ab12cd")
    print(code.summary())
    files = session_code.write(code, "out/")   # {"recipe": ..., "script": ..., "notebook": ...}

A session id, not a time window, decides what belongs: jobs that other tabs, other users of the
same store or a terminal (``llmlab run``, which records no session) start at the same time stay
out, and a session's jobs stay together however long it lasts.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import textwrap
import zipfile
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from llmlab import recipes
from llmlab.errors import ConfigError, LlmlabError, NotFoundError
from llmlab.jobs import JobInfo, JobQueue, Status, time_id
from llmlab.store import Store, write_text

SESSIONS = ".sessions"  # $LLMLAB_HOME/.sessions/<id>/ holds what the app exported
# What the notebook's own cells define; a step's config class or function must not share a name.
NOTEBOOK_NAMES = frozenset({"AUTORUN", "Store", "mo", "notebook_settings", "progress", "run_button", "store"})
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def new_session_id() -> str:
    """A fresh app session id: sortable by time, unique by its random tail (like a job's id)."""
    return time_id()


def check_session_id(session: str) -> str:
    if not isinstance(session, str) or not _SESSION_ID.match(session):
        raise ConfigError(f"'{session}' is not a valid app session id.",
                          "Session ids look like 20261124-001700-ab12cd; list them with `llmlab jobs ls`.")
    return session


class SessionCode(BaseModel):
    """What ``gather`` found: the merged recipe, where each step came from, and what it leaves out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    session: str | None = None
    jobs: list[JobInfo]  # included, in submission order
    left_out: list[JobInfo] = []  # of the session, but not in an included status
    recipe: recipes.Recipe
    origins: list[str]  # one per recipe step: which job (or which artifact's lineage) it comes from
    needs: list[str] = []  # artifacts the code reads but cannot rebuild (imported, or missing)

    def summary(self) -> str:
        """A few lines for a terminal or a page: what is in the code and what is not."""
        lines = [f"{len(self.recipe.steps)} step(s) from {len(self.jobs)} job(s)"
                 + (f" of app session {self.session}" if self.session else "") + ":"]
        lines += [f"  {s.kind}: {origin}" for s, origin in zip(self.recipe.steps, self.origins)]
        if self.left_out:
            lines.append("Left out (only jobs that finished `done` are exported by default): "
                         + ", ".join(f"{j.id} ({j.status})" for j in self.left_out) + ".")
        if self.needs:
            lines.append("The code reads artifacts it cannot rebuild; copy them into the store first: "
                         + ", ".join(self.needs) + ".")
        return "\n".join(lines)


# ----- gathering -----
def sessions(queue: JobQueue) -> list[str]:
    """The app sessions that submitted jobs to this store, newest first."""
    latest: dict[str, float] = {}
    for job in queue.list():
        if job.session:
            latest[job.session] = max(latest.get(job.session, 0.0), job.created)
    return sorted(latest, key=lambda s: latest[s], reverse=True)


def session_jobs(queue: JobQueue, session: str) -> list[JobInfo]:
    """Every job of one app session, in submission order."""
    check_session_id(session)
    return sorted((j for j in queue.list() if j.session == session), key=lambda j: (j.created, j.id))


def gather(queue: JobQueue, *, session: str | None = None, job_ids: list[str] | None = None,
           statuses: tuple[Status, ...] = ("done",), lineage: bool = True, name: str | None = None) -> SessionCode:
    """The jobs of ``session`` (or the jobs ``job_ids``, in submission order) whose status is in
    ``statuses``, merged into one recipe; with ``lineage``, steps that rebuild the artifacts they read
    (from those artifacts' manifests) come first."""
    if (session is None) == (job_ids is None):
        raise ConfigError("Export either an app session or a list of jobs, not both or neither.",
                          "Pass session=ID or job_ids=[...] (`llmlab jobs export --session ID` or "
                          "`llmlab jobs export JOB_ID...`).")
    if session is not None:
        chosen = session_jobs(queue, session)
        if not chosen:
            known = ", ".join(sessions(queue)[:5]) or "none yet"
            raise NotFoundError(f"App session '{session}' started no jobs in the store at {queue.store.root}.",
                                f"Sessions with jobs: {known}. Jobs typed at a terminal have no session: export "
                                "them by id (`llmlab jobs export JOB_ID...`).")
        where = f"App session {session}"
    else:
        chosen = sorted((queue.get(i) for i in dict.fromkeys(job_ids or [])), key=lambda j: (j.created, j.id))
        where = "The jobs given"
    included = [j for j in chosen if j.status in statuses]
    left_out = [j for j in chosen if j.status not in statuses]
    if not included:
        found = ", ".join(f"{j.id} ({j.status})" for j in left_out) or "none"
        raise NotFoundError(f"{where} has no job that finished {' or '.join(statuses)} (jobs: {found}).",
                            "Run a job to the end first (only finished work is exported), or include other "
                            "statuses (`--status failed`).")
    parts = [(f"job {j.id} ({j.title})", _job_recipe(queue, j)) for j in included]
    steps, origins = merge(parts)
    needs: list[str] = []
    if lineage:
        before, before_origins, needs = lineage_steps(steps, queue.store)
        steps, origins = merge([(o, [s]) for o, s in zip(before_origins + origins, before + steps)])
    name = name or (f"session_{session}" if session else f"jobs_{included[0].id}")
    description = (f"Jobs of llmlab app session {session}" if session else "llmlab jobs") + ": " \
        + ", ".join(j.id for j in included) + "."
    recipe = recipes.Recipe(name=name, description=description, steps=steps)
    return SessionCode(name=name, session=session, jobs=included, left_out=left_out, recipe=recipe,
                       origins=origins, needs=needs)


def _job_recipe(queue: JobQueue, job: JobInfo) -> list[recipes.Step]:
    try:
        return recipes.load(queue.root / job.id / "recipe.yaml").steps  # job.dir is stale once a store moves
    except LlmlabError as e:
        raise ConfigError(f"Job {job.id} recorded a recipe that does not load any more: {e.message}",
                          "Leave that job out (export the others by id with `llmlab jobs export JOB_ID...`).") from None


def merge(parts: list[tuple[str, list[recipes.Step]]]) -> tuple[list[recipes.Step], list[str]]:
    """The steps of ``parts`` (origin, steps) in order, each distinct (kind, config) kept once at its
    first place; returns the steps and each one's origin."""
    seen: set[str] = set()
    steps: list[recipes.Step] = []
    origins: list[str] = []
    for origin, part in parts:
        for step in part:
            key = json.dumps([step.kind, step.config_dict()], sort_keys=True)
            if key not in seen:
                seen.add(key)
                steps.append(step)
                origins.append(origin)
    return steps, origins


def lineage_steps(steps: list[recipes.Step], store: Store) -> tuple[list[recipes.Step], list[str], list[str]]:
    """Steps that make the artifacts ``steps`` read before any of them makes it, from the store's
    manifests (parents first); returns them, their origins, and the artifacts no manifest step makes."""
    made: set[str] = set()
    visited: set[str] = set()
    out: list[recipes.Step] = []
    origins: list[str] = []
    needs: list[str] = []

    def rebuild(name: str) -> None:
        if name in made or name in visited:
            return
        visited.add(name)
        record = store.get(name).manifest.step if store.exists(name) else None
        step = None
        if record is not None and record.kind in recipes.STEPS:
            try:
                step = recipes.make_step(record.kind, record.config, where=f"the manifest of '{name}'")
            except ConfigError:
                step = None  # made by an older llmlab whose config no longer validates
        if step is None:
            needs.append(name)
            return
        for parent in step.input_names():
            rebuild(parent)
        out.append(step)
        origins.append(f"lineage of '{name}' (made before this session)")
        made.update(step.output_names())

    for step in steps:
        for name in step.input_names():
            rebuild(name)
        made.update(step.output_names())
    return out, origins, needs


# ----- writing -----
def file_stem(name: str) -> str:
    """A file name for the script: an identifier that does not shadow an importable module
    (``python quantize.py`` would otherwise import itself instead of a library of that name)."""
    stem = re.sub(r"\W+", "_", name).strip("_").lower() or "recipe"
    if stem[0].isdigit():
        stem = f"recipe_{stem}"
    if importlib.util.find_spec(stem) is not None:
        stem = f"{stem}_recipe"
    return stem


def notebook(code: SessionCode) -> str:
    """A marimo notebook with one markdown cell and one code cell per step, behind one run button
    (``LLMLAB_NOTEBOOK_AUTORUN=1`` presses it); each step cell waits for the previous one."""
    recipe = code.recipe
    imports, calls = recipes.step_calls(recipe)
    names = sorted({n for ns in imports.values() for n in ns})
    intro = [f"# {recipe.name}", "", recipe.description or "Steps exported from llmlab.", "",
             "Each step below calls the llmlab API, as `llmlab run recipe.yaml` and the script beside this "
             "notebook do. It writes to the store at `$LLMLAB_HOME` (default `./models`)."]
    if code.needs:
        intro += ["", "It reads artifacts it cannot rebuild; copy them into the store first: "
                  + ", ".join(f"`{n}`" for n in code.needs) + "."]
    cells = [
        _cell(["mo"], _md(intro), [], hide=True),
        _cell([], ["import marimo as mo", "", *recipes.import_lines(imports),
                   "from llmlab.settings import notebook_settings", "from llmlab.store import Store"],
              sorted(["Store", "mo", "notebook_settings", *names])),
        _cell(["Store", "mo", "notebook_settings"], [
            "AUTORUN = notebook_settings().autorun  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the button",
            "store = Store()",
            "progress = None  # or llmlab.events.json_lines() to print progress events",
            f'run_button = mo.ui.run_button(label="Run the {len(recipe.steps)} steps", kind="success")',
            'mo.vstack([mo.md(f"The store is `{store.root}`."), run_button])'],
            ["AUTORUN", "progress", "run_button", "store"]),
    ]
    previous: str | None = None
    for i, (step, call, origin) in enumerate(zip(recipe.steps, calls, code.origins), 1):
        fn = recipes.STEPS[step.kind].function.split(":")[1]
        ccls = recipes.STEPS[step.kind].config.split(":")[1]
        cells.append(_cell(["mo"], _md([f"## Step {i}: {step.kind}", "", step.spec.summary, "",
                                        f"From {origin}."]), [], hide=True))
        body = ['mo.stop(not (run_button.value or AUTORUN), mo.md("*Press the run button above.*"))']
        if previous:
            body.append(f"{previous}  # runs after the previous step")
        body += [f'with mo.status.spinner(title="Step {i}: {step.kind}"):',
                 textwrap.indent(f"step_{i} = {call}", "    "), f"step_{i}"]
        args = sorted({"AUTORUN", "mo", "progress", "run_button", "store", fn, ccls, *([previous] if previous else [])})
        cells.append(_cell(args, body, [f"step_{i}"]))
        previous = f"step_{i}"
    head = [f'"""{recipe.name}: steps exported from llmlab as a marimo notebook.', "",
            "Run it with `marimo edit` (or `marimo run`, or plain `python`). Environment: LLMLAB_HOME (the",
            'store) and LLMLAB_NOTEBOOK_AUTORUN=1 (press the run button, for CI)."""', "",
            "import marimo", "", f'__generated_with = "{_marimo_version()}"', 'app = marimo.App(width="medium")']
    tail = 'if __name__ == "__main__":\n    app.run()\n'
    return "\n".join(head) + "\n\n\n" + "\n\n".join(cells) + "\n\n" + tail


def _md(lines: list[str]) -> list[str]:
    text = "\n".join(lines).replace('"""', "'''")
    return ['mo.md(r"""', text, '""")']


def _cell(args: list[str], body: list[str], returns: list[str], *, hide: bool = False) -> str:
    decorator = "@app.cell(hide_code=True)" if hide else "@app.cell"
    ret = "return" if not returns else f"return ({returns[0]},)" if len(returns) == 1 else \
        "return (\n" + "".join(f"        {r},\n" for r in returns) + "    )"
    code = textwrap.indent("\n".join(body), "    ")
    return f"{decorator}\ndef _({', '.join(args)}):\n{code}\n    {ret}\n"


def _marimo_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("marimo")
    except metadata.PackageNotFoundError:
        return "0.25.2"


def write(code: SessionCode, out_dir: str | Path) -> dict[str, Path]:
    """Write ``recipe.yaml``, ``<name>.py`` and ``<name>_notebook.py`` into ``out_dir``; every text
    is made before the first file is written, and each file is renamed into place when complete."""
    stem = file_stem(code.name)
    header = [f"# {line}" if line else "#" for line in code.summary().splitlines()]
    texts = {
        "recipe": ("recipe.yaml", "\n".join(header) + "\n"
                   + yaml.safe_dump(code.recipe.resolved(), sort_keys=False)),
        "script": (f"{stem}.py", recipes.export_script(code.recipe)),
        "notebook": (f"{stem}_notebook.py", notebook(code)),
    }
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"'{out}' is a file, not a folder.", "Choose a folder to write the three files into.")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, (filename, text) in texts.items():
        write_text(out / filename, text)
        written[key] = out / filename
    return written


def session_folder(store: Store, session: str) -> Path:
    return store.root / SESSIONS / check_session_id(session)


def export_session(queue: JobQueue, session: str, **options: object) -> tuple[SessionCode, dict[str, Path]]:
    """``gather`` one app session and ``write`` it to ``$LLMLAB_HOME/.sessions/<session>/``."""
    code = gather(queue, session=session, **options)  # type: ignore[arg-type]
    return code, write(code, session_folder(queue.store, session))


def zip_bytes(files: dict[str, Path]) -> bytes:
    """The written files as one zip archive (for a single download)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files.values():
            z.write(path, path.name)
    return buffer.getvalue()
