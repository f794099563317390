"""GGUF LoRA adapters: a peft adapter on the micro model converted by llama.cpp's converter and
applied to the base GGUF unmerged must behave like the merged model; wrong bases are refused.

The module's store (micro + a random LoRA adapter + its conversion) is built once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmlab import recipes
from llmlab.quantize import adapter as gguf_adapter
from llmlab.errors import ConfigError
from llmlab.quantize.adapter import GGUFAdapterConfig, convert_adapter
from llmlab.store import Parent, Store

pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

PROMPT = "Once upon a time"


def _write_adapter(store: Store, name: str, folder: Path, base: str, **config_changes: object) -> None:
    with store.write(name, "adapter") as w:
        for f in folder.iterdir():
            shutil.copy(f, w.path / f.name)
        if config_changes:
            cfg = json.loads((w.path / "adapter_config.json").read_text())
            (w.path / "adapter_config.json").write_text(json.dumps({**cfg, **config_changes}))
        b = store.get(base)
        w.parents = [Parent(name=b.name, content_hash=b.content_hash, role="base")]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> Store:
    """micro, micro-lora (random rank-8 LoRA on every linear layer) and micro-lora-gguf (+ micro-f16)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tmp_path_factory.mktemp("gguf-adapter")
    store = Store(tmp / "models")
    store.add(micro_model_dir, "micro")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # random but moderate: the adapter must change outputs without wrecking them
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.05)
    peft_model.save_pretrained(tmp / "lora")
    AutoTokenizer.from_pretrained(micro_model_dir).save_pretrained(tmp / "lora")
    _write_adapter(store, "micro-lora", tmp / "lora", "micro")
    convert_adapter(GGUFAdapterConfig(adapter="micro-lora"), store=store)
    return store


def test_adapter_artifact_and_lineage(adapted: Store):
    art = adapted.get("micro-lora-gguf")
    assert art.kind == "gguf-adapter" and adapted.get("micro-f16").kind == "gguf"
    roles = {p.role: p.name for p in art.manifest.parents}
    assert roles == {"adapter": "micro-lora", "base": "micro-f16"}
    assert art.manifest.info["rank"] == 8 and art.manifest.info["alpha"] == 16
    from llmlab.quantize import gguf

    header = gguf.read_header(art.file(".gguf"))
    assert header["type"] == "adapter" and header["metadata"]["adapter.lora.alpha"] == 16


def test_unmerged_adapter_matches_the_merged_model(adapted: Store):
    from llmlab.runtime import SamplingParams, load

    with load("micro-lora-gguf", store=adapted) as lora, load("micro-lora", store=adapted) as merged, \
            load("micro-f16", store=adapted) as base:
        assert lora.engine == "llama.cpp" and merged.engine == "transformers"
        assert lora.info["lora_path"].endswith("adapter.gguf")
        ids = lora.tokenize(PROMPT * 4, add_special=True)
        assert ids == merged.tokenize(PROMPT * 4, add_special=True)
        got, want, plain = lora.logprobs(ids), merged.logprobs(ids), base.logprobs(ids)
        p = np.exp(want)
        kld = (p * (want - got)).sum(-1)
        kld_base = (p * (want - plain)).sum(-1)
        assert kld.mean() < 1e-3, kld.mean()
        assert kld_base.mean() > 20 * kld.mean()  # the adapter really changes the model
        greedy = SamplingParams.greedy(16)
        assert lora.complete(PROMPT, greedy) == merged.complete(PROMPT, greedy)


def test_adapter_for_another_base_is_refused(adapted: Store, micro_model_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    shutil.copytree(micro_model_dir, other)
    (other / "generation_config.json").write_text('{"max_length": 99}')  # same shapes, another model
    adapted.add(other, "other")
    with adapted.write("other-f16", "gguf") as w:
        shutil.copy(adapted.get("micro-f16").file(".gguf"), w.path / "other-f16.gguf")
        o = adapted.get("other")
        w.parents = [Parent(name="other", content_hash=o.content_hash, role="source")]
    before = sorted(a.name for a in adapted.list())
    with pytest.raises(ConfigError, match="trained on 'micro'.*made from 'other'"):
        convert_adapter(GGUFAdapterConfig(adapter="micro-lora", base="other-f16", name="x"), store=adapted)
    assert sorted(a.name for a in adapted.list()) == before
    assert not list((adapted.root / ".tmp").glob("*"))
    with pytest.raises(ConfigError, match="gguf-adapter converts LoRA adapters"):
        convert_adapter(GGUFAdapterConfig(adapter="micro", name="x"), store=adapted)


def test_unsupported_adapters_are_refused(adapted: Store):
    folder = adapted.get("micro-lora").path
    lora_files = folder.parent / "lora-files"
    lora_files.mkdir(exist_ok=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(folder / f, lora_files / f)
    _write_adapter(adapted, "micro-dora", lora_files, "micro", use_dora=True)
    with pytest.raises(ConfigError, match="DoRA"):
        convert_adapter(GGUFAdapterConfig(adapter="micro-dora"), store=adapted)
    assert not adapted.exists("micro-dora-gguf")


def test_shape_mismatch_is_named(adapted: Store, monkeypatch: pytest.MonkeyPatch):
    from llmlab.quantize import gguf

    shapes = {"lora.gguf": {"blk.0.attn_q.weight.lora_a": [256, 8], "blk.0.attn_q.weight.lora_b": [8, 256]},
              "base.gguf": {"blk.0.attn_q.weight": [512, 512]}}
    monkeypatch.setattr(gguf, "tensor_shapes", lambda p: shapes[Path(p).name])
    with pytest.raises(ConfigError, match=r"'blk.0.attn_q.weight.lora_a' has shape \[256, 8\]"):
        gguf_adapter.check_shapes(Path("lora.gguf"), Path("base.gguf"))


def test_runtime_refuses_swapped_files(adapted: Store):
    from llmlab.runtime import load

    base, lora = adapted.get("micro-f16").file(".gguf"), adapted.get("micro-lora-gguf").file(".gguf")
    with pytest.raises(ConfigError, match="is a LoRA adapter, not a model"):
        load(lora)
    with pytest.raises(ConfigError, match="is not a LoRA adapter"):
        load(base, lora_path=base)


def test_recipe_step():
    step = recipes.make_step("gguf-adapter", {"adapter": "demo-lora"})
    assert step.output_names() == ["demo-lora-gguf"] and step.input_names() == ["demo-lora"]
    step = recipes.make_step("gguf-adapter", {"adapter": "demo-lora", "base": "demo-q4_k_m", "name": "a"})
    assert step.output_names() == ["a"] and step.input_names() == ["demo-lora", "demo-q4_k_m"]
    with pytest.raises(ConfigError, match="unknown key 'scale'"):
        recipes.make_step("gguf-adapter", {"adapter": "demo-lora", "scale": 2})
