"""GGUF files: convert a Hugging Face folder, quantize, and read/validate headers.

Conversion runs llama.cpp's own ``convert_hf_to_gguf.py`` from the llama-cpp-python sdist of the
installed version, in a subprocess with that sdist's ``gguf-py`` first on ``PYTHONPATH`` (the
PyPI ``gguf`` package is older code than the script expects). llmlab ships none of llama.cpp's
code: ``setup()`` (``llmlab setup``) fetches the sdist once with
``pip download llama-cpp-python==<installed> --no-deps --no-binary :all:`` and unpacks only the
converter, its ``conversion/`` package, ``gguf-py/`` and the licence into
``$LLMLAB_CACHE/llama.cpp-converter-<version>`` (default ``~/.cache/llmlab``).

The converter identifies a BPE tokenizer's pre-tokenizer by hashing the tokens of a probe text
and refuses tokenizers it has not seen, such as the demo's own byte-level BPE. For a tokenizer
whose pre-tokenizer llama.cpp implements (plain ``ByteLevel`` with the GPT-2 split regex: "gpt-2";
Qwen2's or Llama 3's split regex), llmlab tells the subprocess to fall back to that pre-tokenizer
(only when the hash lookup fails), and writes the BPE vocabulary for model classes that want a
SentencePiece ``tokenizer.model`` the folder lacks (``llmlab.quantize.vocab``). After every
conversion it checks that llama.cpp tokenizes sample texts exactly as transformers does, raising if not.
The converter (and ``setup``'s download) runs in a child process that ends with the one that started it
(``DIE_WITH_PARENT``): a SIGKILLed step leaves no converter running on and writing.

Quantization uses ``llama_cpp.llama_model_quantize`` in-process; tensors whose rows the type's
blocks (256 values for K-quants) do not divide fall back to a 32-block type, as llama.cpp does, and
rows not a multiple of 32 are refused first (``llmlab.quantize.fallback``). An
importance matrix (``compute_imatrix``) is collected through llama.cpp's eval callback, written in
``llama-imatrix``'s GGUF format, and handed to the quantizer as ``llama_model_imatrix_data``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmlab import settings
from llmlab.errors import (
    ConfigError,
    CorruptFileError,
    LlmlabError,
    MissingExtraError,
    NotFoundError,
    ResourceError,
)
from llmlab.events import Reporter, emit
from llmlab.formats import safetensors
from llmlab.formats.gguf import read_header, tensor_shapes
from llmlab.quantize.fallback import check_rows
from llmlab.quantize.vocab import WRAPPER, byte_level_bpe, converter_env  # noqa: F401 (byte_level_bpe: API)
from llmlab.noise import quiet_llama_cpp

OUTTYPES = ("f32", "f16", "bf16")
# Quant type -> values per block along a row (a tensor's first dimension must be a multiple).
# Every one is produced on the micro model in tests/test_every_quant_type.py (file type, its own
# kernel, load and generate). llama.cpp's other file types are not offered: MXFP4_MOE packs only
# mixture-of-experts weights, and NVFP4, Q1_0 and Q2_0 are newer than this list and untested here.
QUANT_TYPES: dict[str, int] = {
    "Q8_0": 32, "Q5_0": 32, "Q5_1": 32, "Q4_0": 32, "Q4_1": 32, "IQ4_NL": 32,
    "Q6_K": 256, "Q5_K_M": 256, "Q5_K_S": 256, "Q4_K_M": 256, "Q4_K_S": 256,
    "Q3_K_L": 256, "Q3_K_M": 256, "Q3_K_S": 256, "Q2_K": 256, "IQ4_XS": 256, "TQ1_0": 256, "TQ2_0": 256,
    "Q2_K_S": 256, "IQ3_M": 256, "IQ3_S": 256, "IQ3_XS": 256, "IQ3_XXS": 256, "IQ2_M": 256, "IQ2_S": 256,
    "IQ2_XS": 256, "IQ2_XXS": 256, "IQ1_M": 256, "IQ1_S": 256,
}
# Types llmlab makes only with an importance matrix: llama.cpp refuses most of them without one
# (IQ1/IQ2, IQ3_XXS, Q2_K_S) and the rest lose far more quality without it.
IMATRIX_TYPES = frozenset(t for t in QUANT_TYPES if t.startswith(("IQ1", "IQ2", "IQ3")) or t == "Q2_K_S")
# What is unpacked from the sdist (paths below its top folder).
SDIST_PARTS = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/convert_lora_to_gguf.py",
               "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/LICENSE")
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")  # what a complete converter cache holds
TOKENIZER_PROBES = (
    "Hello world! It's a test: 3 + 4 = 7, and 3.14159 isn't 22/7.",
    "  Leading spaces,\ttabs,\n\nnew lines   and trailing spaces   ",
    "Ünïcödé: café, naïve, Straße, 日本語, emoji 🚀🦙 and a dash — here.",
    "I've been 'told' he's there; we'd've gone. HELLO hello HeLLo 1234567890",
)

_TENSOR_LINE = re.compile(r"-->\s*\w+, shape = ")


class ConversionError(LlmlabError):
    """A conversion or quantization that failed or produced a file that does not behave."""


# ----- child processes -----
# What a step's Python child runs first, so that it ends with the llmlab process that started it
# (``LLMLAB_PARENT_PID``) even when that one is SIGKILLed: on Linux the kernel kills it
# (PR_SET_PDEATHSIG; the check after it closes the race with a parent that died before), elsewhere a
# thread notices the parent is gone. No orphan goes on converting, downloading or writing files.
DIE_WITH_PARENT = """
import os, signal, sys
parent = int(os.environ["LLMLAB_PARENT_PID"])
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
else:
    import threading, time
    def watch_parent():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch_parent, daemon=True).start()
