"""Widgets that several pages share: the job queue, a cached model loader, a chat panel, a job's
status line with its Cancel button, progress bars and a form's Start button.

Streamlit puts this folder on ``sys.path`` when it runs ``streamlit_app.py``, so pages import this
module as ``widgets`` (pytest gets the same through ``pythonpath`` in ``pyproject.toml``). Nothing
here imports torch: the runtime is imported when a chat first loads a model.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from pydantic import BaseModel

from llmlab import recipes
from llmlab.errors import LlmlabError
from llmlab.events import duration_text
from llmlab.jobs import FINAL, JobInfo, JobQueue, last_log
from llmlab.store import Artifact, Store

SESSION_KEY = "llmlab:session"


def session_id() -> str:
    """This browser session's id, drawn once; every job it submits records it, so the Jobs page can
    export the session's work as code (``llmlab.session_code``). It is kept in the page's URL too
    (``?session=<id>``), so a reload of the same URL goes on with the same session."""
    from llmlab.errors import ConfigError
    from llmlab.session_code import check_session_id, new_session_id

    current = st.session_state.get(SESSION_KEY)
    if current is None:
        try:
            current = check_session_id(st.query_params.get("session", ""))
        except ConfigError:  # none in the URL, or not an id this app draws: start a fresh session
            current = new_session_id()
        st.session_state[SESSION_KEY] = current
    if st.query_params.get("session") != current:  # moving between pages drops the URL's parameters
        st.query_params["session"] = current
    return current


def follow_link(options: list[str], param: str, key: str) -> None:
    """Select the option that the page's URL names in ``param`` (``?artifact=demo-q8_0``, from a link such
    as the Jobs card's outputs) in the selectbox with ``key``: once per link, so the user can pick another."""
    wanted = st.query_params.get(param)
    if wanted in options and st.session_state.get(f"{key}:linked") != wanted:
        st.session_state[key] = st.session_state[f"{key}:linked"] = wanted


@st.cache_resource
def job_queue(store_root: str) -> JobQueue:
    """One queue per store for the app's lifetime (it keeps the handles of the jobs it started)."""
    return JobQueue(Store(store_root))


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_model(store_root: str, source: str, content_hash: str) -> Any:
    """The runtime model for an artifact name or folder; ``content_hash`` is part of the cache key, so
    a rebuilt artifact gets a fresh model and reruns of a page reuse the loaded one."""
    from llmlab.runtime import load

    return load(source, store=Store(store_root))


