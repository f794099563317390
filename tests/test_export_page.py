"""The Export page (AppTest): empty store, a model with its bundle, a server started and stopped from
the page, a chat over HTTP, and what the page offers (``llmlab.export.choices``)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("llama_cpp")
from apptest import load_page, open_page, texts  # noqa: E402

from llmlab.export.choices import exportable, server_metric_rows  # noqa: E402
from llmlab.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "views/export.py"


@pytest.fixture(scope="module")
def page() -> ModuleType:
    return load_page(PAGE)


def test_empty_store(empty_home: Store) -> None:
    at = open_page(PAGE)
    assert "no model to export" in texts(at)


def test_the_page_loads_without_running_and_has_a_main(page: ModuleType) -> None:
    assert callable(page.main)


def test_what_the_page_offers(store: Store, micro_gguf) -> None:
    store.add(micro_gguf("f16"), "a")
    store.add(micro_gguf("f16"), "b")
    store.record_metrics("b", {"accuracy": {"heldout": 0.5}})
    assert [a.name for a in exportable(store)] == ["b", "a"]
    rows = server_metric_rows({'llmlab_tokens_total{type="prompt"}': 7.0,
                             'llmlab_request_latency_seconds_sum{endpoint="chat"}': 1.0,
                             'llmlab_request_latency_seconds_count{endpoint="chat"}': 4.0})
    assert {"metric": "prompt tokens", "value": 7.0} in rows
    assert {"metric": 'mean latency {endpoint="chat"} (ms)', "value": 250.0} in rows


def test_bundle_server_and_chat(empty_home: Store, micro_gguf) -> None:
    from llmlab.export import ExportConfig, export
    from llmlab.serve import process

    store = empty_home
    store.add(micro_gguf("f16"), "micro-f16")
    export(ExportConfig(model="micro-f16", tarball=False), store=store)
    at = open_page(PAGE)
    assert "**Parity** (exact): ok" in texts(at)
    assert at.selectbox(key="export:bundle").value == "micro-f16-bundle"
    at.button(key="export:serve").click().run()
    assert not at.exception, [e.value for e in at.exception]
    try:
        [server] = process.running_servers(store)
        assert any(server["url"] in c.value for c in at.code)  # the curl / OpenAI snippets
        at.chat_input(key="export:chat").set_value("Hi").run()
        assert not at.exception, [e.value for e in at.exception]
        lines = (Path(server["log_path"])).read_text().splitlines()
        assert len(lines) == 1 and '"status": 200' in lines[0]  # the chat went over HTTP to the server
        at.button(key="export:stop").click().run()
        assert process.running_servers(store) == []
    finally:
        process.stop_all(store)
