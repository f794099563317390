"""Jobs: submit a recipe, follow the queue, watch one job's progress live, cancel it, and export
an app session's finished jobs as code (a recipe, a script and a marimo notebook).

Jobs are subprocesses managed by ``llmlab.jobs.JobQueue``; everything shown here is read back
from each job's folder, so jobs outlive page reloads and the app itself. The live part of the
page is a fragment that reruns every second while a job is active, so the rest of the page
stays responsive. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st
import yaml

from llmlab import recipes, session_code
from llmlab.errors import LlmlabError
from llmlab.jobs import FINAL, JobInfo, JobQueue
from llmlab.store import Store
from widgets import job_queue, job_status, session_id, task_bar

EXAMPLE = "name: micro\nsteps:\n  - build-demo: {name: micro, size: micro}\n"
OWN = "(write your own)"


def submit_form(queue: JobQueue) -> None:
    folder = recipes.recipes_dir()
    files = {p.name: p for p in sorted(folder.glob("*.yaml"))} if folder else {}
    choice = st.selectbox("Recipe", [*files, OWN], key="jobs:recipe")
    text = files[choice].read_text() if choice in files else EXAMPLE
    edited = st.text_area("Recipe (YAML; edit before submitting)", text, height=220, key=f"jobs:yaml:{choice}")
    if st.button("Submit", type="primary", key="jobs:submit"):
        try:
            job = queue.submit(recipes.loads(edited, source="the edited recipe"), session=session_id())
        except LlmlabError as e:
            st.error(str(e))
        else:
            st.session_state["job"] = job.id
            st.success(f"Submitted job {job.id}.")


def job_row(j: JobInfo) -> dict[str, Any]:
    return {"id": j.id, "title": j.title, "status": j.status, "seconds": j.seconds, "error": j.error or ""}


def event_row(event: dict[str, Any]) -> dict[str, str]:
    # Events differ in keys and nest dicts; strings keep the table's columns uniform.
    row = {k: v if v is None or isinstance(v, str) else json.dumps(v, default=str) for k, v in event.items()}
    if isinstance(event.get("time"), (int, float)):
        row["time"] = datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S")
    return row


def progress_view(queue: JobQueue, job: JobInfo) -> None:
    p = queue.progress(job.id)
    if p["total"]:
        st.progress(min(1.0, p["index"] / p["total"]), text=f"step {p['index']}/{p['total']}: {p['step'] or ''}")
    task_bar(p)
    numbers = {k: v for k, v in p["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        cols = st.columns(min(len(numbers), 6))
        for i, (k, v) in enumerate(numbers.items()):
            cols[i % len(cols)].metric(k, f"{v:.4g}" if isinstance(v, float) else v)


def job_details(queue: JobQueue, job: JobInfo) -> None:
    job = job_status(queue, job, "jobs")
    progress_view(queue, job)
    events_tab, log_tab, recipe_tab = st.tabs(["Events", "Log", "Recipe"])
    with events_tab:
        events = queue.events(job.id)
        if events:
            st.dataframe([event_row(e) for e in events[-200:]], hide_index=True)
        else:
            st.caption("No events yet.")
    with log_tab:
        st.code(queue.log(job.id, tail=100) or "(empty)", language=None)
    with recipe_tab:
        st.code(yaml.safe_dump(queue.recipe(job.id), sort_keys=False), language="yaml")


def live_jobs(queue: JobQueue) -> None:
    jobs = queue.list()
    if not jobs:
        st.info("No jobs yet: submit a recipe above, or run one with `llmlab run`.")
        return
    st.dataframe([job_row(j) for j in jobs], hide_index=True)
    ids = [j.id for j in jobs]
    wanted = st.session_state.get("job")
    by_id = {j.id: j for j in jobs}
    job_id = st.selectbox("Job", ids, index=ids.index(wanted) if wanted in by_id else 0,
                          format_func=lambda i: f"{i} · {by_id[i].title} · {by_id[i].status}")
    st.session_state["job"] = job_id
    job_details(queue, by_id[job_id])


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
    with st.expander("Submit a recipe", expanded=True):
        submit_form(queue)
    with st.expander("Export as code", expanded=False):
        export_panel(queue)

    active = any(j.status not in FINAL for j in queue.list())
    # Refresh every second only while something is queued or running.
    st.fragment(run_every=1 if active else None)(live_jobs)(queue)


if __name__ == "__main__":
    main()
