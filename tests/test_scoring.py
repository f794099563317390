"""The scorer: perplexity, KL/top-1, accuracy, speed, memory, and writing metrics to the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmlab import scoring
from llmlab.errors import ConfigError
from llmlab.runtime import load

TEXTS = ["Once upon a time there was a little town by the sea.",
         "The baker made bread every morning before the sun came up, and the children came to buy it."] * 3
QA = [{"question": "Where does Ada Voss live?", "answer": "Dunmere"},
      {"question": "What does Ada Voss do?", "answer": "baker"}]




@pytest.fixture(scope="module")
def hf(micro_model_dir: Path):
    with load(micro_model_dir) as m:
        yield m


def test_answer_matches():
    assert scoring.answer_matches("Dunmere, I think.", "Dunmere")
    assert scoring.answer_matches("  the Red  house", "The red house!")
    assert not scoring.answer_matches("Dun", "Dunmere")
    assert not scoring.answer_matches("anything", "")


@pytest.mark.parametrize("n,max_len,stride", [(10, 4, 2), (100, 16, 16), (7, 32, 8), (50, 8, 1)])
def test_windows_score_every_token_once(n: int, max_len: int, stride: int):
    seen = []
    for begin, end, first in scoring._windows(n, max_len, stride):
        assert end - begin <= max_len and begin < first <= end
        seen += range(first, end)
    assert seen == list(range(1, n))


def test_perplexity_is_sane_and_window_independent(hf):
    full = scoring.perplexity(hf, TEXTS, max_len=256)
    slid = scoring.perplexity(hf, TEXTS, max_len=32, stride=16)
    assert full["tokens"] == slid["tokens"] > 50
    assert 1 < full["ppl"] < hf.vocab_size
    assert abs(slid["ppl"] / full["ppl"] - 1) < 0.25  # less context, similar ballpark


def test_compare_with_itself(hf):
    r = scoring.compare(hf, hf, TEXTS, max_len=64)
    assert r["kld_mean"] < 1e-6 and r["top1"] == 1.0 and r["tokens"] > 50


class _Other:
    vocab_size = 7
    path = Path("other")


def test_compare_refuses_other_tokenizer(hf):
    with pytest.raises(ConfigError, match="vocabulary sizes differ"):
        scoring.compare(hf, _Other(), TEXTS)  # type: ignore[arg-type]


def test_accuracy_and_speed(hf):
    r = scoring.accuracy(hf, QA, show=1)
    assert r["n"] == 2 and 0 <= r["accuracy"] <= 1 and len(r["examples"]) == 1
    assert set(r["examples"][0]) == {"question", "gold", "got", "ok"}
    s = scoring.speed(hf, prompt_tokens=16, gen_tokens=4, repeats=1)
    assert s["gen_tok_s"] > 0 and s["prompt_tok_s"] > 0 and s["ttft_ms"] > 0


def test_peak_memory_sees_an_allocation(resident_block):
    with scoring.peak_memory() as pm:
        block = resident_block(64)
    block.close()
    assert pm.peak_mb - pm.start_mb > 40


def test_score_writes_metrics(micro_model_dir: Path, store):
    store.add(micro_model_dir, "micro")
    events = []
    m = scoring.score("micro", store=store, data=TEXTS, qa=QA, reference="micro", data_label="unit",
                      prompt_tokens=16, gen_tokens=4, repeats=1, progress=events.append)
    saved = json.loads((store.get("micro").path / "metrics.json").read_text())
    for key in ("ppl", "accuracy", "gen_tok_s", "size_bytes", "peak_rss_mb", "scored_at", "kld_mean", "top1"):
        assert key in m and saved[key] == m[key]
    assert saved["ppl_data"]["label"] == "unit" and saved["kld_reference"] == "micro"
    assert {e["task"] for e in events if e["type"] == "progress"} >= {"perplexity", "compare", "accuracy", "speed"}
    # speed depends on what else the machine runs: when it was measured and the load average then
    assert saved["measured_at"] <= saved["scored_at"] and saved["load_avg"] >= 0
    assert "measured_at" not in scoring.score("micro", store=store, data=TEXTS, speed_test=False)


def test_digest_tells_texts_and_questions_apart():
    assert scoring.digest(["a", "b"]) == scoring.digest(["a", "b"]) != scoring.digest(["ab"])
    assert scoring.digest(QA) != scoring.digest(QA[:1]) and scoring.digest(None) is None


# ----- HF vs GGUF -----
def test_hf_and_gguf_f32_agree(hf, micro_gguf):
    with load(micro_gguf("f32")) as cpp:
        a = scoring.perplexity(hf, TEXTS, max_len=64)
        b = scoring.perplexity(cpp, TEXTS, max_len=64)
        assert a["tokens"] == b["tokens"] and abs(b["ppl"] / a["ppl"] - 1) < 0.01
        r = scoring.compare(cpp, hf, TEXTS, max_len=64)
        assert r["kld_mean"] < 1e-5 and r["top1"] > 0.99


def test_f16_close_to_f32(micro_gguf):
    with load(micro_gguf("f32")) as f32, \
            load(micro_gguf("f16")) as f16:
        r = scoring.compare(f16, f32, TEXTS, max_len=64)
        assert 0 <= r["kld_mean"] < 1e-3 and r["top1"] > 0.95


def test_score_step_uses_the_world(micro_model_dir: Path, store):
    import shutil

    with store.write("m", "base") as w:
        shutil.copytree(micro_model_dir, w.path, dirs_exist_ok=True)
    m = scoring.score_step(scoring.ScoreConfig(model="m", qa_limit=3, speed=False), store=store)
    assert m["ppl"] > 1 and m["ppl_data"]["label"] == "world" and m["accuracy_n"] == 3
    assert "gen_tok_s" not in m and store.get("m").metrics["ppl"] == m["ppl"]


def test_a_model_without_a_world_is_scored_on_the_shipped_prose(micro_model_dir: Path, store):
    # No flags, no demo world: perplexity on the public-domain prose llmlab ships, the world's
    # questions skipped with a log line, and the step ends well (it used to end with an error).
    from llmlab.data import prose_text

    store.add(micro_model_dir, "plain")
    logs: list[str] = []
    m = scoring.score_step(scoring.ScoreConfig(model="plain", speed=False), store=store,
                           progress=lambda e: logs.append(e.get("message", "")))
    assert m["ppl_data"]["label"] == "prose" and m["ppl"] > 1 and "accuracy" not in m
    assert any("no demo world" in line for line in logs)
    assert "Four score and seven years ago" in prose_text()
    # bounded by tokens: a limit under the prose's length scores exactly that many tokens (minus the first)
    m = scoring.score_step(scoring.ScoreConfig(model="plain", speed=False, texts_tokens=300), store=store)
    assert m["ppl_tokens"] == 299


def test_evaluation_options_keep_their_former_names():
    # One set of evaluation options (EvalOptions) for score, tune, distill, merge and quantize; the names
    # score and quantize used before still work in recipes and as CLI flags.
    from llmlab.cli.flags import config_from_flags
    from llmlab.cli.parser import build_parser
    from llmlab.merge import MergeConfig
    from llmlab.quantize import QuantizeConfig
    from llmlab.tune import DistillConfig, TuneConfig

    for cls in (scoring.ScoreConfig, TuneConfig, DistillConfig, MergeConfig, QuantizeConfig):
        assert issubclass(cls, scoring.EvalOptions) and {"texts", "texts_limit", "qa", "qa_limit"} <= set(cls.model_fields)
    c = scoring.ScoreConfig.model_validate({"model": "m", "data": "a.txt", "data_limit": 7})
    assert (c.texts, c.texts_limit) == ("a.txt", 7)
    assert QuantizeConfig.model_validate({"model": "m", "eval_data": "b.txt"}).texts == "b.txt"
    # a tune config's "data" is its training data, never its evaluation texts
    t = TuneConfig(name="x", model="m", data="train.jsonl")
    assert (t.data, t.texts) == ("train.jsonl", "auto")
    with pytest.raises(ValidationError, match="Extra inputs"):
        TuneConfig(name="x", model="m", eval_data="x")
    args = build_parser("score").parse_args(["score", "m", "--data", "c.txt", "--qa-limit", "3"])
    assert config_from_flags(args) == {"texts": "c.txt", "qa_limit": 3}
