"""The Agents page (``app/views/agents.py``) through Streamlit's AppTest: an empty store, then a
store with the micro model and a real index, where a question is asked in the chat and the answer,
its titled sources (with snippet and score), the drawn graph and the trace panel appear; a refusal
after streamed words withdraws them; the trace picker follows each new question's run. Its drawing
helpers are tested by loading the page file (which runs nothing: the page's body is ``main``); the
choices behind it (sources, the picked run, the graph as DOT) come from ``llmlab.agents.choices``."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

pytest.importorskip("streamlit")
from apptest import load_page, open_page, texts  # noqa: E402

from llmlab.agents.choices import (agent_choices, graph_dot, run_to_show, source_cards, spec_of,  # noqa: E402
                                   title_of)
from llmlab.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "views/agents.py"


@pytest.fixture(scope="module")
def page() -> ModuleType:
    return load_page(PAGE)


def test_helpers(page: ModuleType, store: Store) -> None:
    assert callable(page.main)
    assert agent_choices(store) == ["spec:rag", "spec:rag-reader", "spec:rag-rules"]
    assert spec_of(store, "spec:rag-rules").name == "rag-rules"
    events = iter([{"type": "step", "node": "route", "update": {"route": "retrieve"}},
                   {"type": "step", "node": "retrieve", "update": {"hits": [{"doc_id": "d1"}]}},
                   {"type": "token", "text": "Dun"}, {"type": "token", "text": "mere"},
                   {"type": "done", "reply": "R"}])
    sink: dict = {}
    assert "".join(page.relay(events, sink)) == "Dunmere"
    assert sink == {"steps": ["route", "retrieve"], "reply": "R", "hits": [{"doc_id": "d1"}]}
    card = {"n": 1, "title": "Bodo", "doc_id": "d1", "score": 0.8421, "snippet": "Bodo lives in Dunmere.",
            "cited": False}
    assert page.card_markdown(card) == ("[1] **Bodo** · :gray[d1 · score 0.842 · given, not cited]  \n"
                                        ":gray[Bodo lives in Dunmere.]")


BODO = {"chunk_id": "c1", "doc_id": "doc-0008", "title": "", "text": "Bodo Trastel\nlives in Dunmere."}
HITS = [{**BODO, "score": 0.5},
        {"chunk_id": "c2", "doc_id": "doc-0009", "title": "Mira Vell", "text": "Mira keeps a goat. " * 30,
         "score": 0.25},
        {**BODO, "score": 0.7}]  # the same chunk found again by a retry, with a better score


def test_titles_come_from_the_index_the_world_or_the_first_line() -> None:
    assert title_of(HITS[1]) == "Mira Vell"  # the index's metadata
    assert title_of(HITS[0], {"doc-0008": "Bodo Trastel (world)"}) == "Bodo Trastel (world)"
    assert title_of(HITS[0]) == "Bodo Trastel"  # the first line of the text
    assert title_of({"doc_id": "doc-0001", "text": ""}) == "doc-0001"


def test_source_cards_title_snippet_and_score() -> None:
    source = {"n": 2, "doc_id": "doc-0008", "title": "", "chunk_id": "c1", "cited": True}
    reply = SimpleNamespace(sources=[source])
    caption, cards = source_cards(reply, HITS)
    assert caption == "Sources"
    assert cards == [{"n": 2, "title": "Bodo Trastel", "doc_id": "doc-0008", "score": 0.7,  # the best search
                      "snippet": "lives in Dunmere.", "cited": True}]  # the title is not repeated
    caption, cards = source_cards(SimpleNamespace(sources=[]), HITS)  # refused: what was retrieved
    assert caption == "Retrieved, not used" and [c["title"] for c in cards] == ["Bodo Trastel", "Mira Vell"]
    assert len(cards[1]["snippet"]) == 220 and cards[1]["snippet"].endswith("…") and cards[1]["n"] is None
    calc = SimpleNamespace(sources=[{"n": 0, "doc_id": "calculator", "title": "calculator"}])
    assert source_cards(calc, [])[1][0]["score"] is None


def test_trace_picker_follows_new_runs_unless_picked() -> None:
    assert run_to_show(["r2", "r1"], "r1", "r1", "r2") == ("r2", "r2")  # a new question: its run
    assert run_to_show(["r2", "r1"], "r1", "r2", "r2") == ("r1", "r2")  # picked since: kept
    assert run_to_show(["r3", "r2", "r1"], "r1", "r2", "r3") == ("r3", "r3")  # the next question: followed
    assert run_to_show(["r2", "r1"], None, None, None) == ("r2", "r2")  # nothing asked here: the newest


def test_graph_is_graphviz_dot_not_mermaid(store: Store) -> None:
    pytest.importorskip("langgraph")
    from llmlab.agents import Agent

    agent = Agent("rag-rules", store=store, llm=object(), searcher=object(), memory=False, trace=False)
    dot = graph_dot(agent.graph.get_graph(), model_nodes=agent.spec.uses_model())
    assert dot.startswith("digraph agent {") and dot.endswith("}") and "graph TD" not in dot
    assert '"__start__" -> "route";' in dot and '"grade" -> "rewrite" [style="dashed"];' in dot
    assert '"rewrite" -> "retrieve";' in dot and '"answer" [fillcolor="#cfe2ff"' in dot
    assert '"retrieve";' in dot  # a rule node, plain


def test_empty_store_says_what_to_do(empty_home: Store) -> None:
    at = open_page(PAGE)
    assert "no index yet" in texts(at)


@pytest.fixture
def indexed_home(micro_home: Store, tmp_path: Path) -> Store:
    pytest.importorskip("llmlab.rag.search")
    from llmlab.rag.index import IndexConfig, build_index

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "bodo.md").write_text("# Bodo Trastel\n\nBodo Trastel lives in Dunmere. Bodo Trastel works as a baker.")
    (folder / "mira.txt").write_text("Mira Vell keeps a goat at home.")
    build_index(IndexConfig(name="docs", source=str(folder)), store=micro_home)
    return micro_home


def test_chat_shows_answer_sources_and_trace(indexed_home: Store) -> None:
    at = open_page(PAGE, timeout=120)
    assert at.selectbox(key="agents:index").value == "docs" and at.selectbox(key="agents:model").value == "micro"
    assert at.selectbox(key="agents:agent").value == "spec:rag-rules"  # rules first for small models
    at.radio(key="agents:mode").set_value("bm25")
    at.chat_input(key="agents:input").set_value("Where does Bodo Trastel live?").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    # beside the answer, its source or (when it refused) what was retrieved: titled, with a snippet
    assert "**Bodo Trastel** · :gray[bodo.md · score" in shown
    assert ":gray[Bodo Trastel lives in Dunmere. Bodo Trastel works as a baker.]" in shown
    assert "route → retrieve → grade" in shown
    assert at.dataframe, "the trace panel shows the run's steps"
    steps = at.dataframe[0].value
    assert list(steps["node"])[:3] == ["route", "retrieve", "grade"]


def fake_model(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    """The page's chat model answers ``answer`` (streamed word by word) to every prompt."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    import llmlab.agents.chat_model as chat_model

    monkeypatch.setattr(chat_model, "RuntimeChatModel",
                        lambda **_: GenericFakeChatModel(messages=itertools.cycle([AIMessage(answer)])))


