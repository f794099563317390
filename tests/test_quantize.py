"""The Quantize station on the micro model: GGUF variants, the importance matrix, refusals, the table.

The micro model (hidden 256, ffn 768) takes every K-quant. Conversion needs the converter cached
by ``llmlab setup``; the module's store is built once and shared by the tests that only read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from llmlab.quantize import gguf
from llmlab.errors import ConfigError, LlmlabError, StoreError
from llmlab.quantize.step import TYPE_INFO, QuantizeConfig, check_shapes, quality_table, quantize, resolve_types
from llmlab.store import Store

ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = {"name", "kind", "type", "reference", "size_bytes", "bpw", "ppl", "kld_mean", "kld_p99", "top1",
              "accuracy", "gen_tok_s", "prompt_tok_s", "peak_rss_mb"}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> tuple[Store, dict]:
    """micro -> f16, imatrix (world texts), q8_0, q4_k_m, q2_k, iq2_xxs; no table yet."""
    pytest.importorskip("llama_cpp")
    store = Store(tmp_path_factory.mktemp("quantize") / "models")
    store.add(micro_model_dir, "micro")
    calib = tmp_path_factory.getbasetemp() / "calib.jsonl"
    texts = [json.loads(line)["text"] for line in (micro_model_dir / "world" / "texts.jsonl").open()]
    calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = QuantizeConfig(model="micro", types=["Q8_0", "q4_k_m", "q2_k", "iq2_xxs"], imatrix=str(calib),
                            score=False)
    return store, quantize(config, store=store)


def test_types_are_case_insensitive_and_unknown_ones_listed():
    assert resolve_types(["q4_k_m", "Q4_K_M", "iq4_xs"]) == ["Q4_K_M", "IQ4_XS"]
    with pytest.raises(ConfigError, match="Unknown quant type 'q4_k_x'.*Q8_0"):
        resolve_types(["q4_k_x"])
    with pytest.raises(ValueError, match="q4_k_x"):
        QuantizeConfig(model="m", types=["q4_k_x"])
    with pytest.raises(ValueError, match="extra"):
        QuantizeConfig(model="m", typo=1)


def test_every_type_has_an_explanation():
    assert set(gguf.QUANT_TYPES) <= set(TYPE_INFO)
    required = "Q8_0 Q6_K Q5_K_M Q5_K_S Q5_0 Q4_K_M Q4_K_S Q4_0 Q3_K_M Q3_K_S Q2_K IQ4_NL IQ4_XS".split()
    assert set(required) <= set(gguf.QUANT_TYPES)


def test_shape_check_names_the_tensor():
    shapes = {"model.embed_tokens.weight": [512, 96], "model.norm.weight": [96]}
    check_shapes(shapes, ["q8_0", "q4_0", "q4_k_m", "iq4_xs"])  # 256-block types fall back on 96-wide rows
    odd = {**shapes, "model.layers.0.mlp.down_proj.weight": [96, 100]}
    with pytest.raises(ConfigError, match=r"Q8_0 cannot .*'model.layers.0.mlp.down_proj.weight' has rows of 100.*"
                                          r"multiple of 32.* Keep the f16 GGUF"):
        check_shapes(odd, ["q8_0", "q4_k_m"])


def _narrow_llama(micro_model_dir: Path, folder: Path, hidden: int, ffn: int, heads: int) -> Path:
    """A random 2-layer Llama of the given widths with the micro model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shutil.copytree(micro_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    vocab = json.loads((micro_model_dir / "config.json").read_text())["vocab_size"]
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=2, num_attention_heads=heads,
                      num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=128,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def test_rows_not_a_multiple_of_32_are_refused_before_any_work(tmp_path: Path, store: Store,
                                                                 micro_model_dir: Path):
    store.add(_narrow_llama(micro_model_dir, tmp_path / "odd", 80, 144, 5), "odd")
    with pytest.raises(ConfigError, match="Q4_K_M cannot quantize this model.*rows of 80.*multiple of 32"):
        quantize(QuantizeConfig(model="odd", types=["q4_k_m"], score=False), store=store)
    assert [a.name for a in store.list()] == ["odd"]  # nothing written


def test_rows_not_a_multiple_of_256_fall_back_as_llama_cpp_does(tmp_path: Path, store: Store,
                                                                 micro_model_dir: Path):
    pytest.importorskip("llama_cpp")
    from llmlab.formats.gguf import tensor_list
    from llmlab.scoring import stored_row
    from llmlab.runtime import SamplingParams, load

    store.add(_narrow_llama(micro_model_dir, tmp_path / "narrow", 160, 288, 5), "narrow")
    summary = quantize(QuantizeConfig(model="narrow", types=["q4_k_m", "iq4_xs", "q8_0"], score=False),
                       store=store)
    assert summary["variants"] == ["narrow-q4_k_m", "narrow-iq4_xs", "narrow-q8_0"]
    for name, main in (("narrow-q4_k_m", "Q5_0"), ("narrow-iq4_xs", "IQ4_NL")):
        art = store.get(name)
        info = art.manifest.info
        # no row (160, 288) divides into 256: every matrix is in a 32-block type, counted by type
        matrices = [t for t in tensor_list(art.file(".gguf")) if len(t["shape"]) >= 2]
        header = {k: v for k, v in info["tensor_types"].items() if k != "F32"}
        assert info["fallback"] == header and sum(header.values()) == len(matrices) == 16
        assert main in info["fallback"] and set(info["fallback"]) <= {"Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}
        assert stored_row(art)["fallback"] == info["fallback"]
        with load(name, store=store) as m:
            assert isinstance(m.complete("Hello", SamplingParams.greedy(max_tokens=4)), str)
    assert store.get("narrow-q8_0").manifest.info["fallback"] == {}  # blocks of 32 divide 160 and 288


def test_iq2_without_imatrix_is_refused(store: Store, micro_model_dir: Path):
    store.add(micro_model_dir, "micro")
    with pytest.raises(ConfigError, match="IQ2_XS need an importance matrix"):
        quantize(QuantizeConfig(model="micro", types=["q4_k_m", "iq2_xs"], score=False), store=store)
    assert [a.name for a in store.list()] == ["micro"]


def test_empty_calibration_set_is_refused(store: Store, micro_model_dir: Path, tmp_path: Path):
    store.add(micro_model_dir, "micro")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(LlmlabError, match="empty"):
        quantize(QuantizeConfig(model="micro", types=["q4_k_m"], imatrix=str(empty), score=False), store=store)
    assert [a.name for a in store.list()] == ["micro"]


def test_truncated_safetensors_is_refused(store: Store, micro_model_dir: Path, tmp_path: Path):
    store.add(micro_model_dir, "micro")
    weights = store.get("micro").path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        quantize(QuantizeConfig(model="micro", types=["q8_0"], score=False), store=store)
    assert [a.name for a in store.list()] == ["micro"]


def test_too_little_memory_is_refused_with_numbers(tmp_path: Path):
    from llmlab.errors import ResourceError
    from llmlab.quantize.step import _check_resources

    with pytest.raises(ResourceError, match=r"needs about [\d,]+ MB of RAM but only 100 MB"):
        _check_resources(7_000_000_000, ["Q4_K_M"], tmp_path, available=100 * 1024 * 1024)


def test_truncated_gguf_is_refused(micro_gguf, tmp_path: Path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(micro_gguf("f16").read_bytes()[:200_000])
    with pytest.raises(LlmlabError, match="truncated"):
        gguf.quantize(cut, tmp_path / "out.gguf", "q8_0")
    assert not (tmp_path / "out.gguf").exists()


def test_variants_verify_load_and_chat(quantized: tuple[Store, dict]):
    from llmlab.runtime import SamplingParams, load

    store, summary = quantized
    assert summary["variants"] == ["micro-q8_0", "micro-q4_k_m", "micro-q2_k", "micro-iq2_xxs"]
    assert store.get("micro-imatrix").kind == "imatrix"
    for name in [summary["f16"], *summary["variants"]]:
        art = store.get(name)
        assert art.kind == "gguf" and store.verify(name) == []
        assert art.manifest.info["chat_template"] and art.manifest.info["bpw"] > 0
    q4 = store.get("micro-q4_k_m")
    assert q4.manifest.info["type"] == "Q4_K_M" and "Q4_K" in q4.manifest.info["tensor_types"]
    assert q4.manifest.info["fallback"] == {}  # 256 and 768 divide into 256-blocks
    assert {p.role: p.name for p in q4.manifest.parents} == {
        "source": "micro", "reference": "micro-f16", "imatrix": "micro-imatrix"}
    assert store.get("micro-q8_0").manifest.info["bpw"] > q4.manifest.info["bpw"]
    with load("micro-q4_k_m", store=store) as m:
        assert isinstance(m.chat([{"role": "user", "content": "Hi"}], SamplingParams.greedy(max_tokens=4)), str)


def test_imatrix_file_is_llama_cpp_format(quantized: tuple[Store, dict]):
    store, _ = quantized
    path = store.get("micro-imatrix").file("imatrix.gguf")
    assert gguf.read_header(path)["type"] == "imatrix"
    entries = gguf.read_imatrix(path)
    assert "blk.0.ffn_down.weight" in entries and entries["blk.0.ffn_down.weight"].shape == (768,)
    assert "blk.0.attn_q.weight" in entries and (entries["blk.0.attn_q.weight"] > 0).all()


def test_existing_outputs_are_not_overwritten(quantized: tuple[Store, dict]):
    store, _ = quantized
    # micro-q8_0 was made with an importance matrix: without one it is not the same output (tests/test_reuse.py
    # shows one made alike being reused)
    with pytest.raises(StoreError, match="'micro-q8_0' already exists, made with another importance matrix"):
        quantize(QuantizeConfig(model="micro", types=["q8_0"], score=False), store=store)


def test_quality_table(quantized: tuple[Store, dict], micro_model_dir: Path):
    store, summary = quantized
    texts = [(micro_model_dir / "world" / "eval.txt").read_text()]
    names = [summary["f16"], "micro-q8_0", "micro-q2_k"]
    rows = quality_table(names, store, texts=texts, qa=[{"question": "Where is Dunmere?", "answer": "x"}],
                         speed=False)
    assert [r["name"] for r in rows] == names and all(ROW_FIELDS <= set(r) for r in rows)
    q8, q2 = rows[1], rows[2]
    assert q8["reference"] == q2["reference"] == "micro-f16"
    assert q8["kld_mean"] < q2["kld_mean"] and q8["top1"] >= q2["top1"]
    assert store.get("micro-q2_k").metrics["kld_reference"] == "micro-f16"


def test_recipe_config_validates():
    # the step itself is validated by llmlab.recipes once "quantize" is registered in STEPS
    data = yaml.safe_load((ROOT / "recipes" / "quantize.yaml").read_text())
    step = next(s["quantize"] for s in data["steps"] if "quantize" in s)
    config = QuantizeConfig.model_validate(step)
    assert config.outputs[-1] == "demo-iq2_xxs" and config.outputs[:2] == ["demo-f16", "demo-imatrix"]
    assert config.imatrix == "world"
