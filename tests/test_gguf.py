"""GGUF conversion (llama.cpp's converter), quantization and header validation on the micro model.

Conversion needs the converter cached by ``llmlab setup``; without it these tests skip.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from llmlab.quantize import gguf
from llmlab.errors import ConfigError
from llmlab.runtime import CorruptFileError


def test_outtype_is_checked(micro_model_dir: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="outtype"):
        gguf.convert(micro_model_dir, tmp_path / "x.gguf", "q4_k_m")


def test_demo_tokenizer_is_plain_byte_level(micro_model_dir: Path):
    assert gguf.byte_level_bpe(micro_model_dir)


def test_unpack_takes_only_the_converter(tmp_path: Path):
    sdist = tmp_path / "llama_cpp_python-0.0.0.tar.gz"
    files = {"llama_cpp_python-0.0.0/vendor/llama.cpp/convert_hf_to_gguf.py": b"print('hi')\n",
             "llama_cpp_python-0.0.0/vendor/llama.cpp/convert_lora_to_gguf.py": b"print('lora')\n",
             "llama_cpp_python-0.0.0/vendor/llama.cpp/convert_legacy_llama.py": b"",
             "llama_cpp_python-0.0.0/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
             "llama_cpp_python-0.0.0/vendor/llama.cpp/conversion/__init__.py": b"",
             "llama_cpp_python-0.0.0/vendor/llama.cpp/ggml/src/big.c": b"int x;",
             "llama_cpp_python-0.0.0/llama_cpp/llama.py": b""}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    gguf._unpack(sdist, tmp_path / "out")
    got = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == ["conversion/__init__.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py",
                   "gguf-py/gguf/__init__.py"]
    del files["llama_cpp_python-0.0.0/vendor/llama.cpp/convert_lora_to_gguf.py"]  # an incomplete sdist
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(gguf.ConversionError, match="does not contain .*convert_lora_to_gguf.py"):
        gguf._unpack(sdist, tmp_path / "out2")


def test_convert_and_read_header(micro_model_dir: Path, micro_gguf):
    from transformers import AutoTokenizer

    for outtype, ftype in (("f32", "F32"), ("f16", "F16")):
        h = gguf.read_header(micro_gguf(outtype))
        assert h["arch"] == "llama" and h["file_type"] == ftype and h["type"] == "model"
        assert h["tensor_count"] > 0 and h["n_params"] > 0 and h["context_length"] > 0
        assert h["metadata"]["tokenizer.ggml.pre"] == "gpt-2"
    tok = AutoTokenizer.from_pretrained(micro_model_dir)
    assert h["chat_template"] == tok.chat_template


def test_converted_tokenizer_verified(micro_model_dir: Path, micro_gguf):
    gguf.verify_tokenizer(micro_model_dir, micro_gguf("f32"))


def test_truncated_and_foreign_files_are_named(tmp_path: Path, micro_gguf):
    src = micro_gguf("f16")
    data = src.read_bytes()
    for cut in (len(data) - 100, 4096, 20):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match=bad.name):
            gguf.read_header(bad)
    other = tmp_path / "not.gguf"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CorruptFileError, match="not a GGUF file"):
        gguf.read_header(other)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_quantize(tmp_path: Path, qtype: str, micro_gguf):
    src = micro_gguf("f16")
    out = gguf.quantize(src, tmp_path / f"m-{qtype}.gguf", qtype.lower())
    h = gguf.read_header(out)
    assert h["file_type"] == qtype and h["size_bytes"] < src.stat().st_size
    assert not list(tmp_path.glob(".*.part"))


def test_quantize_checks_type_and_rows(tmp_path: Path, monkeypatch, micro_gguf):
    src = micro_gguf("f16")
    with pytest.raises(ConfigError, match="Unknown or unsupported"):
        gguf.quantize(src, tmp_path / "x.gguf", "Q9_9")
    monkeypatch.setattr(gguf, "tensor_shapes", lambda p: {"blk.0.ffn_down.weight": [100, 256]})
    with pytest.raises(ConfigError, match=r"Q4_K_M .*'blk.0.ffn_down.weight' has rows of 100.*multiple of 32"):
        gguf.quantize(src, tmp_path / "x.gguf", "Q4_K_M")
    assert not list(tmp_path.glob("*.gguf"))


def test_tensor_list_gives_each_type(micro_gguf):
    from llmlab.formats.gguf import read_header, tensor_list

    path = micro_gguf("f16")
    tensors = tensor_list(path)
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t["type"]] = counts.get(t["type"], 0) + 1
    assert counts == read_header(path)["tensor_types"]
    assert {"name": "blk.0.ffn_down.weight", "type": "F16", "shape": [768, 256]} in tensors


@pytest.mark.parametrize("where", ["tensor count", "metadata"])
def test_corrupt_header_is_named(tmp_path: Path, micro_gguf, where: str):
    data = micro_gguf("f16").read_bytes()
    bad = tmp_path / "bad.gguf"  # magic intact, header fields garbage
    garbage = data[:8] + b"\xff" * 8 + data[16:] if where == "tensor count" else data[:30] + bytes(200) + data[230:]
    bad.write_bytes(garbage)
    with pytest.raises(CorruptFileError, match="bad.gguf' is truncated or corrupt"):
        gguf.read_header(bad)
    with pytest.raises(CorruptFileError, match="bad.gguf"):
        gguf.quantize(bad, tmp_path / "out.gguf", "q8_0")
    assert not list(tmp_path.glob("*out.gguf*"))


def test_too_little_disk_is_refused_with_numbers(tmp_path: Path, monkeypatch, micro_gguf, micro_model_dir: Path):
    import shutil
    from collections import namedtuple

    from llmlab.errors import ResourceError
    from llmlab.quantize.step import QuantizeConfig, quantize
    from llmlab.store import Store

    src = micro_gguf("f16")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match=r"Quantizing 'micro-f16.gguf' to Q8_0 needs about [\d,]+ MB of disk but "
                                            r"only 0 MB is free"):
        gguf.quantize(src, tmp_path / "q.gguf", "q8_0")
    with pytest.raises(ResourceError, match="Converting 'model' to f32 needs about"):
        gguf.convert(micro_model_dir, tmp_path / "f.gguf", "f32")
    monkeypatch.undo()
    store = Store(tmp_path / "models")
    store.add(micro_model_dir, "micro")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match=r"need about [\d,.]+ MB of disk but only 0 MB is free"):
        quantize(QuantizeConfig(model="micro", types=["q8_0", "q4_k_m"], score=False), store=store)
    assert [a.name for a in store.list()] == ["micro"] and not list(tmp_path.glob("*.gguf*"))


def test_model_too_large_for_memory_is_refused_before_loading(monkeypatch, micro_gguf):
    from collections import namedtuple

    import psutil

    from llmlab.errors import ResourceError
    from llmlab.runtime import load

    mem = namedtuple("mem", "total available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: mem(2**30, 2 * 2**20))
    with pytest.raises(ResourceError, match=r"'micro-f16.gguf' needs about [\d,]+ MB of RAM but only 2 MB"):
        load(micro_gguf("f16"))