if os.getppid() != parent:
    sys.exit("llmlab: the process that started this one is gone")
"""
_PIP = "import runpy\nrunpy.run_module('pip', run_name='__main__', alter_sys=True)\n"


def python_child(code: str) -> list[str]:
    """The command running ``code`` in a Python child that ends with this process (``DIE_WITH_PARENT``;
    start it with ``child_env()``): a SIGKILLed step leaves no orphan converting or downloading."""
    return [sys.executable, "-c", DIE_WITH_PARENT + code]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``env``, with what ``python_child`` needs."""
    return {**os.environ, **(env or {}), "LLMLAB_PARENT_PID": str(os.getpid())}


# ----- the converter -----
def cache_dir() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE") or Path.home() / ".cache" / "llmlab").expanduser()


def llama_cpp_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise MissingExtraError("GGUF conversion", "lab", "llama-cpp-python") from None


def converter_dir() -> Path:
    """Where the converter of the installed llama-cpp-python version is (or will be) unpacked."""
    return cache_dir() / f"llama.cpp-converter-{llama_cpp_version()}"


def ensure_converter(progress: Reporter | None = None, script: str = "convert_hf_to_gguf.py") -> Path:
    """Path of llama.cpp's ``script`` (one of ``SCRIPTS``) for the installed llama-cpp-python; the
    converter is fetched if missing (a cache from before the LoRA converter was added is refreshed)."""
    path = converter_dir() / script
    if not path.is_file():
        setup(progress=progress)
    return path


def setup(sdist: str | Path | None = None, progress: Reporter | None = None) -> Path:
    """Fetch (or take ``sdist``, a local ``llama_cpp_python-<version>.tar.gz``) and unpack the converter."""
    dest = converter_dir()
    if sdist is None and all((dest / name).is_file() for name in SCRIPTS):
        return dest / "convert_hf_to_gguf.py"
    version = llama_cpp_version()
    with tempfile.TemporaryDirectory(prefix="llmlab-sdist-") as tmp:
        if sdist is None:
            emit(progress, "log", message=f"downloading the llama-cpp-python {version} sdist (~77 MB)")
            cmd = [*python_child(_PIP), "download", f"llama-cpp-python=={version}", "--no-deps",
                   "--no-binary", ":all:", "--dest", tmp, "--quiet"]
            run = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
            found = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if run.returncode != 0 or not found:
                last = (run.stderr.strip().splitlines() or ["no output"])[-1]
                raise ConversionError(
                    f"The GGUF converter is not set up and could not be downloaded ({last}).",
                    "Run `llmlab setup` once while online (it caches llama.cpp's converter), or pass "
                    "a downloaded llama_cpp_python sdist to llmlab.quantize.gguf.setup(sdist=...).",
                )
            sdist = found[0]
        sdist = Path(sdist)
        if not sdist.is_file():
            raise NotFoundError(f"'{sdist}' does not exist.")
        emit(progress, "log", message=f"unpacking the converter from {sdist.name}")
        staging = Path(tmp) / "converter"
        _unpack(sdist, staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(staging, dest)  # complete before it appears under its final name
    return dest / "convert_hf_to_gguf.py"


def _unpack(sdist: Path, dest: Path) -> None:
    """Extract ``SDIST_PARTS`` from ``sdist`` into ``dest`` (regular files only, no path tricks)."""
    n = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            top, _, rel = member.name.partition("/")
            if not member.isfile() or not any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in SDIST_PARTS):
                continue
            inner = Path(rel).relative_to("vendor/llama.cpp")
            if inner.is_absolute() or ".." in inner.parts:
                continue
            target = dest / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(src, out)
            n += 1
    if not all((dest / name).is_file() for name in SCRIPTS) or not (dest / "gguf-py" / "gguf").is_dir():
        raise ConversionError(f"'{sdist.name}' does not contain llama.cpp's {' and '.join(SCRIPTS)} and gguf-py.",
                              "Give the llama-cpp-python sdist (llama_cpp_python-<version>.tar.gz).")


