"""The Agents and Arena pages in a real browser (chromium through Playwright, as ``tests/test_browser.py``),
over one store holding the micro model (``micro-hf``), its GGUF (``micro-f16``) and an index of two
small documents.

The Agents page answers a question with its sources beside it, titled and with a snippet and score
(not bare ids), and draws the agent's graph offline (Graphviz SVG, no Mermaid source). The Arena
answers blind ("Model A", "Model B"), takes a vote, then reveals the names while the question stays.
Screenshots go to ``$LLMLAB_TEST_ARTIFACTS/screenshots`` (default ``tests/artifacts/screenshots``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("LLMLAB_NO_BROWSER") == "1":
    pytest.skip("LLMLAB_NO_BROWSER=1: the browser tests are switched off", allow_module_level=True)
pytest.importorskip("llama_cpp")  # the GGUF variant
pytest.importorskip("llmlab.rag.search")  # the index

from browser import (ASSISTANT, AppServer, chat, check_page, open_view,  # noqa: E402
                     screenshot, settle)
from playwright.sync_api import Page, expect  # noqa: E402
from test_browser import ARTIFACTS, JOB_TIMEOUT, SHOTS, chromium, chromium_page, timed_module  # noqa: E402, F401

from llmlab.store import Store  # noqa: E402

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def home(timed_module: None, chromium: str,  # noqa: F811 (the fixtures imported above)
         tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path, micro_gguf) -> Store:
    """Two chat-able variants and an index of two documents (one a markdown file with a heading)."""
    from llmlab.rag.index import IndexConfig, build_index

    root = tmp_path_factory.mktemp("browser-agents")
    store = Store(root / "models")
    store.add(micro_model_dir, "micro-hf")
    store.add(micro_gguf("f16"), "micro-f16")
    docs = root / "docs"
    docs.mkdir()
    (docs / "bodo.md").write_text("# Bodo Trastel\n\nBodo Trastel lives in Dunmere. "
                                  "Bodo Trastel works as a baker.")
    (docs / "mira.txt").write_text("Mira Vell keeps a goat at home.")
    build_index(IndexConfig(name="docs", source=str(docs)), store=store)
    return store


@pytest.fixture(scope="module")
def app(home: Store) -> Iterator[AppServer]:
    with AppServer(home.root, ARTIFACTS / "streamlit-agents-arena.log") as server:
        yield server


@pytest.fixture(scope="module")
def page(app: AppServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium_page(tmp_path_factory) as page:
        yield page


def test_agents_titled_sources_and_drawn_graph(page: Page, app: AppServer) -> None:
    open_view(page, app.url, "agents")
    check_page(page, "Agents")
    page.get_by_text("The agent's graph").click()
    graph = page.get_by_test_id("stGraphVizChart")
    expect(graph.locator("svg g.node")).to_have_count(11)  # start, nine nodes, end: drawn offline
    expect(graph).to_contain_text("retrieve")
    expect(page.get_by_text("flowchart", exact=False)).to_have_count(0)  # no Mermaid source
    chat(page, "Ask the agent", "Where does Bodo Trastel live?")
    # beside the answer (or what was retrieved, when the small model's answer was refused): titled sources
    message = page.locator(ASSISTANT).last
    expect(message).to_contain_text(re.compile(r"Sources|Retrieved, not used"), timeout=JOB_TIMEOUT)
    settle(page)
    reply = message.inner_text()
    assert "Bodo Trastel" in reply and "bodo.md · score" in reply, reply
    assert "Bodo Trastel lives in Dunmere. Bodo Trastel works as a baker." in reply, reply
    assert "# Bodo" not in reply and "`bodo.md`" not in reply
    check_page(page, "Trace: every step of a run")
    screenshot(page, SHOTS / "agents-sources.png")


def test_arena_blind_vote_reveals_names(page: Page, app: AppServer) -> None:
    open_view(page, app.url, "arena")
    expect(page.get_by_role("switch", name="Blind")).to_be_checked()
    chat(page, "Ask every chosen variant", "Who are you?")
    expect(page.get_by_text("Which answer to")).to_be_visible(timeout=JOB_TIMEOUT)
    settle(page)
    headings = page.locator("strong")  # each answer's column heading
    expect(headings.filter(has_text=re.compile(r"^Model [AB]$"))).to_have_count(2)
    expect(headings.filter(has_text=re.compile(r"micro"))).to_have_count(0)  # blind before the vote
    screenshot(page, SHOTS / "arena-blind.png")
    page.get_by_role("button", name="Model A", exact=True).click()
    outcome = re.compile(r"Your vote: Model A is better\. Model A is micro-\S+; Model B is micro-")
    expect(page.get_by_text(outcome)).to_be_visible()
    expect(headings.filter(has_text=re.compile(r"^Model [AB]: micro-(hf|f16)$"))).to_have_count(2)
    expect(page.get_by_test_id("stChatMessage").filter(has_text="Who are you?")).to_be_visible()  # kept
    expect(page.get_by_text("1 pairwise votes")).to_be_visible()
    expect(page.get_by_role("button", name="Ask again")).to_be_visible()
    check_page(page, "Ratings")
    screenshot(page, SHOTS / "arena-revealed.png")
