"""``llmlab eval answers`` with continuous batching: over a GGUF model the questions are asked several at
once and decoded in one ``Batcher``, with the same answers and scores, row by row, as one at a time
(F32 weights, where the batch computes what one request alone does); other models keep the sequential
path; a failing question ends the evaluation at once, the batcher closed.

The micro model's greedy reply to a chat prompt is blank lines, so its answers are sampled (seeded):
each request in the batch keeps its own seed and history, so they are still those of one at a time."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("llama_cpp")

from llmlab.agents.evaluate import EvalAnswersConfig, evaluate_answers
from llmlab.runtime.batched import Batcher
from llmlab.store import Store

QUESTIONS = [
    {"question": "Where does Bodo Trastel live?", "answer": "Dunmere", "gold_doc": "bodo.md"},
    {"question": "What is the job of Bodo Trastel?", "answer": "baker", "gold_doc": "bodo.md"},
    {"question": "In which country is the town Dunmere?", "answer": "Kelvia", "gold_doc": "dunmere.md"},
    {"question": "Which river does Dunmere stand on?", "answer": "Asel", "gold_doc": "dunmere.md"},
    {"question": "What does Mira Vell keep at home?", "answer": "goat", "gold_doc": "mira.txt"},
    {"question": "Which colour does Mira Vell like best?", "answer": "teal", "gold_doc": "mira.txt"},
    {"question": "Where was Quentin Zarabel born?", "answer": "Oslo"},  # nothing relevant: retried, refused
    {"question": "What does Bodo Trastel bake in Dunmere?", "answer": "bread", "gold_doc": "bodo.md"},
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, micro_gguf, micro_model_dir: Path, docs_folder: Path) -> Path:
    """A folder with a store (the micro model as F32 GGUF ``micro-f32`` and as transformers ``micro``, a real
    index ``docs`` of three documents), a spec answering with the model (check off) and the questions."""
    pytest.importorskip("llmlab.rag.search")
    from llmlab.rag.index import IndexConfig, build_index

    root = tmp_path_factory.mktemp("agents-batched")
    store = Store(root / "models")
    store.add(micro_gguf("f32"), "micro-f32")
    store.add(micro_model_dir, "micro")
    build_index(IndexConfig(name="docs", source=str(docs_folder)), store=store)
    spec = {"name": "batched", "model": {"artifact": "micro-f32", "max_tokens": 12, "temperature": 1.0},
            "retriever": {"index": "docs", "k": 2}, "nodes": {"check": {"use": "off"}},
            "prompts": {"system": "Answer with one word from the sources.", "closed_book": "Answer with one word."}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    (root / "qs.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root


def _config(home: Path, **kw) -> EvalAnswersConfig:
    return EvalAnswersConfig(spec=str(home / "spec.yaml"), questions=str(home / "qs.jsonl"), show=len(QUESTIONS), **kw)


def _rows(report: dict) -> list:
    return report["retrieval"]["examples"] + report["closed_book"]["examples"]


def _figures(report: dict) -> dict:
    return {part: {k: v for k, v in report[part].items() if k not in ("examples", "seconds_per_question")}
            for part in ("retrieval", "closed_book")}


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


def test_runtime_chat_model_through_a_batcher_gives_the_same_reply(micro_gguf) -> None:
    from llmlab.agents.chat_model import RuntimeChatModel
    from llmlab.errors import ConfigError
    from llmlab.runtime import load

    with load(micro_gguf("f32")) as model:
        llm = RuntimeChatModel(model=model, max_tokens=12, temperature=1.0)
        alone = llm.invoke("Where does Bodo Trastel live?")
        with Batcher(model, slots=2) as batcher:
            together = llm.batched(batcher).invoke("Where does Bodo Trastel live?")
            with pytest.raises(ConfigError, match="another model"):
                RuntimeChatModel(model=SimpleNamespace()).batched(batcher)
    assert together.content == alone.content and alone.content.strip()
    assert together.usage_metadata == alone.usage_metadata


def test_batched_evaluation_answers_as_one_at_a_time(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(home / "models")
    in_turn = evaluate_answers(_config(home, concurrency=1), store=store)

    # the first two generations wait for each other: only questions asked side by side get past this
    meet, calls, lock = threading.Barrier(2, timeout=30), [0], threading.Lock()
    original = Batcher.stream_chat

    def counted(self, messages, params=None, **kw):
        with lock:
            calls[0] += 1
            first = calls[0] <= 2
        if first:
            meet.wait()
        yield from original(self, messages, params, **kw)

    monkeypatch.setattr(Batcher, "stream_chat", counted)
    events: list[dict] = []
    batched = evaluate_answers(_config(home, concurrency=4), store=store, progress=events.append)

    assert (in_turn["concurrency"], batched["concurrency"]) == (1, 4)
    assert not meet.broken  # questions really were generated side by side
    assert _rows(batched) == _rows(in_turn)  # the same answers and scores, row by row, in question order
    assert _figures(batched) == _figures(in_turn)
    assert [r["question"] for r in batched["retrieval"]["examples"]] == [q["question"] for q in QUESTIONS]
    answered = [r["answer"] for r in in_turn["retrieval"]["examples"] if not r["refused"]]
    assert len(set(answered)) > 1 and len({r["answer"] for r in in_turn["closed_book"]["examples"]}) > 1
    assert batched["retrieval"]["refused"] > 0  # the unknown name: refused without the model
    assert [e["done"] for e in events if e["type"] == "progress"] == list(range(1, len(QUESTIONS) + 1))
    assert not _threads("llmlab-batcher") and not _threads("llmlab-eval")


def test_a_model_that_cannot_batch_asks_one_at_a_time(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **kw):
        raise AssertionError("a transformers model must not get a Batcher")

    monkeypatch.setattr("llmlab.runtime.batched.Batcher", refuse)
    report = evaluate_answers(_config(home, concurrency=4, model="micro", limit=3), store=Store(home / "models"))
    assert report["concurrency"] == 1 and report["retrieval"]["n"] == 3


class FailingSearcher:
    """Finds Bodo's document, and fails on any question about Mira."""

    def search(self, query: str, k: int = 5, mode: str = "hybrid", filters: dict | None = None) -> list:
        from llmlab.rag.search import Hit

        if "Mira" in query:
            raise RuntimeError("the index went away")
        return [Hit("bodo.md#0", "bodo.md", "Bodo Trastel", "Bodo Trastel lives in Dunmere. Bodo Trastel works as a "
                    "baker.", 1.0)]


@pytest.mark.timeout(120)
def test_a_failing_question_ends_the_batched_evaluation(home: Path) -> None:
    made: list[Batcher] = []

    class Recorded(Batcher):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    import llmlab.runtime.batched as batched_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batched_module, "Batcher", Recorded)
        with pytest.raises(RuntimeError, match="the index went away"):
            evaluate_answers(_config(home, concurrency=4), store=Store(home / "models"), searcher=FailingSearcher())
    assert len(made) == 1
    from llmlab.runtime import SamplingParams
    from llmlab.runtime.batched import Request

    with pytest.raises(RuntimeError, match="closed"):  # closed, its thread gone, no question left running
        made[0].submit(Request([1, 2], SamplingParams.greedy(2)))
    assert not _threads("llmlab-batcher") and not _threads("llmlab-eval")