# ----- conversion -----
def convert(hf_dir: str | Path, out_file: str | Path, outtype: str = "f16", progress: Reporter | None = None,
            *, verify: bool = True) -> Path:
    """Convert a Hugging Face folder to ``out_file`` (``outtype``: f32, f16 or bf16).

    The file is written next to ``out_file`` under a temporary name and renamed when complete.
    With ``verify`` llama.cpp must tokenize sample texts exactly as transformers does."""
    from llmlab.formats.hf import check_hf_folder

    hf_dir, out_file = Path(hf_dir), Path(out_file)
    if outtype not in OUTTYPES:
        raise ConfigError(f"Unknown GGUF outtype '{outtype}'.",
                          f"Use one of: {', '.join(OUTTYPES)}; for quantized types convert, then quantize().")
    check_hf_folder(hf_dir)
    n_tensors = sum(len(safetensors.read_header(p)) for p in hf_dir.glob("*.safetensors"))
    n_params = safetensors.params(hf_dir)
    check_disk(n_params * (4 if outtype == "f32" else 2), out_file.parent, f"Converting '{hf_dir.name}' to {outtype}")
    env = converter_env(hf_dir)
    args = [str(hf_dir), "--outtype", outtype]
    with run_converter("convert_hf_to_gguf.py", args, out_file, n_tensors, env=env, what=f"Converting '{hf_dir}'",
                       progress=progress) as tmp:
        read_header(tmp)
        if verify:
            verify_tokenizer(hf_dir, tmp)
    emit(progress, "log", message=f"converted {hf_dir.name} to {out_file.name} ({outtype})")
    return out_file


@contextlib.contextmanager
def run_converter(script: str, args: list[str], out_file: Path, n_tensors: int, *, env: dict[str, str] | None = None,
                  what: str, task: str = "convert", progress: Reporter | None = None) -> Iterator[Path]:
    """Run llama.cpp's ``script`` (from the converter cache, with its own ``gguf-py``) with ``args``
    plus ``--outfile``; yield the written temporary file for checks, then rename it to ``out_file``.
    On failure, or when the checks raise, nothing is left at ``out_file``."""
    path = ensure_converter(progress, script)
    root = path.parent
    pythonpath = [str(root / "gguf-py"), str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    full_env = child_env({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                          "PYTHONPATH": os.pathsep.join(pythonpath), **(env or {})})
    full_env.pop("NO_LOCAL_GGUF", None)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.part")
    cmd = [*python_child(WRAPPER), str(path), *args, "--outfile", str(tmp)]  # WRAPPER: see llmlab.quantize.vocab
    tail: deque[str] = deque(maxlen=30)
    done = 0
    emit(progress, "progress", task=task, done=0, total=n_tensors)
    try:
        with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    tail.append(line.rstrip())
                    if _TENSOR_LINE.search(line):
                        done += 1
                        emit(progress, "progress", task=task, done=min(done, n_tensors), total=n_tensors)
            except BaseException:  # a cancel or a failing reporter: end the converter now, not when it is done
                proc.kill()
                raise
        if proc.returncode != 0 or not tmp.is_file():
            reason = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), tail[-1] if tail else "")
            raise ConversionError(f"{what} to GGUF failed: {reason.strip()}",
                                  "The last lines of the converter's output:\n" + "\n".join(tail))
        yield tmp
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)


