"""Agents: chat with a RAG agent over an index, its sources beside each answer, its trace step by step.

Pick an agent (an ``agent`` artifact or a spec from ``agents/``), the index and the chat model, and
the search mode and k (changed live: the next question uses them). Each answer streams in, with the
documents it used beside it (title, score and the retrieved passage); a refusal after the model's
words streamed in replaces those words. The trace panel shows every node a run went through
(inputs, outputs, retrieved ids, tokens, latency) from the trace store, follows each new question's
run unless the user picks another, and exports all runs as JSONL. The agent's graph is drawn
(Graphviz, in the browser, offline); the search comparison shows dense, BM25 and hybrid hits for
one query side by side. With no index yet, the page offers to index the demo world's documents as
a job. The conversation is kept per browser session in the agent's sqlite memory, so it survives a
restart of the app.

Which agents can be picked, the spec behind a pick, the models whose world can be indexed, a run's
trace as rows, the titled sources beside an answer, the run the trace picker shows and the graph as
DOT come from ``llmlab.agents.choices``. The page only lays out widgets and calls them (its own
helpers turn source cards into markdown). Its body is ``main``, run when Streamlit executes this
file (as ``__main__``).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from llmlab.agents.choices import (SPEC_PREFIX, agent_choices, default_agent, default_index, graph_dot, run_to_show,
                                   shorten, source_cards, spec_of, trace_rows, world_sources, world_titles)
from llmlab.agents.spec import SEARCH_MODES
from llmlab.export.choices import agent_model
from llmlab.errors import LlmlabError
from llmlab.store import RUNNABLE_KINDS, Artifact, Store
from widgets import job_queue, job_status, load_model, start_button

LIVE_MODES = [m for m in SEARCH_MODES if m != "hybrid_rerank"]  # rerank needs a local reranker


# ----- drawing helpers (no Streamlit calls) -----
WITHDRAWN = "The agent withdrew the model's answer: the sources did not support it."


def card_markdown(card: dict[str, Any]) -> str:
    """One source beside an answer (a ``choices.source_cards`` card): its title, where it came from and
    its score, then the retrieved chunk's opening words."""
    about = [card["doc_id"] if card["doc_id"] != card["title"] else "",
             f"score {card['score']:.3f}" if card["score"] is not None else "",
             "" if card["cited"] or card["n"] is None else "given, not cited"]
    head = (f"[{card['n']}] " if card["n"] is not None else "") + f"**{card['title']}**"
    meta = " · ".join(a for a in about if a)
    snippet = f"  \n:gray[{card['snippet']}]" if card["snippet"] else ""
    return head + (f" · :gray[{meta}]" if meta else "") + snippet


def relay(events: Iterator[dict[str, Any]], sink: dict[str, Any]) -> Iterator[str]:
    """The answer's tokens from ``Agent.stream`` events (for ``st.write_stream``); the steps, the hits of
    every search and the final reply land in ``sink``."""
    sink.setdefault("steps", [])
    for event in events:
        if event["type"] == "token":
            yield event["text"]
        elif event["type"] == "step":
            sink["steps"].append(event["node"])
            sink.setdefault("hits", []).extend(event["update"].get("hits") or [])
        elif event["type"] == "done":
            sink["reply"] = event["reply"]


# ----- cached parts -----
@st.cache_data(max_entries=8, show_spinner=False)
def titles_of(store_root: str, name: str, content_hash: str) -> dict[str, str]:
    store = Store(store_root)
    return world_titles(store, store.get(name))


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
def show_beside(container: Any, caption: str, cards: list[dict[str, Any]]) -> None:
    container.caption(caption)
    for card in cards:
        container.markdown(card_markdown(card))
    if not cards:
        container.markdown("none")


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


def chat(store: Store, agent: Any, thread: str, index: Artifact) -> None:
    shown: dict[int, tuple[str, list[dict[str, Any]], str]] = st.session_state.setdefault(
        f"agents:beside:{thread}", {})
    for i, message in enumerate(agent.history(thread)):
        with st.chat_message(message["role"]):
            if message["role"] == "assistant" and i in shown:
                left, right = st.columns([3, 2])
                left.markdown(message["content"])
                if shown[i][2]:
                    left.caption(shown[i][2])
                show_beside(right, shown[i][0], shown[i][1])
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
            answer_box = left.empty()
            with answer_box.container():
                streamed = str(st.write_stream(relay(agent.stream(question, thread_id=thread), sink)) or "")
            reply = sink["reply"]
            note = ""
            if reply.answer.strip() != streamed.strip():
                answer_box.markdown(reply.answer)  # a refusal (or the calculator) replaces the streamed words
                if reply.refused and streamed.strip():
                    note = WITHDRAWN
                    left.caption(note)
            caption, cards = source_cards(reply, sink.get("hits", []),
                                          titles_of(str(store.root), index.name, index.content_hash))
            show_beside(right, caption, cards)
            st.caption(" → ".join(sink["steps"]) + f" · {reply.seconds:.2f} s")
    except LlmlabError as e:
        st.error(str(e))
        return
    shown[len(agent.history(thread)) - 1] = (caption, cards, note)
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
        state = st.session_state
        show, followed = run_to_show(ids, state.get("agents:run"), state.get("agents:followed"),
                                     state.get("agents:last_run"))
        state["agents:run"], state["agents:followed"] = show, followed
        run_id = st.selectbox("Run", ids, key="agents:run", help="Follows each new question's run.",
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
    # an agent artifact (the others are specs from agents/) on a GGUF model of the store can be bundled
    if not choice.startswith(SPEC_PREFIX) and agent_model(store.get(choice), store) is not None and c6.button(
            "Export", key="agents:to_export", icon=":material/package_2:",
            help="Bundle the agent as saved (its index, model and search settings, not this page's changes) "
                 "with a server, on the Export page."):
        st.session_state["export:model"] = choice  # the Export page opens on it
        st.switch_page("views/export.py")
    thread = st.session_state.setdefault("agents:thread", uuid.uuid4().hex[:12])
    st.caption(f"Nodes that use the model: {', '.join(spec.uses_model())}; the others are rules. "
               f"Thread `{thread}`.")
    try:
        agent = make_agent(store, choice, index, model, mode, k)
    except LlmlabError as e:
        st.error(str(e))
        return
    with st.expander("The agent's graph"):
        st.graphviz_chart(graph_dot(agent.graph.get_graph(), model_nodes=spec.uses_model()))
        st.caption("Blue: nodes that use the chat model. Dashed: a decision (which way the run goes).")
    chat(store, agent, thread, index)
    trace_panel(store)
    compare_search(store, index, k, st.session_state.get("agents:input") or "")
    agent.close()


if __name__ == "__main__":
    main()
