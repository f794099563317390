"""Standard architectures through every station, as a user runs them (issue 17 part 6).

Tiny random Llama, Qwen2 (q/k/v bias), Mistral, Phi-3 (fused qkv_proj and gate_up_proj) and Gemma-2
(soft-capping, tied embeddings) models, built from transformers configs with SmolLM2's real tokenizer
(vocabulary 49,152; hidden 64, 2 layers: a few MB besides the embeddings), each go through the lab's
library API on a real store: import (``store.add``) -> LoRA tune ("all-linear" found per architecture)
-> merge the adapter into its base (``unload``) -> GGUF f16, Q8_0 and Q4_K_M (llama.cpp must tokenize
like transformers) -> GPTQ 4-bit through GPTQModel -> export the Q8_0 GGUF and check the bundle's
server answers as the artifact (exact greedy tokens, log-probabilities within 1e-2), and the merged
model against the bundle (format change: KL divergence and top-1 agreement).

Each model and its artifacts are built once per architecture (one store per architecture, shared by
its tests in order); a stage that fails makes the later ones of that architecture fail with the
same error rather than run again. Random weights make garbage text: parity is about identical
tokens and close logits, not sensible answers.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

from llmlab.store import Store  # noqa: E402

# name -> (transformers config class, model class, config options beyond the shared tiny sizes)
ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v with bias
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 64}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv_proj and gate_up_proj
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {  # soft-capping, tied embeddings, sliding window
        "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
}
# The linear layers "all-linear" must find in each (peft's adapter_config target_modules).
LINEAR: dict[str, set[str]] = {
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    **{a: {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
       for a in ("llama", "qwen2", "mistral", "gemma2")},
}
# Hidden 64 and intermediate 256: Q8_0 blocks of 32 fit every tensor, Q4_K_M's 256-blocks only the
# down projections (the rest falls back to a 32-block type, as llama.cpp does).
SIZES = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "initializer_range": 0.1}
TEXTS = ["The baker in Dunmere bakes bread every morning before the sun rises.",
         "Ada lives by the river Asel and keeps a small red boat there.",
         "Once upon a time a miner found a blue stone deep under the hills."]


def build_tiny(arch: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A random ``arch`` model (see ARCHS) with the tokenizer of ``tokenizer_dir``, saved to ``out``."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    config_cls, model_cls, extra = ARCHS[arch]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = getattr(transformers, config_cls)(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **SIZES, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@dataclass
class Lab:
    """One architecture's store and the artifacts its stages made (each stage runs once)."""

    arch: str
    store: Store
    folder: Path
    data: Path
    done: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str, run: Callable[[], Any]) -> Any:
        if name not in self.done:
            try:
                self.done[name] = run()
            except BaseException as e:  # later stages of this architecture report it instead of re-running
                self.done[name] = e
                raise
        result = self.done[name]
        if isinstance(result, BaseException):
            pytest.fail(f"the {name} stage failed earlier: {type(result).__name__}: {result}", pytrace=False)
        return result

    @property
    def name(self) -> str:
        # llama.cpp gives Phi-3 special-token attributes to any model whose name contains "phi3" or
        # "phi-3", and then needs Phi-3's own vocabulary ('</s>'): not SmolLM2's (gguf.verify_tokenizer
        # says so). A Phi-3-architecture model with a BPE tokenizer (like Phi-4) is named otherwise.
        return "tiny-phi" if self.arch == "phi3" else f"tiny-{self.arch}"

    def imported(self) -> Any:
        return self.stage("import", lambda: self.store.add(self.folder, self.name))

    def adapter(self) -> Any:
        def run() -> Any:
            from llmlab.tune.config import TuneConfig
            from llmlab.tune.step import tune

            self.imported()
            return tune(TuneConfig(name=f"{self.name}-lora", model=self.name, data=str(self.data), steps=2,
                                   batch_size=4, max_len=64, rank=4, learning_rate=5e-2, evaluate=False,
                                   val_fraction=0.25, eval_every=2), store=self.store)
        return self.stage("tune", run)

    def merged(self) -> Any:
        def run() -> Any:
            from llmlab.merge.step import MergeConfig, merge

            adapter = self.adapter()
            return merge(MergeConfig(name=f"{self.name}-merged", method="unload", models=[adapter.name],
                                     evaluate=False), store=self.store)
        return self.stage("merge", run)

    def gguf(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            from llmlab.quantize.step import QuantizeConfig, quantize

            return quantize(QuantizeConfig(model=self.merged().name, types=["q8_0", "q4_k_m"], score=False),
                            store=self.store)
        return self.stage("gguf", run)

    def gptq(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            from llmlab.quantize.step import QuantizeConfig, quantize

            calib = self.data.with_name("calib.jsonl")
            calib.write_text("".join(json.dumps({"text": t * 8}) + "\n" for t in TEXTS))
            return quantize(QuantizeConfig(model=self.merged().name, types=["gptq"], bits=4, group_size=32,
                                           calibration=str(calib), calibration_samples=2, score=False),
                            store=self.store)
        return self.stage("gptq", run)

    def bundle(self) -> Any:
        def run() -> Any:
            from llmlab.export import ExportConfig, export

            return export(ExportConfig(model=f"{self.merged().name}-q8_0", tarball=False), store=self.store)
        self.gguf()
        return self.stage("export", run)


@pytest.fixture(scope="module", params=list(ARCHS))
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        smollm2_tokenizer_dir: Path) -> Lab:
    arch = request.param
    root = tmp_path_factory.mktemp(f"arch-{arch}")
    folder = build_tiny(arch, smollm2_tokenizer_dir, root / "src" / "model")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}: {t[:30]}?", "output": t}) + "\n"
                            for i, t in enumerate(TEXTS * 4)))
    return Lab(arch, Store(root / "models"), folder, data)


