"""The judged set for a judge's agreement with exact match, the trust warning and the kept results
(fake judges, no model)."""

from __future__ import annotations

import pytest

from llmlab.errors import ConfigError
from llmlab.evaluate.agreement import agreement_for, judge_note, judged_set, measure_judge, save_agreement
from llmlab.evaluate.judge import TRUST_KAPPA, check, trust_warning
from llmlab.store import Store
from test_evaluate_judge import FakeJudge  # noqa: E402  (a judge that replies from a function of the prompt)

QUESTIONS = [{"question": f"Question {i}?", "answers": [f"answer{i}", f"alt{i}"], "gold_passage_id": f"p{i}"}
             for i in range(8)]
PASSAGES = {f"p{i}": f"The passage says answer{i}." for i in range(8)}


def _fair(prompt: str) -> str:
    """Says yes exactly when the answer is the reference (what exact match would say)."""
    ref = prompt.split("Reference answer: ")[1].split("\n")[0].split(" / ")
    answer = prompt.split("\nAnswer: ")[1].split("\n")[0]
    return f"verdict: {'yes' if answer in ref else 'no'}\nreason: compared"


def test_judged_set_mixes_right_and_wrong() -> None:
    recs = judged_set(QUESTIONS, n=10, passages=PASSAGES)
    assert len(recs) == 10
    assert [r["source"] for r in recs[:4]] == ["gold", "other", "gold", "other"]
    assert all(r["exact_match"] == (r["source"] == "gold") for r in recs)
    assert {r["exact_match"] for r in recs} == {True, False}
    assert all(r["f1"] == (1.0 if r["exact_match"] else 0.0) for r in recs)
    assert recs[0]["passage"] == "The passage says answer0." and recs[9]["question"] == "Question 1?"
    assert judged_set(QUESTIONS, n=10, seed=0) == judged_set(QUESTIONS, n=10, seed=0)
    with pytest.raises(ConfigError, match="at least two questions"):
        judged_set(QUESTIONS[:1], n=4)
    with pytest.raises(ConfigError, match="n >= 2"):
        judged_set(QUESTIONS, n=1)


def test_measure_a_fair_and_a_yes_sayer() -> None:
    recs = judged_set(QUESTIONS, n=12)
    fair = measure_judge(FakeJudge(_fair, "fair"), recs)
    assert (fair["kappa"], fair["n"], fair["agreement"], fair["positives"]) == (1.0, 12, 1.0, 6)
    assert fair["trusted"] and fair["warning"] is None and fair["judge"] == "fair" and fair["kappa_f1"] == 1.0
    yes = measure_judge(FakeJudge(lambda p: "verdict: yes"), recs)
    assert yes["kappa"] == 0.0 and yes["agreement"] == 0.5 and not yes["trusted"]  # agreement by chance only
    assert "kappa 0.00 (n=12): too low to trust" in yes["warning"]
    mute = measure_judge(FakeJudge(lambda p: "I cannot say"), recs)
    assert mute["n"] == 0 and mute["n_asked"] == 12 and mute["kappa"] is None
    graded = measure_judge(FakeJudge(lambda p: "score: 5"), recs, mode="grade", show_passage=True)
    assert graded["mode"] == "grade" and graded["pass_rate"] == 1.0


def test_check_prompt_shows_gold_and_passage_only_when_asked() -> None:
    seen: list[str] = []
    judge = FakeJudge(lambda p: seen.append(p) or "verdict: no")
    v = check(judge, "Where?", "Paris", gold=["Paris", "paris"], passage="Paris is in France.")
    assert v.passed is False and v.score is None
    assert "Reference answer: Paris / paris" in seen[0] and "Passage: Paris is in France." in seen[0]
    recs = judged_set(QUESTIONS, n=2, passages=PASSAGES)
    measure_judge(judge, recs, show_gold=False)
    assert "Reference answer" not in seen[-1] and "Passage" not in seen[-1]


def test_trust_warning_and_kept_results(store: Store) -> None:
    assert TRUST_KAPPA == 0.4
    assert trust_warning(0.12, 100) == ("the judge agrees with exact match at kappa 0.12 (n=100): too low to trust "
                                        "its scores (trusted from 0.4)")
    assert trust_warning(0.4, 100) is None and trust_warning(0.9, 10) is None
    assert "undefined" in trust_warning(None, 5)
    assert judge_note(store, "judge-a")[0] == "info" and agreement_for(store, "judge-a") is None
    save_agreement(store, {"model": "judge-a", "judge": "llmlab:judge-a", "kappa": 0.12, "n": 100, "verdicts": []})
    level, sentence = judge_note(store, "judge-a")
    assert level == "warning" and "kappa 0.12 (n=100): too low to trust" in sentence
    assert "verdicts" not in agreement_for(store, "judge-a")
    save_agreement(store, {"model": "judge-a", "judge": "llmlab:judge-a", "kappa": 0.7, "n": 100})
    assert judge_note(store, "judge-a") == ("ok", "The judge judge-a agrees with exact match at kappa 0.70 (n=100).")
