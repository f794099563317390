"""The runtime: one interface over transformers and llama.cpp, checked on the micro model.

The GGUF side needs llama.cpp's converter (``llmlab setup``); those tests skip without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmlab.errors import ConfigError, LlmlabError, ResourceError
from llmlab.runtime import CorruptFileError, SamplingParams, check_memory, load
from llmlab.runtime.base import _StopFilter, sample_token

MESSAGES = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Where does Ada Voss live?"}]
PROMPT = "Once upon a time"




def long_sample(model) -> tuple[SamplingParams, list[str]]:
    """Seeded sampling params whose output is several pieces long (a tiny model often stops at once)."""
    for seed in range(30):
        p = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=seed, max_tokens=16)
        pieces = list(model.stream(PROMPT, p))
        if len(pieces) > 3 and len("".join(pieces).strip()) > 6:
            return p, pieces
    pytest.fail("no seed gave a long enough sample")


def check_stop(model) -> None:
    p, pieces = long_sample(model)
    full = "".join(pieces)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert model.complete(PROMPT, p.model_copy(update={"stop": [stop]})) == full[: full.index(stop)]


@pytest.fixture(scope="module")
def hf(micro_model_dir: Path):
    with load(micro_model_dir) as m:
        yield m


@pytest.fixture(scope="module")
def cpp(micro_gguf):
    with load(micro_gguf("f32")) as m:
        yield m


# ----- no model needed -----
def test_import_does_not_load_engines():
    code = ("import sys, llmlab.runtime, llmlab.quantize.gguf, llmlab.scoring; "
            "print([m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sampling_params_validate():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_tokens, p.seed, p.stop) == \
        (0.7, 0.95, 40, 1.0, 256, None, [])
    with pytest.raises(ValueError):
        SamplingParams(temprature=0.1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    assert SamplingParams.greedy(8).temperature == 0


def test_sampler_semantics():
    logits = np.array([1.0, 3.0, 2.0, -1.0])
    rng = np.random.default_rng(0)
    assert sample_token(logits, SamplingParams.greedy(), rng) == 1
    assert sample_token(logits, SamplingParams(top_k=1, temperature=1.0), rng) == 1
    assert sample_token(logits, SamplingParams(top_p=0.01, temperature=1.0), rng) == 1
    # repetition penalty divides the positive logit of a seen token: 3/2 < 2
    assert sample_token(logits, SamplingParams(temperature=0, repetition_penalty=2.0), rng, [1]) == 2
    hot = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
    first = [sample_token(logits, hot, np.random.default_rng(5)) for _ in range(20)]
    assert first == [sample_token(logits, hot, np.random.default_rng(5)) for _ in range(20)]
    counts = np.bincount([sample_token(logits, SamplingParams(temperature=1.0, top_k=2, top_p=1.0), rng)
                          for _ in range(300)], minlength=4)
    assert counts[0] == counts[3] == 0 and counts[1] > counts[2] > 0


def test_stop_filter_holds_back_partial_stop():
    f = _StopFilter(["END"])
    assert f.feed("abc E") == "abc "
    assert f.feed("N") == ""
    assert f.feed("Dx") == "" and f.stopped
    g = _StopFilter(["END"])
    assert g.feed("EN") == "" and g.feed("x") == "ENx" and g.flush() == ""


def test_memory_check_refuses_with_numbers():
    with pytest.raises(ResourceError, match=r"needs about [\d,]+ MB .* only [\d,]+ MB"):
        check_memory(10**15, "a huge model")


def test_unknown_engine_and_missing_path(micro_model_dir: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="Unknown engine"):
        load(micro_model_dir, engine="vllm")
    with pytest.raises(LlmlabError, match="does not exist"):
        load(tmp_path / "nope.gguf")


# ----- transformers -----
def test_hf_basics(hf):
    info = hf.info
    assert info["engine"] == "transformers" and info["device"] == "cpu" and info["n_params"] > 0
    assert info["vocab_size"] == hf.vocab_size and info["size_bytes"] > 0
    ids = hf.tokenize("Hello world", add_special=True)
    assert ids[0] == hf.bos_id and hf.detokenize(ids) == "Hello world"
    lp = hf.logprobs(ids)
    assert lp.shape == (len(ids), hf.vocab_size) and lp.dtype == np.float32
    assert np.allclose(np.exp(lp).sum(-1), 1, atol=1e-4)


def test_stream_joins_to_complete_and_max_tokens(hf):
    p, pieces = long_sample(hf)
    assert "".join(pieces) == hf.complete(PROMPT, p)
    ids = hf.tokenize(PROMPT, add_special=True)
    assert len(list(hf.generate_ids(ids, SamplingParams.greedy(5), ignore_eos=True))) == 5
    assert len(list(hf.generate_ids(ids, SamplingParams(max_tokens=5, seed=1)))) <= 5


def test_seed_reproducible_and_varied(hf):
    hot = dict(temperature=1.0, top_k=0, top_p=1.0, max_tokens=16)
    a = hf.complete(PROMPT, SamplingParams(seed=1, **hot))
    assert a == hf.complete(PROMPT, SamplingParams(seed=1, **hot))
    assert any(hf.complete(PROMPT, SamplingParams(seed=s, **hot)) != a for s in (2, 3, 4))


def test_stop_strings(hf):
    check_stop(hf)


def test_chat_uses_template(hf):
    text = hf.apply_chat_template(MESSAGES)
    assert "Where does Ada Voss live?" in text
    reply = hf.chat(MESSAGES, SamplingParams.greedy(10))
    assert isinstance(reply, str)
    assert "".join(hf.stream_chat(MESSAGES, SamplingParams.greedy(10))) == reply
    with pytest.raises(ConfigError):
        hf.chat([{"role": "user"}])


def test_corrupt_safetensors_named(micro_model_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(micro_model_dir, bad)
    weights = next(bad.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LlmlabError, match=weights.name):
        load(bad)


def test_load_by_artifact_name(micro_model_dir: Path, store):
    store.add(micro_model_dir, "micro")
    with load("micro", store=store) as m:
        assert m.artifact.name == "micro" and m.info["engine"] == "transformers"


# ----- llama.cpp, and agreement with transformers -----
def test_cpp_basics(cpp, hf):
    info = cpp.info
    assert info["engine"] == "llama.cpp" and info["file_type"] == "F32"
    assert cpp.vocab_size == hf.vocab_size and cpp.bos_id == hf.bos_id
    assert info["n_params"] == hf.info["n_params"]


def test_chat_template_renders_identically(cpp, hf):
    for gen in (True, False):
        assert cpp.apply_chat_template(MESSAGES, gen) == hf.apply_chat_template(MESSAGES, gen)
    text = hf.apply_chat_template(MESSAGES)
    assert cpp.tokenize(text) == hf.tokenize(text)


def test_greedy_and_logprobs_agree(cpp, hf):
    params = SamplingParams.greedy(24)
    assert cpp.complete(PROMPT, params) == hf.complete(PROMPT, params)
    assert cpp.chat(MESSAGES, params) == hf.chat(MESSAGES, params)
    ids = hf.tokenize("The little town by the sea had a baker. " * 4, add_special=True)
    a, b = hf.logprobs(ids), cpp.logprobs(ids)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 5e-3 and (a.argmax(-1) == b.argmax(-1)).all()


def test_token_text_and_template_agree_across_engines(cpp, hf):
    # What an exporter needs from any model (Ollama's stop tokens, its TEMPLATE), through the public interface.
    assert hf.eos_id == cpp.eos_id is not None and hf.bos_id == cpp.bos_id
    assert hf.token_text(hf.eos_id) == cpp.token_text(cpp.eos_id) == "<|end|>"
    ids = hf.tokenize("<|user|>Where does Bodo live?")
    assert [hf.token_text(i) for i in ids] == [cpp.token_text(i) for i in ids]
    assert hf.token_text(ids[0]) == "<|user|>"
    assert hf.token_text(-1) is None and cpp.token_text(cpp.vocab_size) is None
    assert hf.chat_template and hf.chat_template == cpp.chat_template


def test_sampling_agrees_across_engines(cpp, hf):
    p, pieces = long_sample(hf)
    assert cpp.complete(PROMPT, p) == "".join(pieces)
    assert "".join(cpp.stream(PROMPT, p)) == "".join(pieces)
    for seed in range(4):
        q = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=seed, max_tokens=16)
        assert cpp.complete(PROMPT, q) == hf.complete(PROMPT, q)


def test_cpp_stop_and_max_tokens(cpp):
    check_stop(cpp)
    ids = cpp.tokenize(PROMPT, add_special=True)
    assert len(list(cpp.generate_ids(ids, SamplingParams.greedy(7), ignore_eos=True))) == 7


def test_corrupt_gguf_named(tmp_path: Path, micro_gguf):
    src = micro_gguf("f32")
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="cut.gguf"):
        load(bad)


def test_gguf_artifact_goes_to_llama_cpp(store, micro_gguf):
    store.add(micro_gguf("f16"), "micro-f16")
    with load("micro-f16", store=store) as m:
        assert m.engine == "llama.cpp" and m.info["file_type"] == "F16"
    with pytest.raises(ConfigError, match="loads model folders"):
        load(micro_gguf("f16"), engine="transformers")


def test_a_llama_cpp_with_amx_kernels_warns_once_naming_the_fix(caplog) -> None:
    """ggml's AMX kernels crashed every quantized model on an AMX Xeon VM: a build with them says so
    (before the crash, which gives no Python error); the build `make install` makes does not."""
    import logging
    import platform

    from llmlab.runtime.llamacpp import warn_if_amx_build

    class Build:  # llama_cpp as far as the check reads it
        def __init__(self, info: bytes):
            self.llama_print_system_info = lambda: info

    amx = Build(b"CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | ")
    with caplog.at_level(logging.WARNING, logger="llmlab"):
        warn_if_amx_build(Build(b"CPU : AVX2 = 1 | AVX512 = 1 | OPENMP = 1 | "))
        assert not caplog.records
        warn_if_amx_build(amx)
        warn_if_amx_build(amx)  # once a process
    assert len(caplog.records) == 1 and "make install" in caplog.records[0].getMessage()
    llama_cpp = pytest.importorskip("llama_cpp")
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info()  # make install's build