def ask(at, question: str):  # noqa: ANN001, ANN201
    at.chat_input(key="agents:input").set_value(question).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_supported_answer_has_titled_sources_and_graph(indexed_home: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_model(monkeypatch, "Bodo Trastel lives in Dunmere [1].")
    at = open_page(PAGE, timeout=120)
    at.radio(key="agents:mode").set_value("bm25")
    shown = texts(ask(at, "Where does Bodo Trastel live?"))
    assert "Bodo Trastel lives in Dunmere [1]." in shown and "Sources" in shown
    assert "[1] **Bodo Trastel** · :gray[bodo.md · score" in shown  # a title, not a bare id
    assert "withdrew" not in shown
    charts = at.get("graphviz_chart")
    assert len(charts) == 1 and charts[0].proto.spec.startswith("digraph agent {")
    assert not [c for c in at.code if c.language == "mermaid"]


def test_refusal_withdraws_the_streamed_words(indexed_home: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_model(monkeypatch, "The moon is purple cheese.")  # not in the sources: the check refuses
    at = open_page(PAGE, timeout=120)
    at.radio(key="agents:mode").set_value("bm25")
    shown = texts(ask(at, "Where does Bodo Trastel live?"))
    refusal = spec_of(indexed_home, "spec:rag-rules").prompts.refusal
    assert "purple cheese" not in shown, "the withdrawn words are gone"
    assert refusal in shown and "The agent withdrew the model's answer" in shown
    assert "Retrieved, not used" in shown and "**Bodo Trastel**" in shown


def test_trace_picker_follows_the_newest_run(indexed_home: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.agents.trace import TraceStore

    fake_model(monkeypatch, "Bodo Trastel lives in Dunmere [1].")
    traces = TraceStore.for_store(indexed_home)
    at = open_page(PAGE, timeout=120)
    at.radio(key="agents:mode").set_value("bm25")
    ask(at, "Where does Bodo Trastel live?")
    first = traces.runs()[0]["run_id"]
    assert at.selectbox(key="agents:run").value == first
    ask(at, "What does Bodo Trastel work as?")
    second = traces.runs()[0]["run_id"]
    assert second != first and at.selectbox(key="agents:run").value == second
    at.selectbox(key="agents:run").set_value(first).run()  # the user looks at the first run again
    at.slider(key="agents:k").set_value(2).run()  # another rerun keeps their pick
    assert at.selectbox(key="agents:run").value == first
    ask(at, "Where does Mira Vell keep a goat?")
    assert at.selectbox(key="agents:run").value == traces.runs()[0]["run_id"] not in (first, second)

