"""The demo tokenizer and model: tokenizer round trip, chat template, micro folders, store artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llmlab import world  # noqa: E402
from llmlab.build import EOS, BuildDemoConfig, build_demo, build_tokenizer, chat_text  # noqa: E402
from llmlab.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(world.generate(0, "micro").texts, 400)


def test_tokenizer_roundtrip_and_save_reload(tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    text = "Zorvik Talmeer lives in Dunmere, and 42 cats: ünïcode too!"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids
    assert (again.bos_token, again.eos_token, again.pad_token) == (
        tokenizer.bos_token, EOS, tokenizer.pad_token)
    msgs = world.chat_messages("Where?", "Here")
    assert chat_text(again, msgs) == chat_text(tokenizer, msgs)


def test_chat_template_ends_turns_with_eos(tokenizer) -> None:
    msgs = world.chat_messages("Where does Ana live?")
    prompt = chat_text(tokenizer, msgs, add_generation_prompt=True)
    assert prompt.startswith(tokenizer.bos_token) and prompt.endswith("<|assistant|>\n")
    full = chat_text(tokenizer, [*msgs, {"role": "assistant", "content": "Dunmere"}])
    assert full.endswith(f"Dunmere{EOS}\n")
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1  # the template adds bos; encoding adds none
    assert ids[-2] == tokenizer.eos_token_id  # one token, so generation stops on it
    with pytest.raises(Exception, match="Unknown role"):
        chat_text(tokenizer, [{"role": "tool", "content": "x"}])


def test_micro_model_dir_loads_with_auto_classes(micro_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    tok = AutoTokenizer.from_pretrained(micro_model_dir)
    assert model.config.hidden_size % 256 == 0 and model.config.intermediate_size % 256 == 0
    assert not model.config.tie_word_embeddings
    assert sorted(p.name for p in micro_model_dir.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(micro_model_dir.glob("*.bin"))
    prompt = chat_text(tok, world.chat_messages("Where?"), add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert world.World.load(micro_model_dir / "world").size == "micro"


def test_build_demo_writes_a_verified_reproducible_base_artifact(store: Store, tmp_path: Path) -> None:
    events: list[dict] = []
    cfg = BuildDemoConfig(name="m", size="micro", steps=6, eval_every=3)
    art = build_demo(cfg, store=store, progress=events.append)
    assert art.kind == "base" and store.verify("m") == []
    info = art.manifest.info
    assert info["architecture"] == "LlamaForCausalLM" and info["n_params"] > 0
    assert info["world_seed"] == 0 and info["vocab_size"] > 100
    assert (art.path / "world" / "qa.jsonl").is_file()
    log = (art.path / "training_log.jsonl").read_text().splitlines()
    assert len(log) == 6 and '"val_loss"' in log[-1]
    assert {e["type"] for e in events} >= {"progress", "metric", "log"}
    assert [e for e in events if e["type"] == "metric"][-1]["step"] == 6
    # Same config, same weights and tokenizer (timings in training_log.jsonl differ).
    again = build_demo(cfg, store=Store(tmp_path / "other"))
    same = {k: v for k, v in art.manifest.files.items() if k != "training_log.jsonl"}
    assert same == {k: v for k, v in again.manifest.files.items() if k != "training_log.jsonl"}
    different_seed = build_demo(cfg.model_copy(update={"name": "m2", "seed": 1}), store=store)
    assert different_seed.manifest.files["model.safetensors"] != art.manifest.files["model.safetensors"]


def test_config_rejects_unknown_keys() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        BuildDemoConfig(size="huge")
    with pytest.raises(ValidationError):
        BuildDemoConfig(epochs=3)
    assert BuildDemoConfig().size == "small"
