"""Agents: chat with a RAG agent over an index, its sources beside each answer, its trace step by step.

Pick an agent (an ``agent`` artifact or a spec from ``agents/``), the index and the chat model, and
the search mode and k (changed live: the next question uses them). Each answer streams in, with the
documents it used beside it; the trace panel shows every node the run went through (inputs,
outputs, retrieved ids, tokens, latency) from the trace store, and exports all runs as JSONL. The
search comparison shows dense, BM25 and hybrid hits for one query side by side. With no index yet,
the page offers to index the demo world's documents as a job. The conversation is kept per browser
session in the agent's sqlite memory, so it survives a restart of the app.

Which agents can be picked, the spec behind a pick, the models whose world can be indexed and a
run's trace as rows come from ``llmlab.agents.choices``. The page only lays out widgets and calls
them (its own helpers turn a reply into the markdown beside it). Its body is ``main``, run when
Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from llmlab.agents.choices import (agent_choices, default_agent, default_index, shorten, spec_of, trace_rows,
                                   world_sources)
from llmlab.agents.spec import SEARCH_MODES
from llmlab.errors import LlmlabError
from llmlab.store import RUNNABLE_KINDS, Artifact, Store
from widgets import job_queue, job_status, load_model, start_button

LIVE_MODES = [m for m in SEARCH_MODES if m != "hybrid_rerank"]  # rerank needs a local reranker


# ----- drawing helpers (no Streamlit calls) -----
def source_lines(sources: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for an answer's sources."""
    return [f"[{s['n']}] **{s['title']}** · `{s['doc_id']}`" + ("" if s.get("cited", True) else " (given)")
            for s in sources]


def beside(reply: Any) -> tuple[str, str]:
    """The caption and markdown shown beside an answer: its sources, or what was retrieved but not
    used when the agent refused."""
    if reply.sources:
        return "Sources", "\n\n".join(source_lines(reply.sources))
    if reply.retrieved_ids:
        return "Retrieved, not used", "\n\n".join(f"`{d}`" for d in dict.fromkeys(reply.retrieved_ids))
    return "Sources", "none"


def relay(events: Iterator[dict[str, Any]], sink: dict[str, Any]) -> Iterator[str]:
    """The answer's tokens from ``Agent.stream`` events (for ``st.write_stream``); steps and the final
    reply land in ``sink``."""
    sink.setdefault("steps", [])
    for event in events:
        if event["type"] == "token":
            yield event["text"]
        elif event["type"] == "step":
            sink["steps"].append(event["node"])
        elif event["type"] == "done":
            sink["reply"] = event["reply"]


# ----- cached parts -----
@st.cache_resource(max_entries=4, show_spinner="Opening the index…")
def open_index(store_root: str, name: str, content_hash: str) -> Any:
    from llmlab.rag.search import Searcher

    return Searcher.open(name, store=Store(store_root))


def make_agent(store: Store, choice: str, index: Artifact, model: Artifact, mode: str, k: int) -> Any:
    """An agent over the cached searcher and model (building the graph itself takes milliseconds)."""
    from llmlab.agents import Agent
    from llmlab.agents.chat_model import RuntimeChatModel

    spec = spec_of(store, choice)
    llm = RuntimeChatModel(model=load_model(str(store.root), model.name, model.content_hash),
                           temperature=spec.model.temperature, max_tokens=spec.model.max_tokens)
    return Agent(spec, store=store, llm=llm, searcher=open_index(str(store.root), index.name, index.content_hash),
                 index=index.name, model=model.name, mode=mode, k=k)


# ----- sections -----
def no_index(store: Store) -> None:
    st.info("The store has no index yet. Index the demo world's documents here, or your own folder with "
            "`llmlab index --name my-docs --source ~/notes`.")
    with_world = world_sources(store)
    if not with_world:
        st.caption("No model with a demo world either: run the quickstart (`llmlab run recipes/quickstart.yaml`).")
        return
    queue = job_queue(str(store.root))
    of = st.selectbox("World of", with_world, key="agents:world_of")
    start_button(queue, "index", {"name": "demo-index", "source": "world", "world_of": of},
                 label="Index the demo world", title="index demo-index", session_key="agents:index_job")
    if job_id := st.session_state.get("agents:index_job"):
        job_status(queue, queue.get(job_id), "agents")