def check_disk(need: int, folder: Path, what: str) -> None:
    """Refuse with numbers when ``need`` bytes will not fit on the disk holding ``folder``."""
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ResourceError(f"{what} needs about {need / 2**20:,.0f} MB of disk but only {free / 2**20:,.0f} MB "
                            f"is free under {probe}.", "Free some space or write somewhere else.")


def verify_tokenizer(hf_dir: str | Path, gguf_file: str | Path, texts: tuple[str, ...] = TOKENIZER_PROBES) -> None:
    """Raise ConversionError unless llama.cpp tokenizes ``texts`` (and a chat prompt) as transformers does."""
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    samples = list(texts)
    if tok.chat_template:
        samples.append(tok.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Dunmere?"}],
            tokenize=False, add_generation_prompt=True))
    quiet_llama_cpp()
    try:
        llm = llama_cpp.Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    except ValueError as e:
        raise ConversionError(
            f"llama.cpp cannot load the vocabulary of the converted '{Path(hf_dir).name}' ({e}).",
            "llama.cpp sets special-token attributes by the model's name: a name with 'phi3' or 'phi-3' "
            "needs Phi-3's own SentencePiece vocabulary (with '</s>'). Rename the model (its folder or "
            "artifact) or give it its family's tokenizer.") from None
    try:
        for text in samples:
            for add_special in (True, False):
                want = tok.encode(text, add_special_tokens=add_special)
                got = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)
                if got != want:
                    pairs = enumerate(zip(want, got, strict=False))
                    i = next((k for k, (a, b) in pairs if a != b), min(len(want), len(got)))
                    raise ConversionError(
                        f"llama.cpp tokenizes {text[:40]!r} differently from transformers "
                        f"(first difference at token {i}: {want[i:i + 4]} vs {got[i:i + 4]}).",
                        "The converter picked the wrong pre-tokenizer for this tokenizer; this model "
                        "cannot be converted faithfully with the installed llama.cpp.",
                    )
    finally:
        llm.close()


