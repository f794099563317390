"""Jobs: the current job's card first (running, else newest; another one can be picked), then
submitting a recipe and exporting an app session's finished jobs as code (a recipe, a script and a
marimo notebook). A card follows each step's phases live with an ETA (``llmlab.events.step_states``)
and, once a step ends, lists its outputs (each a link to the Models page opened on it) with their
headline metrics and the step's own numbers (``llmlab.jobs.job_report``); its Log tab shows the
job's log events and stderr (``llmlab.jobs.job_log``).

Jobs are subprocesses managed by ``llmlab.jobs.JobQueue``; everything shown here is read back
from each job's folder, so jobs outlive page reloads and the app itself. The live part of the
page is a fragment that reruns every second while a job is active, so the rest of the page
stays responsive. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st
import yaml
from widgets import job_queue, job_status, phase_bar, session_id

from llmlab import recipes, session_code
from llmlab.errors import LlmlabError
from llmlab.evaluate.choices import column_name
from llmlab.events import duration_text
from llmlab.jobs import FINAL, JobInfo, JobQueue, OutputInfo, StepReport, current_job, job_log, job_report
from llmlab.store import Store

MODELS = "views/models.py"

EXAMPLE = "name: micro\nsteps:\n  - build-demo: {name: micro, size: micro}\n"
OWN = "(write your own)"


def submit_form(queue: JobQueue) -> None:
    """Pick a shipped recipe (or write one), look at its steps, edit its YAML if need be, submit it."""
    folder = recipes.recipes_dir()
    files = {p.name: p for p in sorted(folder.glob("*.yaml"))} if folder else {}
    choice = st.selectbox("Recipe", [*files, OWN], key="jobs:recipe")
    text = files[choice].read_text() if choice in files else EXAMPLE
    with st.expander("Edit the recipe (YAML)", expanded=False):
        edited = st.text_area("Recipe (YAML; edit before submitting)", text, height=260,
                              key=f"jobs:yaml:{choice}")
    try:
        recipe = recipes.loads(edited, source="the edited recipe")
    except LlmlabError as e:
        recipe = None
        st.error(str(e))
    else:
        steps = " → ".join(s.kind for s in recipe.steps)
        st.caption(f"{recipe.description}  \nSteps: {steps}" if recipe.description else f"Steps: {steps}")
    if st.button("Submit", type="primary", key="jobs:submit") and recipe is not None:  # else: its error is above
        try:
            job = queue.submit(recipe, session=session_id())
        except LlmlabError as e:
            st.error(str(e))
        else:
            st.session_state["job"] = st.session_state["jobs:picked"] = job.id
            st.success(f"Submitted job {job.id}: it is shown above.")


def job_row(j: JobInfo) -> dict[str, Any]:
    return {"id": j.id, "title": j.title, "status": j.status, "seconds": j.seconds, "error": j.error or ""}


def event_row(event: dict[str, Any]) -> dict[str, str]:
    # Events differ in keys and nest dicts; strings keep the table's columns uniform.
    row = {k: v if v is None or isinstance(v, str) else json.dumps(v, default=str) for k, v in event.items()}
    if isinstance(event.get("time"), (int, float)):
        row["time"] = datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S")
    return row


def numbers_text(metrics: dict[str, Any]) -> list[str]:
    """Numbers named as every page names them ("perplexity", "accuracy (heldout)")."""
    return [f"{column_name(k)} {v:.4g}" if isinstance(v, float) else f"{column_name(k)} {v}"
            for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def output_line(out: OutputInfo) -> None:
    """An output: a link to the Models page opened on it, its kind and headline metrics."""
    name_col, about_col = st.columns([2, 5], vertical_alignment="center")
    if out.kind is None:
        name_col.markdown(f"`{out.name}`")
        about_col.caption("no longer in the store")
        return
    name_col.page_link(MODELS, label=out.name, icon=":material/inventory_2:",
                       query_params={"artifact": out.name, "session": session_id()})
    about_col.caption(" · ".join([out.kind, *numbers_text(out.metrics)]))


def running_step(queue: JobQueue, job: JobInfo, report: StepReport) -> None:
    """The running step's phases (done ones ticked), its current phase's bar (ETA) and latest metrics."""
    if job.status in FINAL:  # it stopped inside this step
        return
    state = report.state
    marks = [f"{'✓' if p.finished else '▸'} {p.task} {p.done}/{p.total or '?'}" for p in state.phases]
    if marks:
        st.caption("Phases: " + " · ".join(marks))
    progress = queue.progress(job.id)
    phase_bar(progress)
    live = numbers_text({k: v for k, v in progress["metrics"].items() if k != "task"})
    if live:
        st.caption(f"{progress['metrics'].get('task') or 'latest'}: " + " · ".join(live))


def step_view(queue: JobQueue, job: JobInfo, report: StepReport) -> None:
    state = report.state
    if state.status == "running":
        since = f" for {duration_text(time.time() - state.started)}" if state.started else ""
        status = f"running{since}" if job.status not in FINAL else f"stopped here ({job.status})"
    elif state.status == "skipped":
        status = "skipped: its outputs were already made with these settings"
    else:
        status = f"{state.status} in {duration_text(state.seconds or 0)}"
    st.markdown(f"**{report.label}** · {status}")
    if state.status == "running":
        running_step(queue, job, report)
    for out in report.outputs:
        output_line(out)
    if report.metrics:
        st.caption(" · ".join(numbers_text(report.metrics)))


def job_card(queue: JobQueue, job: JobInfo) -> None:
    """One job: status (Cancel), each step with its phases and ETA while it runs, then what it wrote
    (each output a link to the Models page) and measured; its events, log and recipe in tabs."""
    job = job_status(queue, job, "jobs")
    reports = job_report(queue, job.id)
    for report in reports:
        step_view(queue, job, report)
    planned = queue.steps(job.id)
    if len(planned) > len(reports):
        waiting = [f"{i + 1} {s.kind}" for i, s in enumerate(planned) if i >= len(reports)]
        st.caption("Not started: " + ", ".join(waiting))
    log_tab, events_tab, recipe_tab = st.tabs(["Log", "Events", "Recipe"])
    with log_tab:
        log = job_log(queue, job.id) or "(nothing logged yet)"
        st.code(log, language=None, height=320 if log.count("\n") > 15 else "content")
    with events_tab:
        events = queue.events(job.id)
        if events:
            st.caption(f"{len(events)} events, the latest first.")
            st.dataframe([event_row(e) for e in reversed(events[-200:])], hide_index=True, height=300)
        else:
            st.caption("No events yet.")
    with recipe_tab:
        st.code(yaml.safe_dump(queue.recipe(job.id), sort_keys=False), language="yaml")


def shown_job(jobs: list[JobInfo]) -> JobInfo:
    """The job the card shows: one picked on this page, else one this session just started while it is
    active, else the current job (running, else newest)."""
    by_id = {j.id: j for j in jobs}
    picked, started = st.session_state.get("jobs:picked"), st.session_state.get("job")
    if picked in by_id:
        return by_id[picked]
    if started in by_id and by_id[started].status not in FINAL:
        return by_id[started]
    return current_job(jobs) or jobs[0]


def live_jobs(queue: JobQueue) -> None:
    jobs = queue.list()
    if not jobs:
        st.info("No jobs yet: submit a recipe below, start one on a station's page, or run one with "
                "`llmlab run`.")
        return
    by_id = {j.id: j for j in jobs}
    ids = list(by_id)
    shown = shown_job(jobs)
    chosen = st.selectbox("Job", ids, index=ids.index(shown.id),
                          format_func=lambda i: f"{by_id[i].title} · {by_id[i].status} · {i}")
    if chosen != shown.id:
        st.session_state["jobs:picked"] = chosen
    with st.container(border=True):
        job_card(queue, by_id[chosen])
    with st.expander(f"All jobs ({len(jobs)})", expanded=False):
        st.dataframe([job_row(j) for j in jobs], hide_index=True)


def export_panel(queue: JobQueue) -> None:
    """Export as code: one app session's finished jobs as recipe.yaml, a script and a notebook."""
    current = session_id()
    options = [current, *(s for s in session_code.sessions(queue) if s != current)]
    chosen = st.selectbox("App session", options, key="jobs:export:session",
                          format_func=lambda s: f"{s} (this one)" if s == current else s)
    jobs = session_code.session_jobs(queue, chosen)
    if not jobs:
        st.info("This app session has started no jobs yet: start one on a station's page or above, let it "
                "finish, then export it here.")
        return
    st.dataframe([{**job_row(j), "included": j.status == "done"} for j in jobs], hide_index=True)
    if not any(j.status == "done" for j in jobs):  # the button re-reads the jobs: one may have finished since
        st.info("No job of this session has finished yet: only jobs that finished `done` are exported.")
    st.caption("Jobs that did not finish `done` are left out; a step repeated with the same settings is kept "
               "once; artifacts the jobs read are rebuilt first from their manifests' recorded steps.")
    if st.button("Export as code", key="jobs:export"):
        try:
            code, files = session_code.export_session(queue, chosen)
        except LlmlabError as e:
            st.error(str(e))
            return
        st.session_state["jobs:exported"] = {"session": chosen, "summary": code.summary(),
                                             "files": {k: str(v) for k, v in files.items()}}
    exported = st.session_state.get("jobs:exported")
    if not exported or exported["session"] != chosen:
        return
    files = {k: Path(v) for k, v in exported["files"].items()}
    if not all(p.is_file() for p in files.values()):
        return
    st.success(f"Wrote the code to {files['recipe'].parent}")
    st.code(exported["summary"], language=None)
    cols = st.columns(4)
    mime = {"recipe": "application/yaml", "script": "text/x-python", "notebook": "text/x-python"}
    for col, (key, path) in zip(cols, files.items()):
        col.download_button(path.name, path.read_bytes(), file_name=path.name, mime=mime[key],
                            key=f"jobs:download:{key}")
    cols[3].download_button("All three (.zip)", session_code.zip_bytes(files), file_name=f"{chosen}.zip",
                            mime="application/zip", key="jobs:download:zip")


def main() -> None:
    store = Store()
    queue = job_queue(str(store.root))
    st.title("Jobs")
    top = st.container()  # the job card comes first; it is drawn last, so a job just submitted below is in it
    st.subheader("Submit a recipe")
    submit_form(queue)
    with st.expander("Export as code", expanded=False):
        export_panel(queue)
    active = any(j.status not in FINAL for j in queue.list())
    with top:  # refreshed every second only while something is queued or running
        st.fragment(run_every=1 if active else None)(live_jobs)(queue)


if __name__ == "__main__":
    main()
