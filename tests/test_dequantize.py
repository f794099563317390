"""GGUF → trainable (``llmlab.dequantize``): a GGUF dequantized into a base artifact whose tokenizer,
chat template and predictions match the GGUF's; bad inputs refused in one sentence, leaving the store empty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmlab.errors import ConfigError, CorruptFileError, ResourceError, StoreError
from llmlab.store import Store

pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

from llmlab import dequantize as dq  # noqa: E402
from llmlab.dequantize import DequantizeConfig, dequantize  # noqa: E402


def tiny_gguf(path: Path, arch: str, *, kind: str = "model", qtype: str | None = None) -> Path:
    """A small GGUF file written with gguf-py: ``arch`` as its architecture, ``kind`` as general.type, and
    one tensor stored as ``qtype`` (raw bytes of one block) when given, else float32."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_type(kind)
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float32))
    if qtype is not None:
        t = GGMLQuantizationType[qtype]
        w.add_tensor("blk.0.attn_k.weight", np.zeros((1, GGML_QUANT_SIZES[t][1]), dtype=np.uint8), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def names(store: Store) -> list[str]:
    return sorted(a.name for a in store.list())


# ----- the micro model -----
def test_micro_f16_becomes_a_trainable_base_with_lineage_and_checks(micro_gguf, store):
    events = []
    gguf = micro_gguf("f16")
    art = dequantize(DequantizeConfig(model=str(gguf), name="micro-hf"), store=store, progress=events.append)

    assert art.kind == "base" and names(store) == ["micro-f16", "micro-hf"]
    src = store.get("micro-f16")
    assert src.kind == "gguf"
    assert [(p.name, p.content_hash, p.role) for p in art.manifest.parents] == [("micro-f16", src.content_hash, "source")]
    info = art.manifest.info
    assert info["source_file_type"] == "F16" and info["source_arch"] == "llama"
    assert info["architecture"] == "LlamaForCausalLM" and info["params"] == 1_049_344
    checks = info["checks"]
    assert checks["tokenizer_parity"]["match"] is True
    assert set(checks["tokenizer_parity"]["samples"]) == {"prose", "code", "numbers", "unicode", "whitespace", "chat"}
    assert checks["chat_template_kept"] is True
    assert (art.path / "chat_template.jinja").read_text() == store.get("micro-f16").manifest.info["chat_template"]
    cmp = checks["compare"]
    assert cmp["top1"] > 0.95 and cmp["kld_mean"] < 1e-3 and 500 <= cmp["tokens"] <= 1100
    assert art.metrics["top1"] == cmp["top1"]
    assert store.verify("micro-hf") == []
    # progress: the stages in order, the comparison's own bars, the figures as a metric event
    stages = [e["stage"] for e in events if e["type"] == "progress" and e["task"] == "dequantize"]
    assert stages == ["check", "dequantize", "save", "tokenizer", "compare", "done"]
    assert any(e["type"] == "progress" and e["task"] == "compare" for e in events)
    assert any(e["type"] == "metric" and e["top1"] == cmp["top1"] for e in events)

    # trainable: one optimizer step on a sentence lowers its loss
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(art.path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(art.path)
    batch = tok("Bodo Trastel lives in Dunmere. Bodo Trastel works as a baker.", return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert np.isfinite(losses).all() and losses[2] < losses[0]

    # and the runtime runs it
    from llmlab import runtime

    with runtime.load("micro-hf", store=store) as m:
        assert m.engine == "transformers" and m.logprobs(m.tokenize("Bodo", add_special=True)).shape[1] == m.vocab_size


def test_recipe_step_on_a_gguf_artifact_and_the_cli(micro_gguf, store, capsys):
    from llmlab import recipes
    from llmlab.cli import main

    store.add(micro_gguf("f16"), "m16")
    step = recipes.make_step("dequantize", {"model": "m16", "compare_tokens": 200})
    assert step.input_names() == ["m16"] and step.output_names() == ["m16-hf"]
    result = recipes.run(recipes.Recipe(name="dq", steps=[step]), store=store, track=False)[0]
    assert result.status == "done" and result.metrics["top1"] > 0.95
    art = store.get("m16-hf")
    assert art.manifest.parents[0].name == "m16" and art.manifest.step.kind == "dequantize"
    assert recipes.run(recipes.Recipe(name="dq", steps=[step]), store=store, track=False)[0].status == "skipped"

    # `llmlab models add FILE.gguf --dequantize`: the file imported as gguf, the base beside it, checks printed
    home = ["--home", str(store.root)]
    gguf = micro_gguf("f16")
    assert main([*home, "models", "add", str(gguf), "--dequantize", "--name", "tuneable",
                 "--compare-tokens", "200"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer parity: identical" in out and "chat template: kept" in out and "top-1 agreement" in out
    assert "added tuneable (base" in out
    assert store.get("tuneable").manifest.parents[0].name == "micro-f16"
    assert main([*home, "models", "add", str(gguf), "--dequantize", "--kind", "base"]) == 2
    assert "--kind" in capsys.readouterr().err


def test_a_tokenizer_that_differs_from_llama_cpp_is_refused_and_nothing_is_left(micro_gguf, store, monkeypatch):
    """The saved tokenizer loses its BPE merges: it then splits words into more tokens than llama.cpp."""
    save_plain = dq.save_plain

    def broken(model, tokenizer, template, folder):
        facts = save_plain(model, tokenizer, template, folder)
        data = json.loads((folder / "tokenizer.json").read_text())
        data["model"]["merges"] = []
        (folder / "tokenizer.json").write_text(json.dumps(data))
        return facts

    monkeypatch.setattr(dq, "save_plain", broken)
    with pytest.raises(ConfigError, match="encodes the prose sample differently from llama.cpp"):
        dequantize(DequantizeConfig(model=str(micro_gguf("f16"))), store=store)
    assert names(store) == []  # neither the base nor the GGUF imported for it
    assert sorted(p.name for p in store.root.iterdir() if p.name != ".locks" and any(p.iterdir())) == []


# ----- bad input: one sentence each, nothing in the store -----
def test_unknown_architecture_is_named(tmp_path, store):
    path = tiny_gguf(tmp_path / "odd.gguf", "frobnicator")
    with pytest.raises(ConfigError) as e:
        dequantize(DequantizeConfig(model=str(path)), store=store)
    assert "architecture 'frobnicator'" in e.value.message and "cannot read" in e.value.message
    assert "llama" in e.value.hint and "general" not in e.value.hint
    assert names(store) == []


def test_undequantizable_tensor_type_is_named(tmp_path, store):
    assert dq.undequantizable_types({"F32": 1, "F16": 1, "Q4_1": 1, "Q4_K": 1, "Q8_K": 1, "NOPE": 1}) == ["Q8_K", "NOPE"]
    path = tiny_gguf(tmp_path / "q8k.gguf", "llama", qtype="Q8_K")
    with pytest.raises(ConfigError, match="stores tensors as Q8_K, which transformers cannot dequantize"):
        dequantize(DequantizeConfig(model=str(path)), store=store)
    assert names(store) == []


def test_not_a_gguf_file(tmp_path, store):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(2000))
    with pytest.raises(CorruptFileError, match="is not a GGUF file"):
        dequantize(DequantizeConfig(model=str(path)), store=store)
    assert names(store) == []


def test_adapter_gguf_is_refused(tmp_path, store):
    path = tiny_gguf(tmp_path / "lora.gguf", "llama", kind="adapter")
    with pytest.raises(ConfigError, match="is a LoRA adapter GGUF, not a model"):
        dequantize(DequantizeConfig(model=str(path)), store=store)
    store.add(path, "lora")  # as an artifact it is a gguf-adapter, refused by kind
    with pytest.raises(ConfigError, match="is a gguf-adapter artifact"):
        dequantize(DequantizeConfig(model="lora"), store=store)
    assert names(store) == ["lora"]


def test_too_large_for_memory_is_refused_with_numbers(micro_gguf, store, monkeypatch):
    import psutil

    class Memory:
        available = 4_000_000  # 4 MB

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    gguf = micro_gguf("f16")
    with pytest.raises(ResourceError) as e:  # 1,049,344 parameters x 4 bytes x 2 copies while loading
        dequantize(DequantizeConfig(model=str(gguf), compare_tokens=0), store=store)
    assert "needs about 8 MB" in e.value.message and "only 4 MB is available" in e.value.message
    assert "1,049,344 parameters" in e.value.message
    # comparing adds the logits: 512 tokens x 512 words x 4 bytes x 20, beside the weights and the file
    need = dq.memory_needed(gguf, dq.check_gguf(gguf, available=10**12), 1024)
    assert need == 1_049_344 * 4 + gguf.stat().st_size + 512 * 512 * 4 * 20
    with pytest.raises(ResourceError, match=f"needs about {need / 2**20:,.0f} MB of RAM"):
        dequantize(DequantizeConfig(model=str(gguf)), store=store)
    assert names(store) == []


def test_existing_name_with_another_file_is_refused(micro_gguf, tmp_path, store):
    other = tiny_gguf(tmp_path / "micro-f16.gguf", "llama")
    store.add(other, "micro-f16")
    with pytest.raises(StoreError, match="already exists and is not this file"):
        dequantize(DequantizeConfig(model=str(micro_gguf("f16"))), store=store)
    assert names(store) == ["micro-f16"]


# ----- the real model -----
@pytest.mark.slow
def test_smollm2_q4_1_dequantized_keeps_tokenizer_template_and_answers(smollm2_gguf, store):
    from llmlab import runtime
    from llmlab.runtime import SamplingParams

    art = dequantize(DequantizeConfig(model=str(smollm2_gguf), name="smollm2", compare_tokens=512), store=store)
    info = art.manifest.info
    assert info["source_file_type"] == "Q4_1" and info["architecture"] == "LlamaForCausalLM"
    assert info["tied_embeddings"] is True and 134_000_000 < info["params"] < 135_000_000
    assert "lm_head.weight" not in json.dumps(art.manifest.files)  # only the safetensors file, tied once
    assert info["checks"]["tokenizer_parity"]["match"] is True
    assert info["checks"]["chat_template_kept"] is True
    assert "<|im_start|>" in (art.path / "chat_template.jinja").read_text()
    assert info["checks"]["compare"]["top1"] >= 0.9 and info["checks"]["compare"]["kld_mean"] < 0.05
    with runtime.load(art, store=store) as m:
        assert m.engine == "transformers"
        answer = m.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams.greedy(max_tokens=16))
    assert "Paris" in answer