def test_import(lab: Lab) -> None:
    art = lab.imported()
    assert art.kind == "base" and lab.store.verify(art.name) == []
    config = json.loads((art.path / "config.json").read_text())
    assert config["architectures"] == [ARCHS[lab.arch][1]]


def test_lora_targets_every_linear_layer_of_the_architecture(lab: Lab) -> None:
    art = lab.adapter()
    assert art.kind == "adapter" and lab.store.verify(art.name) == []
    cfg = json.loads((art.path / "adapter_config.json").read_text())
    assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} == LINEAR[lab.arch]
    assert art.metrics["val_loss_after"] < art.metrics["val_loss_before"]


def test_lora_target_names_for_unsloth_are_found_per_architecture(lab: Lab) -> None:
    # unsloth takes explicit names: "all-linear" must mean this architecture's layers, not Llama's
    from transformers import AutoModelForCausalLM

    from llmlab.tune.model import linear_module_names

    model = AutoModelForCausalLM.from_pretrained(lab.imported().path)
    assert set(linear_module_names(model)) == LINEAR[lab.arch]


def test_merge_unloads_the_adapter_into_its_base(lab: Lab) -> None:
    import torch
    from safetensors.torch import load_file

    art = lab.merged()
    assert art.kind == "merged" and lab.store.verify(art.name) == []
    assert [(p.name, p.role) for p in art.manifest.parents] == [(lab.name, "base"), (f"{lab.name}-lora", "adapter")]
    base, merged = (load_file(lab.store.get(n).path / "model.safetensors") for n in (lab.name, art.name))
    assert set(merged) == set(base) and all(merged[k].shape == base[k].shape for k in base)
    assert not all(torch.equal(merged[k], base[k]) for k in base)  # the update went into the weights
    assert not any("lora" in k for k in merged)


def test_gguf_variants_and_tokenizer_parity(lab: Lab) -> None:
    from llmlab.quantize.gguf import TOKENIZER_PROBES
    from llmlab.runtime import load

    summary = lab.gguf()
    merged = lab.merged().name
    assert summary["variants"] == [f"{merged}-q8_0", f"{merged}-q4_k_m"]
    q4 = lab.store.get(f"{merged}-q4_k_m")
    assert q4.manifest.info["fallback"] and q4.manifest.info["tensor_types"].get("Q4_K")  # down_proj rows of 256
    with load(f"{merged}-q8_0", store=lab.store) as gg, load(merged, store=lab.store) as hf:
        assert gg.engine == "llama.cpp" and hf.engine != "llama.cpp"
        for text in (*TEXTS, *TOKENIZER_PROBES):
            assert gg.tokenize(text) == hf.tokenize(text), text
        messages = [{"role": "user", "content": "Where does Ada live?"}]
        assert gg.apply_chat_template(messages) == hf.apply_chat_template(messages)


def test_gptq_4bit(lab: Lab) -> None:
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("GPTQModel is not installed")
    import numpy as np

    from llmlab.runtime import load

    summary = lab.gptq()
    name = summary["variants"][0]
    art = lab.store.get(name)
    assert art.kind == "gptq" and lab.store.verify(name) == []
    assert art.manifest.info["bits"] == 4 and art.manifest.info["calibration_samples"] >= 1
    with load(name, store=lab.store) as q, load(lab.merged().name, store=lab.store) as hf:
        ids = hf.tokenize(TEXTS[0])
        assert q.tokenize(TEXTS[0]) == ids
        got, want = q.logprobs(ids), hf.logprobs(ids)
        assert got.shape == want.shape and np.isfinite(got).all()
        kl = float((np.exp(want) * (want - got)).sum(-1).mean())
        top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
        assert 0 < kl < 0.05, (kl, top1)  # 4-bit: close to the merged model, not equal


def test_export_and_served_parity(lab: Lab) -> None:
    from llmlab.export.parity import check

    bundle = lab.bundle()
    parity = bundle.metrics["parity"]
    assert parity["ok"] and parity["mode"] == "exact" and parity["max_logprob_diff"] <= 1e-2
    # the merged safetensors model against the served GGUF: same template, close predictions
    report = check(bundle.path, lab.merged().name, store=lab.store)
    assert report["ok"] and report["mode"] == "format-change"
    assert report["kld_mean"] < 0.01 and report["top1"] >= 0.75, report  # near-ties of random weights