def chat(store: Store, agent: Any, thread: str) -> None:
    shown: dict[int, tuple[str, str]] = st.session_state.setdefault(f"agents:beside:{thread}", {})
    for i, message in enumerate(agent.history(thread)):
        with st.chat_message(message["role"]):
            if message["role"] == "assistant" and i in shown:
                left, right = st.columns([3, 2])
                left.markdown(message["content"])
                right.caption(shown[i][0])
                right.markdown(shown[i][1])
            else:
                st.markdown(message["content"])
    question = st.chat_input("Ask the agent", key="agents:input")
    if not question:
        return
    st.chat_message("user").markdown(question)
    sink: dict[str, Any] = {}
    try:
        with st.chat_message("assistant"):
            left, right = st.columns([3, 2])
            with left:
                streamed = st.write_stream(relay(agent.stream(question, thread_id=thread), sink))
            reply = sink["reply"]
            if reply.answer != streamed:
                left.markdown(reply.answer)
                if streamed:
                    left.caption("The model's words above were not supported by the sources, so the agent refused.")
            caption, text = beside(reply)
            right.caption(caption)
            right.markdown(text)
            st.caption(" → ".join(sink["steps"]) + f" · {reply.seconds:.2f} s")
    except LlmlabError as e:
        st.error(str(e))
        return
    shown[len(agent.history(thread)) - 1] = (caption, text)
    st.session_state["agents:last_run"] = reply.run_id


def trace_panel(store: Store) -> None:
    from llmlab.agents.trace import TraceStore

    traces = TraceStore.for_store(store)
    runs = traces.runs(limit=20)
    with st.expander("Trace: every step of a run", expanded=bool(st.session_state.get("agents:last_run"))):
        if not runs:
            st.caption("No runs yet: ask the agent something.")
            return
        ids = [r["run_id"] for r in runs]
        last = st.session_state.get("agents:last_run")
        run_id = st.selectbox("Run", ids, index=default_index(ids, last), key="agents:run",
                              format_func=lambda i: next(f"{r['question'][:60]} · {r['status']} · {r['run_id']}"
                                                         for r in runs if r["run_id"] == i))
        st.dataframe(trace_rows(traces.steps(run_id)), hide_index=True)
        out = Path(tempfile.mkdtemp()) / "traces.jsonl"
        traces.export_jsonl(out)
        st.download_button("Export all runs as JSONL", out.read_bytes(), file_name="traces.jsonl",
                           mime="application/jsonl", key="agents:export")


def compare_search(store: Store, index: Artifact, k: int, question: str) -> None:
    with st.expander("Compare search modes on one query"):
        query = st.text_input("Query", question, key="agents:compare_query")
        if not query:
            return
        searcher = open_index(str(store.root), index.name, index.content_hash)
        for col, mode in zip(st.columns(len(LIVE_MODES)), LIVE_MODES):
            col.markdown(f"**{mode}**")
            try:
                hits = searcher.search(query, k=k, mode=mode)
            except LlmlabError as e:
                col.error(str(e))
                continue
            for h in hits:
                col.markdown(f"`{h.score:.3f}` **{h.title}**  \n{shorten(h.text, 140)}")


def main() -> None:
    store = Store()
    st.title("Agents")
    st.markdown("A RAG agent over an index: it retrieves, grades, rewrites and retries, answers with its "
                "sources or refuses, and every step it takes is traced.")
    indexes = store.list(kind="index")
    models = [a for a in store.list() if a.kind in RUNNABLE_KINDS]
    if not indexes:
        no_index(store)
        return
    if not models:
        st.info("The store has no chat model: run the quickstart or import one with `llmlab models add`.")
        return
    choices = agent_choices(store)
    c1, c2, c3 = st.columns(3)
    choice = c1.selectbox("Agent", choices, index=default_agent(choices), key="agents:agent",
                          help="An agent artifact (llmlab agent) or a spec from agents/.")
    try:
        spec = spec_of(store, choice)
    except LlmlabError as e:
        st.error(str(e))
        return
    index_names, model_names = [a.name for a in indexes], [a.name for a in models]
    index = store.get(c2.selectbox("Index", index_names, key="agents:index",
                                   index=default_index(index_names, spec.retriever.index)))
    model = store.get(c3.selectbox("Model", model_names, key="agents:model",
                                   index=default_index(model_names, spec.model.artifact)))
    c4, c5, c6 = st.columns([2, 2, 1])
    mode = c4.radio("Search mode", LIVE_MODES, index=LIVE_MODES.index(spec.retriever.mode)
                    if spec.retriever.mode in LIVE_MODES else 0, horizontal=True, key="agents:mode")
    k = c5.slider("Hits (k)", 1, 10, min(spec.retriever.k, 10), key="agents:k")
    if c6.button("New conversation", key="agents:new"):
        st.session_state["agents:thread"] = uuid.uuid4().hex[:12]
    thread = st.session_state.setdefault("agents:thread", uuid.uuid4().hex[:12])
    st.caption(f"Nodes that use the model: {', '.join(spec.uses_model())}; the others are rules. "
               f"Thread `{thread}`.")
    try:
        agent = make_agent(store, choice, index, model, mode, k)
    except LlmlabError as e:
        st.error(str(e))
        return
    with st.expander("The agent's graph"):
        st.code(agent.draw(), language="mermaid")
    chat(store, agent, thread)
    trace_panel(store)
    compare_search(store, index, k, st.session_state.get("agents:input") or "")
    agent.close()


if __name__ == "__main__":
    main()