# ----- quantization -----
def quantize(src_gguf: str | Path, dst_gguf: str | Path, type_name: str, *, threads: int | None = None,
             imatrix: str | Path | None = None, progress: Reporter | None = None) -> Path:
    """Quantize ``src_gguf`` (f32/f16/bf16) to ``dst_gguf`` with llama.cpp (``type_name`` e.g. Q4_K_M),
    weighting rounding errors by the importance matrix file ``imatrix`` when given."""
    src, dst = Path(src_gguf), Path(dst_gguf)
    name = type_name.upper()
    if name not in QUANT_TYPES:
        raise ConfigError(f"Unknown or unsupported quant type '{type_name}'.", f"Use one of: {', '.join(QUANT_TYPES)}.")
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError("GGUF quantization", "lab", "llama-cpp-python") from None
    shapes = tensor_shapes(src)
    # at most Q8_0's 8.5 bits per weight (a few tensors stay at higher precision: margin)
    check_disk(sum(math.prod(s) for s in shapes.values()) * 9 // 8 + 2**20, dst.parent,
               f"Quantizing '{src.name}' to {name}")
    # rows the type's blocks do not divide fall back to a 32-block type (llmlab.quantize.fallback)
    check_rows([(n, s[0]) for n, s in shapes.items() if len(s) >= 2], name)
    if name in IMATRIX_TYPES and imatrix is None:
        raise ConfigError(f"{name} needs an importance matrix: at about 2-3 bits per weight, rounding without "
                          "knowing which weights matter most ruins the model (llama.cpp refuses it).",
                          "Give calibration text for an importance matrix (imatrix: world, or a file).")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    params.nthread = threads or settings.threads()
    keep: list[Any] = []  # the imatrix arrays must outlive the call
    if imatrix is not None:
        params.imatrix = _imatrix_entries(read_imatrix(imatrix), keep)
    quiet_llama_cpp()  # llama.cpp logs every tensor otherwise
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    emit(progress, "log", message=f"quantizing {src.name} to {name}")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise ConversionError(f"llama.cpp could not quantize '{src.name}' to {name} (code {rc}).")
        read_header(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    emit(progress, "log", message=f"wrote {dst.name}")
    return dst


# ----- importance matrix -----
# llama.cpp's importance matrix: for every weight matrix, the sum over calibration tokens of the
# squared input activation of each column (``<weight>.in_sum2``) and the token count
# (``<weight>.counts``), in a GGUF file of ``general.type`` "imatrix" as ``llama-imatrix`` writes
# it. llama-cpp-python ships no ``llama-imatrix`` binary, so llmlab collects the same sums
# through the scheduler's eval callback (``cb_eval``) while llama.cpp runs the f16 model.
class _GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the bundled ggml (checked against ``ggml_tensor_overhead()``)."""


_GGMLTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_GGMLTensor) * 10), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]
_GGML_OBJECT_SIZE = 32  # struct ggml_object precedes each tensor in a context
_MIN_IMATRIX_ROWS = 16  # llama-imatrix ignores smaller batches too


def _ggml_lib() -> Any:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    if ctypes.sizeof(_GGMLTensor) + _GGML_OBJECT_SIZE != lib.ggml_tensor_overhead():
        raise ConversionError("The installed llama.cpp has a ggml tensor layout llmlab does not know, so it "
                              "cannot collect an importance matrix.", "Use the llama-cpp-python version llmlab pins.")
    return lib


def _weight_name(raw: bytes) -> str:
    """``CPU#blk.0.attn_q.weight#0`` (a scheduler copy) -> ``blk.0.attn_q.weight``."""
    name = raw.decode("utf-8", errors="replace")
    return name.split("#")[1] if "#" in name else name


def compute_imatrix(gguf_file: str | Path, texts: list[str], out_file: str | Path, *, chunk_tokens: int = 512,
                    max_chunks: int | None = None, threads: int | None = None, dataset: str = "",
                    progress: Reporter | None = None) -> dict[str, Any]:
    """Run ``gguf_file`` (f16/f32) over ``texts`` in chunks of ``chunk_tokens`` and write the importance
    matrix to ``out_file`` (llama-imatrix's GGUF format). Returns entries, chunks and tokens."""
    import llama_cpp
    import numpy as np

    gguf_file, out_file = Path(gguf_file), Path(out_file)
    header = read_header(gguf_file)
    if header["file_type"] not in ("F16", "F32", "BF16"):
        raise ConfigError(f"An importance matrix is computed on an unquantized model; '{gguf_file.name}' is "
                          f"{header['file_type']}.", "Use the f16 GGUF.")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ConfigError("The calibration set is empty: an importance matrix needs text to run the model on.",
                          "Give calibration texts (imatrix: world, or a .txt/.jsonl file with text).")
    lib = _ggml_lib()
    mul_mat = next(i for i in range(200) if lib.ggml_op_name(i) == b"MUL_MAT")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    errors: list[str] = []  # an exception cannot cross llama.cpp's C frames: keep it, raise after decode

    @llama_cpp.ggml_backend_sched_eval_callback
    def collect(t_ptr: int, ask: bool, user_data: Any) -> bool:
        t = _GGMLTensor.from_address(t_ptr)
        if t.op != mul_mat or errors:
            return False
        w, x = t.src[0].contents, t.src[1].contents
        name = _weight_name(w.name)
        if ask:  # as llama-imatrix: repeating blocks' weights, f32 activations, batches of 16+ rows
            return name.startswith("blk.") and x.type == 0 and x.ne[1] >= _MIN_IMATRIX_ROWS
        if w.ne[2] * w.ne[3] != 1:
            errors.append(f"'{name}' is a stacked (mixture-of-experts) weight; llmlab's importance matrix "
                          "covers dense models only.")
            return False
        raw = ctypes.create_string_buffer(lib.ggml_nbytes(t.src[1]))
        lib.ggml_backend_tensor_get(t.src[1], raw, 0, len(raw))
        rows = np.lib.stride_tricks.as_strided(
            np.frombuffer(raw, dtype=np.uint8), shape=(x.ne[3], x.ne[2], x.ne[1], x.ne[0] * 4),
            strides=(x.nb[3], x.nb[2], x.nb[1], 1))
        acts = rows.copy().view(np.float32).reshape(-1, x.ne[0]).astype(np.float64)
        if not np.isfinite(acts).all():
            errors.append(f"Non-finite activations reach '{name}' while computing the importance matrix.")
            return False
        sums[name] = sums.get(name, 0.0) + (acts * acts).sum(axis=0)
        counts[name] = counts.get(name, 0) + acts.shape[0]
        return True

    quiet_llama_cpp()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(gguf_file).encode(), mparams)
    if not model:
        raise ConversionError(f"llama.cpp could not load '{gguf_file.name}'.")
    ctx = None
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_ctx = min(chunk_tokens, int(header["context_length"] or chunk_tokens))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = threads or settings.threads()
        cparams.cb_eval = collect
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise ConversionError(f"llama.cpp could not create a context for '{gguf_file.name}'.")
        ids: list[int] = []
        for text in texts:
            data = text.encode("utf-8")
            buf = (llama_cpp.llama_token * (len(data) + 2))()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
            ids += list(buf[:n])
        # each chunk starts with BOS, as llama-imatrix does
        bos = llama_cpp.llama_vocab_bos(vocab)
        body = n_ctx - 1
        chunks = [ids[i:i + body] for i in range(0, len(ids), body)]
        chunks = [c for c in chunks if len(c) >= _MIN_IMATRIX_ROWS][: max_chunks or None]
        if not chunks:
            raise ConfigError(f"The calibration set is too short: {len(ids)} tokens, fewer than "
                              f"{_MIN_IMATRIX_ROWS} for one chunk.", "Give more calibration text.")
        # Logits for every position, as llama-imatrix asks: otherwise llama.cpp runs the last
        # layer's feed-forward on the final token only and those weights get no statistics.
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        try:
            for i, chunk in enumerate(chunks):
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                for pos, tok in enumerate([bos, *chunk]):
                    batch.token[pos], batch.pos[pos], batch.n_seq_id[pos], batch.logits[pos] = tok, pos, 1, True
                    batch.seq_id[pos][0] = 0
                batch.n_tokens = len(chunk) + 1
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise ConversionError(f"llama.cpp failed on calibration chunk {i + 1} of '{gguf_file.name}'.")
                if errors:
                    raise ConversionError(errors[0])
                emit(progress, "progress", task="imatrix", done=i + 1, total=len(chunks))
        finally:
            llama_cpp.llama_batch_free(batch)
    finally:
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    if not sums:
        raise ConversionError(f"No weight matrix of '{gguf_file.name}' was seen while computing the importance matrix.")
    write_imatrix(out_file, sums, counts, chunks=len(chunks), chunk_size=n_ctx, dataset=dataset)
    return {"entries": len(sums), "chunks": len(chunks), "chunk_size": n_ctx,
            "tokens": sum(len(c) + 1 for c in chunks)}


