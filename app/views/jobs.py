"""Jobs: submit a recipe, follow the queue, watch one job's progress live, cancel it.

Jobs are subprocesses managed by ``llmlab.jobs.JobQueue``; everything shown here is read back
from each job's folder, so jobs outlive page reloads and the app itself. The live part of the
page is a fragment that reruns every second while a job is active, so the rest of the page
stays responsive.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import streamlit as st
import yaml

from llmlab import recipes
from llmlab.errors import LlmlabError
from llmlab.jobs import FINAL, JobInfo, JobQueue
from llmlab.store import Store
from widgets import job_queue, job_status, task_bar

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
            job = queue.submit(recipes.loads(edited, source="the edited recipe"))
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


store = Store()
queue = job_queue(str(store.root))
st.title("Jobs")
with st.expander("Submit a recipe", expanded=True):
    submit_form(queue)

active = any(j.status not in FINAL for j in queue.list())
# Refresh every second only while something is queued or running.
st.fragment(run_every=1 if active else None)(live_jobs)(queue)
