"""The agent with real parts: the runtime chat model over the micro model, the OpenAI-compatible
chat model against a real llama.cpp server, and the whole agent over a real index (Chroma + BM25)
with ``llmlab eval answers`` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlab.errors import ConfigError, NotFoundError
from llmlab.serve.process import free_port
from llmlab.store import Store


@pytest.fixture(scope="module")
def runtime_llm(micro_model_dir: Path):
    from llmlab.agents.chat_model import RuntimeChatModel
    from llmlab.runtime import load

    model = load(micro_model_dir)
    yield RuntimeChatModel(model=model, max_tokens=8)
    model.close()


def test_runtime_chat_model_invokes_and_streams_the_same_text(runtime_llm) -> None:
    reply = runtime_llm.invoke("Where does Bodo live?")
    chunks = [c.content for c in runtime_llm.stream("Where does Bodo live?")]
    assert reply.content and "".join(chunks) == reply.content
    assert len([c for c in chunks if c]) >= 2  # streamed piece by piece
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 5 and 0 < usage["output_tokens"] <= 8
    direct = runtime_llm.model.chat([{"role": "user", "content": "Where does Bodo live?"}],
                                    runtime_llm._params(None))
    assert reply.content == direct


@pytest.fixture(scope="module")
def llama_server(micro_gguf) -> Iterator[str]:
    """`python -m llama_cpp.server` on 127.0.0.1 serving the micro model's f16 GGUF."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(micro_gguf("f16")),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "256", "--n_threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.HTTPError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the llama.cpp server did not start")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_openai_chat_model_against_a_real_llama_cpp_server(llama_server: str, micro_gguf,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.agents.chat_model import OpenAIChatModel
    from llmlab.runtime import SamplingParams, load

    llm = OpenAIChatModel(base_url=llama_server, max_tokens=6)
    reply = llm.invoke("Hello")
    assert reply.usage_metadata["output_tokens"] > 0
    assert "".join(c.content for c in llm.stream("Hello")) == reply.content
    with load(micro_gguf("f16")) as m:  # the same greedy text as llmlab's own llama.cpp engine
        assert m.chat([{"role": "user", "content": "Hello"}], SamplingParams.greedy(max_tokens=6)) == reply.content
    monkeypatch.delenv("LLMLAB_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="LLMLAB_TEST_KEY"):
        OpenAIChatModel(base_url=llama_server, api_key_env="LLMLAB_TEST_KEY").invoke("Hello")


def test_openai_chat_model_names_an_unreachable_endpoint() -> None:
    from llmlab.agents.chat_model import OpenAIChatModel

    port = free_port()
    with pytest.raises(NotFoundError, match="Cannot reach"):
        OpenAIChatModel(base_url=f"http://127.0.0.1:{port}/v1", timeout=2).invoke("Hello")


@pytest.fixture(scope="module")
def indexed_home(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path, docs_folder: Path) -> Store:
    """A store with the micro model (``micro``) and a real index of three documents (``docs``)."""
    pytest.importorskip("llmlab.rag.search")
    from llmlab.rag.index import IndexConfig, build_index

    store = Store(tmp_path_factory.mktemp("agents-real") / "models")
    store.add(micro_model_dir, "micro")
    build_index(IndexConfig(name="docs", source=str(docs_folder)), store=store)
    return store


def test_agent_with_the_real_model_and_index(indexed_home: Store) -> None:
    from llmlab.agents import Agent
    from llmlab.agents.trace import TraceStore

    with Agent("rag-rules", store=indexed_home, model="micro", index="docs") as agent:
        reply = agent.ask("Where does Bodo Trastel live?", thread_id="real")
        assert "bodo" in reply.retrieved_ids[0].lower()
        assert reply.answer  # the micro model's words, or the refusal when they are not in the sources
        steps = TraceStore.for_store(indexed_home).steps(reply.run_id)
        answer = next(s for s in steps if s["node"] == "answer")
        assert answer["tokens"] > 10 and answer["retrieved_ids"]
        assert [m["role"] for m in agent.history("real")] == ["user", "assistant"]


def test_cli_eval_answers_prints_json(indexed_home: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    from llmlab.cli import main

    qs = tmp_path / "qs.jsonl"
    qs.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Where does Bodo Trastel live?", "answer": "Dunmere", "gold_doc": "bodo.md"},
        {"question": "What does Mira Vell keep at home?", "answer": "goat", "gold_doc": "mira.txt"},
    ]) + "\n")
    monkeypatch.setenv("LLMLAB_HOME", str(indexed_home.root))
    assert main(["eval", "answers", "--model", "micro", "--index", "docs", "--questions", str(qs)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["retrieval"]["n"] == 2 and report["closed_book"]["n"] == 2
    assert report["retrieval"]["gold_doc_recall"] == 1.0
    assert 0 <= report["retrieval"]["f1"] <= 1 and "retrieval_gain" in report
    missing = str(tmp_path / "no.jsonl")
    assert main(["eval", "answers", "--model", "micro", "--index", "docs", "--questions", missing]) == 3
    assert "not found" in capsys.readouterr().err


def test_long_sources_are_shortened_and_a_too_long_question_is_refused(runtime_llm, tmp_path: Path) -> None:
    from llmlab.agents import Agent
    from llmlab.rag.search import Hit

    class Long:
        def search(self, query: str, k: int = 5, mode: str = "hybrid", filters: dict | None = None) -> list:
            return [Hit("b#0", "b", "Bodo Trastel", "Bodo Trastel lives in Dunmere. " * 400, 1.0)]

    spec = {"name": "long", "context_chars": 20000, "nodes": {"check": {"use": "off"}},
            "prompts": {"system": "Answer from the sources."}}  # the micro model's context is only 256 tokens
    agent = Agent(spec, store=Store(tmp_path / "models"), llm=runtime_llm, searcher=Long(), memory=False)
    n_ctx = runtime_llm.model.n_ctx
    assert len(runtime_llm.model.tokenize("Bodo Trastel lives in Dunmere. " * 400)) > n_ctx
    assert agent.ask("Where does Bodo Trastel live?").sources[0]["doc_id"] == "b"  # it fitted, shortened
    with pytest.raises(ConfigError, match="context holds"):
        agent.ask("Where does Bodo Trastel live? " * 300)


@pytest.mark.slow
def test_the_demo_model_agent_on_the_world_rag_questions(quickstart, tmp_path: Path) -> None:
    """The agents recipe's steps on the trained demo model: retrieval finds the gold document; the
    answers are reported, not asserted (the 4M model does not read, see docs/agents.md)."""
    import shutil

    from llmlab import recipes

    home = tmp_path / "models"
    shutil.copytree(quickstart.home / "demo", home / "demo")
    store = Store(home)
    recipe = recipes.load(quickstart.root / "recipes" / "agents.yaml")
    steps = [s for s in recipe.steps if s.kind != "build-demo"]
    steps[-1] = recipes.make_step("eval-answers", {**steps[-1].config_dict(), "limit": 12})
    results = recipes.run(recipes.Recipe(name="agents", steps=steps), store=store, track=False)
    assert store.get("demo-agent").kind == "agent"
    report = results[-1].metrics["report"]
    assert report["retrieval"]["n"] == 12 and report["retrieval"]["gold_doc_recall"] >= 0.9
    assert {"exact_match", "f1", "accuracy"} <= set(report["retrieval_gain"])
