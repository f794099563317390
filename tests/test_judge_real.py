"""The real model SmolLM2-135M-Instruct (Q4_1 GGUF, llama.cpp) as the LLM judge on SQuAD answers:
its agreement with exact match is computed over a mix of right and wrong answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmlab.data import load_public
from llmlab.evaluate.agreement import judged_set, measure_judge

N = 12


@pytest.fixture(scope="module")
def squad_questions() -> list[dict]:
    try:
        return load_public("squad-questions", limit=40)
    except Exception as e:  # noqa: BLE001  (the shared data is not on every machine)
        pytest.skip(f"SQuAD dev questions are not available: {e}")


def test_smollm2_judge_kappa_on_squad(smollm2_gguf: Path, squad_questions: list[dict]) -> None:
    records = judged_set(squad_questions, n=N)
    assert {r["exact_match"] for r in records} == {True, False}
    result = measure_judge(smollm2_gguf, records, mode="check")
    assert result["n"] == N and result["n_asked"] == N and result["positives"] == N // 2
    assert result["judge"].endswith("+constrained") and result["model"] == str(smollm2_gguf)
    assert result["kappa"] is None or -1.0 <= result["kappa"] <= 1.0
    assert 0.0 <= result["agreement"] <= 1.0 and result["trusted"] == ((result["kappa"] or 0) >= 0.4)
    assert all(v["passed"] in (True, False) for v in result["verdicts"])
    if os.environ.get("LLMLAB_SHOW_KAPPA"):
        print(result["kappa"], result["agreement"], result["pass_rate"])
