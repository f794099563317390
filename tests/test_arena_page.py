"""The Arena page through AppTest: two real variants answer blind ("Model A", "Model B" in a random order),
a vote is stored against the variants behind the labels (whichever order they were shown in), the names
are revealed and the question stays after the vote; "Ask again" starts a new blind round; ratings sit
beside scores; the system prompt is empty by default."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from apptest import open_page, texts  # noqa: E402
from test_evaluate import make_variants  # noqa: E402

import llmlab.evaluate.arena as arena_module  # noqa: E402
from llmlab.evaluate import EvaluateConfig, evaluate  # noqa: E402
from llmlab.evaluate.arena import Arena  # noqa: E402
from llmlab.store import Store  # noqa: E402

PAGE = "views/arena.py"


def test_needs_two_models(empty_home: Store) -> None:
    at = open_page(PAGE)
    assert "needs at least two models" in texts(at) and "No votes yet." in texts(at)


class Order(random.Random):
    """Shuffles nothing, or reverses: the blind order a test wants."""

    def __init__(self, swap: bool) -> None:
        super().__init__()
        self.swap = swap

    def shuffle(self, x: list) -> None:  # type: ignore[override]
        if self.swap:
            x.reverse()


def headings(at) -> list[str]:  # noqa: ANN001
    return [m.value for m in at.markdown if m.value.startswith("**Model") or m.value.startswith("**micro")]


@pytest.mark.parametrize("swap", [False, True], ids=["as-chosen", "swapped"])
def test_blind_vote_reveals_names_and_keeps_the_question(tmp_path: Path, micro_model_dir: Path, micro_gguf,
                                                         monkeypatch: pytest.MonkeyPatch, swap: bool) -> None:
    store = make_variants(tmp_path / "models", micro_model_dir, micro_gguf("f16"), broken=False)
    evaluate(EvaluateConfig(models=["micro"], tasks=[], track=False), store=store)  # default-suite ppl
    monkeypatch.setenv("LLMLAB_HOME", str(store.root))
    original = arena_module.blind_labels
    monkeypatch.setattr(arena_module, "blind_labels", lambda names, rng=None: original(names, Order(swap)))
    at = open_page(PAGE)
    assert at.toggle(key="arena:blind").value is True
    assert at.text_input(key="arena:system").value == ""  # no "Answer with one word."
    assert "chat template default" in at.text_input(key="arena:system").placeholder
    chosen = at.multiselect(key="arena:variants").value
    at.number_input(key="arena:n").set_value(6)  # max new tokens, from widgets.sampling_controls
    at.chat_input(key="arena:prompt").set_value("Where is Graevom?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert headings(at) == ["**Model A**", "**Model B**"], "blind: no names before the vote"
    assert not any(name in texts(at) for name in ("micro-f16**", "**micro**"))
    winner = chosen[1] if swap else chosen[0]  # the variant shown as Model A
    at.button(key="arena:vote:Model A").click().run()
    assert not at.exception, [e.value for e in at.exception]
    votes = Arena(store).votes()
    assert len(votes) == 1 and votes[0]["prompt"] == "Where is Graevom?"
    assert votes[0][votes[0]["outcome"]] == winner and votes[0]["answer_a"] is not None
    loser = next(n for n in chosen if n != winner)
    assert headings(at) == [f"**Model A: {winner}**", f"**Model B: {loser}**"], "names revealed after voting"
    assert "Where is Graevom?" in texts(at), "the question stays"
    assert [s.value for s in at.success] == [
        f"Your vote: Model A is better. Model A is {winner}; Model B is {loser}."]
    assert not [b for b in at.button if b.key and b.key.startswith("arena:vote:")], "one vote per round"
    table = at.dataframe[0].value
    assert list(table["name"]) == [winner, loser] and list(table["games"]) == [1, 1]
    assert table.set_index("name")["elo"][winner] == 1016.0
    assert {"perplexity", "accuracy (heldout)", "size (MB)"} <= set(table.columns)  # as on every page
    assert "1 pairwise votes" in texts(at)
    at.button(key="arena:reask").click().run()  # the same question again: a new round, a new vote
    assert not at.exception, [e.value for e in at.exception]
    assert headings(at) == ["**Model A**", "**Model B**"]
    assert "Which answer to *Where is Graevom?* is better?" in texts(at)
    at.button(key="arena:vote:tie").click().run()
    assert [v["outcome"] for v in Arena(store).votes()] == ["a", "tie"]  # a: the left column, Model A
    assert len(Arena(store).votes()) == 2 and "2 pairwise votes" in texts(at)


def test_open_mode_names_the_variants(tmp_path: Path, micro_model_dir: Path, micro_gguf,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_variants(tmp_path / "models", micro_model_dir, micro_gguf("f16"), broken=False)
    monkeypatch.setenv("LLMLAB_HOME", str(store.root))
    at = open_page(PAGE)
    at.toggle(key="arena:blind").set_value(False)
    at.number_input(key="arena:n").set_value(4)
    at.chat_input(key="arena:prompt").set_value("Where is Graevom?").run()
    chosen = at.multiselect(key="arena:variants").value
    assert headings(at) == [f"**{n}**" for n in chosen]
    at.button(key="arena:vote:micro-f16").click().run()
    assert not at.exception, [e.value for e in at.exception]
    votes = Arena(store).votes()
    assert votes[0][votes[0]["outcome"]] == "micro-f16"
    assert [s.value for s in at.success] == ["Your vote: micro-f16 is better."]


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
