"""The ``serve`` recipe step: a real background server, asked over HTTP, never skipped."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from llmlab import recipes
from llmlab.errors import NotFoundError
from llmlab.serve import process
from llmlab.store import Store

pytest.importorskip("llama_cpp")


@pytest.fixture
def served_store(store: Store, micro_gguf) -> Iterator[Store]:
    store.add(micro_gguf("f16"), "micro-f16")
    yield store
    process.stop_all(store)


def serve_recipe(**config) -> recipes.Recipe:
    return recipes.loads(yaml.safe_dump({"name": "s", "steps": [{"serve": {"bundle": "micro-f16", **config}}]}))


def test_asks_once_and_is_never_skipped(served_store: Store) -> None:
    recipe = serve_recipe(question="Where does Ada live?", keep_running=False, max_tokens=4)
    first, second = (recipes.run(recipe, store=served_store, track=False)[0] for _ in range(2))
    assert first.status == second.status == "done"  # a rerun asks again instead of reading a cache
    m = first.metrics
    assert m["question"] == "Where does Ada live?" and m["answer"] and m["running"] is False  # micro: any text
    assert m["url"].startswith("http://127.0.0.1:") and m["expected"] is None and m["correct"] is None
    assert process.running_servers(served_store) == []


def test_left_running_on_a_free_port_when_the_asked_one_is_taken(served_store: Store) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        [result] = recipes.run(serve_recipe(port=port, max_tokens=4), store=served_store, track=False)
    m = result.metrics
    assert m["question"] == "Hello! Who are you?"  # no demo world behind a plain GGUF
    [server] = process.running_servers(served_store)
    assert server["url"] == m["url"] and server["port"] != port
    [again] = recipes.run(serve_recipe(port=port, max_tokens=4), store=served_store, track=False)
    assert again.metrics["url"] == m["url"]  # the running server is found and asked, not started twice


def test_missing_bundle_fails_before_starting_anything(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no-such-bundle"):
        recipes.run(recipes.loads("name: s\nsteps:\n  - serve: {bundle: no-such-bundle}\n"), store=store, track=False)
    assert process.running_servers(store) == []


def llmlab(store: Store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmlab", "--home", str(store.root), "servers", *args],
                          capture_output=True, text=True, timeout=120)


def test_servers_command_lists_and_stops(served_store: Store) -> None:
    assert "No server is running" in llmlab(served_store).stdout
    process.start("micro-f16", store=served_store)
    [server] = process.running_servers(served_store)
    assert f"micro-f16  {server['url']}" in llmlab(served_store, "ls").stdout
    no_name = llmlab(served_store, "stop")
    assert no_name.returncode == 2 and "needs a name or --all" in no_name.stderr
    unknown = llmlab(served_store, "stop", "other")
    assert unknown.returncode == 3 and "No running server for 'other'" in unknown.stderr
    assert "llmlab servers ls" in unknown.stderr  # the hint
    stopped = llmlab(served_store, "stop", "micro-f16")
    assert stopped.returncode == 0 and "stopped micro-f16" in stopped.stdout
    assert process.running_servers(served_store) == []