def write_imatrix(path: Path, sums: dict[str, Any], counts: dict[str, int], *, chunks: int, chunk_size: int,
                  dataset: str) -> None:
    """An importance matrix in llama.cpp's GGUF layout: per weight, the sums of squared activations of its
    inputs and how many tokens they cover (what ``llama-quantize --imatrix`` reads); written atomically."""
    import numpy as np
    from gguf import GGUFWriter

    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    writer = GGUFWriter(str(tmp), arch="imatrix")
    try:
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", [dataset or "calibration"])
        writer.add_uint32("imatrix.chunk_count", chunks)
        writer.add_uint32("imatrix.chunk_size", chunk_size)
        for name in sorted(sums):
            writer.add_tensor(f"{name}.in_sum2", np.asarray(sums[name], dtype=np.float32).reshape(1, -1))
            writer.add_tensor(f"{name}.counts", np.asarray([[counts[name]]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    try:
        read_imatrix(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_imatrix(path: str | Path) -> dict[str, Any]:
    """``{weight name: per-column mean squared activation}`` from an importance matrix GGUF file
    (what ``llama-quantize --imatrix`` passes to llama.cpp)."""
    import numpy as np
    from gguf import GGUFReader

    path = Path(path)
    header = read_header(path)
    if header["type"] != "imatrix":
        raise ConfigError(f"'{path.name}' is not an importance matrix (its general.type is '{header['type']}').")
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in GGUFReader(path, "r").tensors}
    out = {}
    for key, values in tensors.items():
        if not key.endswith(".in_sum2"):
            continue
        name = key.removesuffix(".in_sum2")
        count = tensors.get(f"{name}.counts")
        if count is None or len(count) != 1:
            raise CorruptFileError(f"'{path.name}' has no single token count for '{name}'.",
                                   "Compute the importance matrix again.")
        out[name] = values / count[0] if count[0] > 0 else np.ones_like(values)
    return out


def _imatrix_entries(imatrix: dict[str, Any], keep: list[Any]) -> Any:
    """A NULL-terminated ``llama_model_imatrix_data`` array for ``llama_model_quantize_params.imatrix``."""
    import llama_cpp
    import numpy as np

    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        data = np.ascontiguousarray(values, dtype=np.float32)
        keep += [data, name.encode()]
        arr[i].name = keep[-1]
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    keep.append(arr)
    return arr