def sampling_controls(key: str) -> Any:
    """Widgets for every ``SamplingParams`` field (library defaults and help); returns the params."""
    from llmlab.runtime import SamplingParams

    d = SamplingParams()
    helps = {n: f.description for n, f in SamplingParams.model_fields.items()}
    with st.expander("Sampling", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        temperature = c1.slider("Temperature", 0.0, 2.0, d.temperature, 0.05, key=f"{key}:t",
                                help=helps["temperature"])
        top_p = c2.slider("Top-p", 0.05, 1.0, d.top_p, 0.05, key=f"{key}:p", help=helps["top_p"])
        top_k = c3.number_input("Top-k", 0, 100_000, d.top_k, key=f"{key}:k", help=helps["top_k"])
        repetition_penalty = c4.slider("Repetition penalty", 1.0, 2.0, d.repetition_penalty, 0.05,
                                       key=f"{key}:r", help=helps["repetition_penalty"])
        c5, c6, c7 = st.columns([1, 1, 2])
        max_tokens = c5.number_input("Max new tokens", 1, 8192, d.max_tokens, key=f"{key}:n",
                                     help=helps["max_tokens"])
        seed = c6.number_input("Seed", 0, 2**31 - 1, d.seed, key=f"{key}:s", help=helps["seed"],
                               placeholder="random")
        stop = c7.text_input("Stop strings (comma separated)", ", ".join(d.stop), key=f"{key}:stop",
                             help=helps["stop"])
    return SamplingParams(
        temperature=temperature, top_p=top_p, top_k=int(top_k), repetition_penalty=repetition_penalty,
        max_tokens=int(max_tokens), seed=None if seed is None else int(seed),
        stop=[s for s in (x.strip() for x in stop.split(",")) if s],
    )


def chat_panel(store: Store, art: Artifact, *, key: str = "chat") -> None:
    """A streamed multi-turn chat with one artifact: sampling controls, system prompt, history."""
    key = f"{key}:{art.name}:{art.content_hash}"
    params = sampling_controls(key)
    system = st.text_input("System prompt", "", key=f"{key}:system",
                           placeholder="None: the model's chat template default is used",
                           help="Sent first in every turn. Empty: no system message, so the model's chat "
                                "template adds its own default, if it has one.")
    history: list[dict[str, str]] = st.session_state.setdefault(key, [])
    if history and st.button("Clear the conversation", key=f"{key}:clear"):
        history.clear()
    for message in history:
        st.chat_message(message["role"]).markdown(message["content"])
    prompt = st.chat_input(f"Ask {art.name} something", key=f"{key}:input")
    if not prompt:
        return
    st.chat_message("user").markdown(prompt)
    history.append({"role": "user", "content": prompt})
    messages = ([{"role": "system", "content": system}] if system else []) + history
    try:
        model = load_model(str(store.root), art.name, art.content_hash)
        with st.chat_message("assistant"):
            reply = st.write_stream(model.stream_chat(messages, params))
    except LlmlabError as e:
        history.pop()
        st.error(str(e))
        return
    history.append({"role": "assistant", "content": reply if isinstance(reply, str) else str(reply)})


def job_status(queue: JobQueue, job: JobInfo, key: str) -> JobInfo:
    """A job's title, status and time, its error, and a Cancel button while it runs."""
    took = f" · {job.seconds} s" if job.seconds is not None else ""
    st.markdown(f"**{job.title}** · `{job.id}` · status **{job.status}**{took}")
    if job.error:
        (st.info if job.status == "cancelled" else st.error)(job.error)
    if job.status not in FINAL and st.button("Cancel", key=f"{key}:cancel:{job.id}"):
        job = queue.cancel(job.id)
        st.toast(f"Job {job.id}: {job.status}")
        st.rerun()
    return job


def eta_text(eta: float | None) -> str:
    return f" · ETA {duration_text(eta)}" if eta is not None else ""


def task_bar(progress: dict[str, Any], label: str | None = None) -> None:
    """The bar of a job's current task (``JobQueue.progress``), if it has a counter, with its ETA."""
    if progress.get("of"):
        text = f"{label or progress.get('task') or 'task'} {progress['done']}/{progress['of']}"
        st.progress(min(1.0, progress["done"] / progress["of"]), text=text + eta_text(progress.get("eta")))


def phase_bar(progress: dict[str, Any]) -> None:
    """The bar of a running job's current phase (``quality 2/3 · ETA 1 min 05 s``) and, in its text, the
    task running inside it (``perplexity 20/42``); the latest task's bar when there is no phase."""
    phase = progress.get("phase")
    if not phase or not phase["of"]:
        task_bar(progress)
        return
    inner = f" — {phase['inner']}" if phase.get("inner") else ""
    st.progress(min(1.0, phase["done"] / phase["of"]),
                text=f"{phase['task']} {phase['done']}/{phase['of']}{eta_text(phase.get('eta'))}{inner}")


def job_panel(queue: JobQueue, job_id: str, key: str) -> None:
    """One job's status, phase bar (with its ETA) and latest log line, as the body of a fragment that
    reruns every second while the job is active; when the job ends, the whole page reruns to show its
    results."""
    job = job_status(queue, queue.get(job_id), key)
    if job.status not in FINAL:
        phase_bar(queue.progress(job.id))
    last = last_log(queue, job.id)
    if last:
        st.caption(last)
    running_key = f"{key}:running:{job.id}"
    if job.status not in FINAL:
        st.session_state[running_key] = True
    elif st.session_state.pop(running_key, False):
        st.rerun()


def start_button(queue: JobQueue, kind: str, config: dict[str, Any] | BaseModel, *, label: str, title: str,
                 session_key: str, disabled: bool = False, where: str | None = None) -> JobInfo | None:
    """A Start button that submits a one-step recipe (``kind`` with ``config``) as a job."""
    if not st.button(label, type="primary", key=f"{kind}:start", disabled=disabled):
        return None
    try:
        step = recipes.make_step(kind, config, where=where or f"the {kind} form")
        job = queue.submit(recipes.Recipe(name=title, steps=[step]), title=title, session=session_id())
    except LlmlabError as e:
        st.error(str(e))
        return None
    st.session_state[session_key] = job.id
    st.session_state["job"] = job.id  # the Jobs page opens on it too
    st.success(f"Started job {job.id}: {title}. Follow it below or on the Jobs page.")
    return job
