"""The Arena page through AppTest: two real variants answer, a vote is stored, ratings sit beside scores."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from apptest import open_page, texts  # noqa: E402
from test_evaluate import make_variants  # noqa: E402

from llmlab.evaluate import EvaluateConfig, evaluate  # noqa: E402
from llmlab.evaluate.arena import Arena  # noqa: E402
from llmlab.store import Store  # noqa: E402

PAGE = "views/arena.py"


def test_needs_two_models(empty_home: Store) -> None:
    at = open_page(PAGE)
    assert "needs at least two models" in texts(at) and "No votes yet." in texts(at)


def test_side_by_side_vote_and_ratings(tmp_path: Path, micro_model_dir: Path, micro_gguf,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_variants(tmp_path / "models", micro_model_dir, micro_gguf("f16"), broken=False)
    evaluate(EvaluateConfig(models=["micro"], tasks=[], track=False), store=store)  # default-suite ppl, cached
    monkeypatch.setenv("LLMLAB_HOME", str(store.root))
    at = open_page(PAGE)
    at.number_input(key="arena:n").set_value(6)  # max new tokens, from widgets.sampling_controls
    at.chat_input(key="arena:prompt").set_value("Where is Graevom?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(m.value for m in at.markdown if m.value.startswith("**micro")) == ["**micro**", "**micro-f16**"]
    at.button(key="arena:vote:micro-f16").click().run()
    assert not at.exception
    votes = Arena(store).votes()
    assert len(votes) == 1 and votes[0]["prompt"] == "Where is Graevom?"
    assert votes[0][votes[0]["outcome"]] == "micro-f16" and votes[0]["answer_a"] is not None
    table = at.dataframe[0].value
    assert list(table["name"]) == ["micro-f16", "micro"] and list(table["games"]) == [1, 1]
    assert table.set_index("name")["elo"]["micro-f16"] == 1016.0
    assert "ppl" in table.columns
    assert "1 pairwise votes" in texts(at)


def test_judge_kappa_warning(tmp_path: Path, micro_model_dir: Path, micro_gguf,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.evaluate.agreement import save_agreement

    store = make_variants(tmp_path / "models", micro_model_dir, micro_gguf("f16"), broken=False)
    save_agreement(store, {"model": "micro", "judge": "llmlab:micro+constrained", "kappa": 0.12, "n": 100})
    monkeypatch.setenv("LLMLAB_HOME", str(store.root))
    at = open_page(PAGE)
    at.selectbox(key="arena:judge").set_value("micro").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning] == [
        "The judge micro: the judge agrees with exact match at kappa 0.12 (n=100): too low to trust its scores "
        "(trusted from 0.4)."]
    at.selectbox(key="arena:judge").set_value("micro-f16").run()
    assert not at.warning and "has no measured agreement" in " ".join(i.value for i in at.info)
