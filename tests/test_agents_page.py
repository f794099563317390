"""The Agents page (``app/views/agents.py``) through Streamlit's AppTest: an empty store, then a
store with the micro model and a real index, where a question is asked in the chat and the answer,
its sources and the trace panel appear. Its drawing helpers are tested by loading the page file (which runs
nothing: the page's body is ``main``); the agent choices come from ``llmlab.agents.choices``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("streamlit")
from apptest import load_page, open_page, texts  # noqa: E402

from llmlab.agents.choices import agent_choices, spec_of  # noqa: E402
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
    events = iter([{"type": "step", "node": "retrieve"}, {"type": "token", "text": "Dun"},
                   {"type": "token", "text": "mere"}, {"type": "done", "reply": "R"}])
    sink: dict = {}
    assert "".join(page.relay(events, sink)) == "Dunmere" and sink == {"steps": ["retrieve"], "reply": "R"}
    assert page.source_lines([{"n": 1, "title": "Bodo", "doc_id": "d1", "cited": False}]) == [
        "[1] **Bodo** · `d1` (given)"]


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
    assert "`bodo.md`" in shown  # beside the answer: its source, or what was retrieved when it refused
    assert "route → retrieve → grade" in shown
    assert at.dataframe, "the trace panel shows the run's steps"
    steps = at.dataframe[0].value
    assert list(steps["node"])[:3] == ["route", "retrieve", "grade"]

