"""GGUF → trainable: a GGUF model (from Ollama, LM Studio, a hub) as a Hugging Face ``base`` artifact.

```python
from llmlab.dequantize import DequantizeConfig, dequantize
art = dequantize(DequantizeConfig(model="SmolLM2-135M-Instruct.Q4_1.gguf"), store=store)
art.manifest.info["checks"]   # tokenizer parity, chat template kept, top-1 / KLD against the GGUF
```

The same call is ``llmlab models add FILE.gguf --dequantize [--name N]``, ``llmlab dequantize MODEL``
and the recipe step ``dequantize: {model: ..., name: ...}``. ``model`` is a ``gguf`` artifact or a
``.gguf`` path; a path is imported first as a ``gguf`` artifact (``store.add``), so the new
artifact's manifest names the GGUF as its parent.

transformers' GGUF loader dequantizes every tensor to fp32 (``GgufConfig(dequantize=True)``). Such a
model refuses ``save_pretrained``, so its state dict goes into a plain ``from_config`` model, which
is saved as safetensors (tied embeddings stay tied) with the tokenizer transformers read from the
GGUF and the GGUF's own chat template (``chat_template.jinja``).

Refused before anything is loaded, in one sentence each: a file that is not a readable GGUF, a
LoRA adapter GGUF, an architecture transformers' GGUF loader cannot read, a tensor type it cannot
dequantize, and a model that will not fit into the available memory (``memory_needed``: twice its fp32
weights while loading; once, plus the logits of the comparison, while checking). Checked before the artifact is kept, from the written folder:

- tokenizer parity: the saved tokenizer encodes sample texts (prose, code, numbers, unicode and
  emoji, a chat rendered by the template) exactly as llama.cpp encodes them from the GGUF; a
  difference is an error and nothing is written (the model would read other tokens than it knew);
- the chat template is the GGUF's ``tokenizer.chat_template``, character for character;
- top-1 agreement and KL divergence of the dequantized model (transformers) against the GGUF
  (llama.cpp) over ~``compare_tokens`` tokens of held-out prose (``llmlab.scoring.compare``).

The results are in the manifest's ``info["checks"]`` and the artifact's metrics, and are sent as
progress events.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, LlmlabError, MissingExtraError, NotFoundError, StoreError
from llmlab.events import Reporter, emit
from llmlab.packaged import PACKAGE_PREFIX, packaged_gguf

if TYPE_CHECKING:
    from llmlab.runtime import Model
    from llmlab.store import Artifact, StepRecord, Store

# GGUF architecture names that transformers spells differently (its loader maps them the same way).
ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
# Entries of transformers' GGUF list that are not causal language models.
NOT_CAUSAL = ("general", "tokenizer", "t5", "umt5")
LOAD_FACTOR = 2  # fp32 copies alive at once while loading: the loader's arrays and the model's tensors
COMPARE_FACTOR = 20  # float32 [window, vocab] arrays alive at once while comparing (logits, float64 KL terms)
STAGES = ("check", "dequantize", "save", "tokenizer", "compare")


class DequantizeConfig(BaseModel):
    """Options of the ``dequantize`` step (``llmlab dequantize``, ``llmlab models add --dequantize``)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="A gguf artifact in the store, the path of a .gguf file (imported "
                       "first as a gguf artifact named after the file), or a packaged model (package:smollm2).")
    name: str | None = Field(None, description="Name of the base artifact to write; default: <gguf artifact>-hf.")
    compare_tokens: int = Field(1024, ge=0, description="About how many tokens of held-out prose the dequantized "
                                "model is compared on against the GGUF (top-1, KLD; the shipped prose text); 0 skips it.")

    @property
    def is_path(self) -> bool:
        return self.model.endswith(".gguf") or "/" in self.model or self.is_packaged

    @property
    def is_packaged(self) -> bool:
        return self.model.startswith(PACKAGE_PREFIX)

    @property
    def gguf_name(self) -> str:
        """The gguf artifact: ``model``, the file's name for a path, or NAME-gguf for ``package:NAME``."""
        if self.is_packaged:
            return self.model.removeprefix(PACKAGE_PREFIX) + "-gguf"
        return Path(self.model).stem if self.is_path else self.model

    @property
    def store_inputs(self) -> list[str]:
        """The store artifacts this step reads (none for a file path)."""
        return [] if self.is_path else [self.model]

    @property
    def output(self) -> str:
        return self.name or f"{self.gguf_name}-hf"


# ----- checks before loading -----
def supported_architectures() -> list[str]:
    """GGUF architectures transformers' GGUF loader reads as a causal language model."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise MissingExtraError("Dequantizing GGUF models", "lab", "transformers") from None
    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in NOT_CAUSAL]


def undequantizable_types(tensor_types: dict[str, int]) -> list[str]:
    """The tensor types among ``tensor_types`` that gguf-py (transformers' dequantizer) cannot turn into floats."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize as dequantize_block

    bad = []
    for name in tensor_types:
        try:
            qtype = GGMLQuantizationType[name]
            _, type_size = GGML_QUANT_SIZES[qtype]
            dequantize_block(np.zeros((1, type_size), dtype=np.uint8), qtype)  # one block of zeros
        except (KeyError, NotImplementedError, ValueError):
            bad.append(name)
    return bad


def memory_needed(path: Path, header: dict[str, Any], compare_tokens: int) -> int:
    """Bytes of memory the dequantization needs at its peak (measured on SmolLM2-135M: estimate 2.65 GB, peak
    RSS 2.6 GB): while loading, ``LOAD_FACTOR`` fp32 copies of the weights; while comparing, one fp32 copy,
    the GGUF file and ``COMPARE_FACTOR`` float32 ``window x vocabulary`` arrays of logits and their KL terms."""
    from llmlab.formats.gguf import tensor_shapes

    weights = int(header["n_params"]) * 4
    vocab = tensor_shapes(path).get("token_embd.weight", [0, 0])[-1]
    compare = min(512, compare_tokens) * int(vocab) * 4 * COMPARE_FACTOR if compare_tokens else 0
    return max(weights * LOAD_FACTOR, weights + int(header["size_bytes"]) + compare)


def check_gguf(path: Path, *, compare_tokens: int = 1024, available: int | None = None) -> dict[str, Any]:
    """The GGUF header of ``path`` when transformers can dequantize it into memory; else the reason, as an error."""
    from llmlab.formats.gguf import read_header
    from llmlab.runtime import check_memory

    header = read_header(path)  # CorruptFileError for a file that is not GGUF or is cut short
    if header.get("type") == "adapter":
        raise ConfigError(f"'{path.name}' is a LoRA adapter GGUF, not a model, so there are no weights to dequantize.",
                          "Dequantize the base model's GGUF; apply the adapter in llama.cpp (a gguf-adapter "
                          "artifact), or tune a new one on the dequantized base.")
    arch = str(header.get("arch") or "")
    supported = supported_architectures()
    if ARCH_ALIASES.get(arch, arch) not in supported:
        raise ConfigError(f"'{path.name}' has architecture '{arch or 'none'}', which transformers' GGUF loader "
                          "cannot read.", f"It reads: {', '.join(supported)}. Use the model's original Hugging "
                          "Face weights, or run the GGUF as it is (llmlab chat, llmlab serve).")
    bad = undequantizable_types(header["tensor_types"])
    if bad:
        raise ConfigError(f"'{path.name}' stores tensors as {', '.join(bad)}, which transformers cannot dequantize.",
                          "Use a GGUF of the same model in a common type (Q8_0, Q4_K_M, F16...), or its "
                          "original Hugging Face weights.")
    check_memory(memory_needed(path, header, compare_tokens), f"'{path.name}' dequantized to fp32 "
                 f"({header['n_params']:,} parameters) and compared with the GGUF", available=available)
    return header


# ----- the GGUF input -----
def resolve_gguf(config: DequantizeConfig, store: Store) -> tuple[Artifact | None, Path, bool]:
    """(the gguf artifact if it exists yet, the .gguf file, whether a path was given)."""
    from llmlab.store import sha256_file, validate_name

    if not config.is_path:
        art = store.get(config.model)
        if art.kind != "gguf":
            hint = ("Apply it to its base GGUF in llama.cpp, or dequantize the base GGUF." if art.kind == "gguf-adapter"
                    else "Its weights are already a Hugging Face model: tune or quantize it directly.")
            raise ConfigError(f"'{art.name}' is a {art.kind} artifact; dequantize takes a gguf model.", hint)
        return art, art.file(".gguf"), False
    path = packaged_gguf(config.model) if config.is_packaged else Path(config.model).expanduser()
    if not path.is_file():
        raise NotFoundError(f"'{path}' does not exist.", "Give a .gguf file or a gguf artifact name.")
    validate_name(config.gguf_name)
    if not store.exists(config.gguf_name):
        return None, path, True
    art = store.get(config.gguf_name)
    files = [rel for rel in art.manifest.files if rel.endswith(".gguf")]
    if art.kind != "gguf" or len(files) != 1 or art.manifest.files[files[0]] != sha256_file(path):
        raise StoreError(f"An artifact named '{config.gguf_name}' already exists and is not this file.",
                         f"Import the file under another name (llmlab models add {path} --name OTHER) and "
                         "dequantize that artifact.")
    return art, art.file(".gguf"), False  # the same file, imported before


# ----- loading and saving -----
def load_dequantized(path: Path) -> tuple[Any, Any]:
    """(fp32 transformers model, tokenizer) read from the GGUF file by transformers."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError:
        raise MissingExtraError("Dequantizing GGUF models", "lab", "torch and transformers") from None
    from llmlab.noise import captured_output, quiet_loading

    log = None
    try:  # the GGUF loader draws its own tqdm bar: its output goes to a log, dropped unless it fails
        with quiet_loading(), captured_output(prefix="llmlab-dequantize-") as log:
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as e:  # transformers fails in many ways on what its GGUF loader does not cover
        if log is not None:
            log.unlink(missing_ok=True)
        if isinstance(e, LlmlabError):
            raise
        raise ConfigError(f"transformers could not read '{path.name}': {type(e).__name__}: {str(e)[:300]}",
                          "Use the model's original Hugging Face weights, or run the GGUF as it is.") from None
    return model, tokenizer


def save_plain(model: Any, tokenizer: Any, chat_template: str | None, folder: Path) -> dict[str, Any]:
    """Save the dequantized ``model`` as a plain safetensors model (with ``tokenizer`` and the GGUF's chat
    template) in ``folder``; returns its config facts."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmlab.noise import quiet_loading

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no second set of weights: the plain model takes over the loaded tensors
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    tied = bool(getattr(plain.config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ConfigError(f"The dequantized weights do not fit a plain {type(plain).__name__}: "
                          f"{len(missing)} missing ({', '.join(missing[:3])}), {len(unexpected)} unexpected "
                          f"({', '.join(unexpected[:3])}).", "Use the model's original Hugging Face weights.")
    if tied:
        plain.tie_weights()
    if chat_template:
        tokenizer.chat_template = chat_template  # the GGUF's own template, character for character
    with quiet_loading():
        plain.save_pretrained(folder)  # safetensors; a tied lm_head is not stored twice
        tokenizer.save_pretrained(folder)
    return {"architecture": type(plain).__name__, "model_type": plain.config.model_type,
            "params": int(sum(p.numel() for p in plain.parameters())), "tied_embeddings": tied}


# ----- checks after saving -----
def sample_texts(gguf_model: Model) -> dict[str, str]:
    """Texts whose tokens must be the same in both tokenizers: prose, code, numbers, unicode and emoji,
    whitespace runs, and (when the model has a chat template) a rendered chat."""
    texts = {
        "prose": "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
        "code": "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # circle\n\nfor i in range(10):\n\tprint(i, area(i))",
        "numbers": "In 1969, 3.14159 and 2,718,281 were 42% of 1e-9; call +1 (555) 010-9999 on 2024-02-29 at 23:59.",
        "unicode": "Naïve café, Ünïcödé, 日本語のテキスト, Привет мир, ∑∫√≠, 🙂🚀👍🏽 and 👨‍👩‍👧.",
        "whitespace": "  leading spaces\n\n\nand   several    blanks\r\n\ttabs\t end ",
    }
    if gguf_model.chat_template:
        texts["chat"] = gguf_model.apply_chat_template(
            [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": "The capital of France is Paris."},
             {"role": "user", "content": "And of Italy? 🇮🇹"}], add_generation_prompt=True)
    return texts


def check_tokenizer(hf_model: Model, gguf_model: Model, source: str) -> dict[str, Any]:
    """Parity facts when the saved tokenizer encodes every sample as llama.cpp does; else a ConfigError."""
    if hf_model.vocab_size != gguf_model.vocab_size:
        raise ConfigError(f"The tokenizer transformers read from '{source}' has {hf_model.vocab_size:,} tokens, "
                          f"llama.cpp's has {gguf_model.vocab_size:,}; nothing was written.",
                          "Use the model's original Hugging Face weights and tokenizer.")
    texts = sample_texts(gguf_model)
    tokens = 0
    for what, text in texts.items():
        for special in (False, True):
            want, got = gguf_model.tokenize(text, add_special=special), hf_model.tokenize(text, add_special=special)
            if want != got:
                at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
                raise ConfigError(
                    f"The tokenizer transformers read from '{source}' encodes the {what} sample differently from "
                    f"llama.cpp (token {at}: {got[at:at + 3]} vs {want[at:at + 3]}), so the dequantized model would "
                    "not read the tokens it was trained on; nothing was written.",
                    "Use the model's original Hugging Face weights and tokenizer.")
            tokens += len(want)
    return {"match": True, "samples": list(texts), "tokens": tokens}


def check_template(hf_model: Model, template: str | None, source: str) -> bool | None:
    """True when the saved chat template is the GGUF's, None when the GGUF has none; else a ConfigError."""
    if not template:
        return None
    if hf_model.chat_template != template:
        raise ConfigError(f"The saved chat template differs from the one in '{source}'; nothing was written.",
                          "Report this: the template is copied from the GGUF metadata.")
    return True


def compare_texts(gguf_model: Model, store: Store, tokens: int) -> list[str]:
    """The first ~``tokens`` tokens of the shipped held-out prose (``llmlab.data.PROSE``)."""
    from llmlab.data import PROSE, resolve_texts

    text = "\n\n".join(resolve_texts(PROSE, store=store, artifact=None) or [])
    n = len(gguf_model.tokenize(text))
    return [text[: max(1, len(text) * tokens // n)] if n > tokens else text]


def run_checks(folder: Path, gguf_file: Path, header: dict[str, Any], config: DequantizeConfig, store: Store,
               progress: Reporter | None) -> dict[str, Any]:
    """Tokenizer parity, chat template and (unless ``compare_tokens`` is 0) top-1 / KLD of ``folder``
    against ``gguf_file`` (see module doc)."""
    from llmlab import runtime
    from llmlab.scoring import compare

    checks: dict[str, Any] = {}
    with runtime.load(gguf_file, engine="llama.cpp") as ref, runtime.load(folder, engine="transformers") as got:
        emit(progress, "progress", task="dequantize", done=3, total=len(STAGES), stage="tokenizer")
        checks["tokenizer_parity"] = check_tokenizer(got, ref, gguf_file.name)
        checks["chat_template_kept"] = check_template(got, header.get("chat_template"), gguf_file.name)
        emit(progress, "log", message=f"tokenizer parity: {checks['tokenizer_parity']['tokens']} tokens of "
             f"{len(checks['tokenizer_parity']['samples'])} samples identical; chat template "
             + {True: "kept", None: "none in the GGUF"}[checks["chat_template_kept"]])
        emit(progress, "progress", task="dequantize", done=4, total=len(STAGES), stage="compare")
        if config.compare_tokens:
            width = min(512, got.n_ctx, ref.n_ctx)
            texts = compare_texts(ref, store, config.compare_tokens)
            result = compare(got, ref, texts, max_len=width, stride=width, progress=progress)
            checks["compare"] = {k: result[k] for k in ("top1", "kld_mean", "kld_p99", "tokens")}
            emit(progress, "metric", task="compare", top1=result["top1"], kld_mean=result["kld_mean"])
    return checks


# ----- the step -----
def dequantize(config: DequantizeConfig, *, store: Store | None = None, progress: Reporter | None = None,
               overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Write the ``base`` artifact ``config.output`` dequantized from a GGUF (see module doc); returns it."""
    from llmlab.store import Parent, Store

    store = store or Store()
    started = time.perf_counter()
    emit(progress, "progress", task="dequantize", done=0, total=len(STAGES), stage="check")
    gguf_art, gguf_file, imported = resolve_gguf(config, store)
    if store.exists(config.output) and not overwrite:
        raise StoreError(f"An artifact named '{config.output}' already exists.",
                         "Choose another name, remove it, or pass --force / overwrite=True.")
    # everything refusable is refused before anything is imported or loaded
    header = check_gguf(gguf_file, compare_tokens=config.compare_tokens)
    if gguf_art is None:
        gguf_art = store.add(gguf_file, config.gguf_name)
        gguf_file = gguf_art.file(".gguf")
        emit(progress, "log", message=f"imported {gguf_file.name} as the gguf artifact {gguf_art.name}")
    try:
        with store.write(config.output, "base", overwrite=overwrite) as w:
            emit(progress, "progress", task="dequantize", done=1, total=len(STAGES), stage="dequantize")
            t0 = time.perf_counter()
            model, tokenizer = load_dequantized(gguf_file)
            load_s = time.perf_counter() - t0
            emit(progress, "progress", task="dequantize", done=2, total=len(STAGES), stage="save")
            t0 = time.perf_counter()
            facts = save_plain(model, tokenizer, header.get("chat_template"), w.path)
            del model, tokenizer
            save_s = time.perf_counter() - t0
            emit(progress, "log", message=f"dequantized {header['file_type']} to fp32 in {load_s:.1f} s, "
                 f"saved in {save_s:.1f} s")
            checks = run_checks(w.path, gguf_file, header, config, store, progress)
            w.parents = [Parent(name=gguf_art.name, content_hash=gguf_art.content_hash, role="source")]
            w.step = step
            w.info = {**facts, "source": gguf_art.name, "source_file_type": header["file_type"],
                      "source_arch": header["arch"], "source_tensor_types": header["tensor_types"],
                      "dtype": "float32", "checks": checks,
                      "seconds": {"dequantize": round(load_s, 2), "save": round(save_s, 2),
                                  "total": round(time.perf_counter() - started, 2)}}
            w.metrics = {k: v for k, v in checks.get("compare", {}).items() if k != "tokens"}
    except BaseException:
        if imported:  # the GGUF was imported for this call: leave the store as it was
            store.rm(gguf_art.name, force=True)
        raise
    emit(progress, "progress", task="dequantize", done=len(STAGES), total=len(STAGES), stage="done")
    return store.get(config.output)


def summary(art: Artifact) -> list[str]:
    """What a dequantization did and found, as lines for a front end to print."""
    info = art.manifest.info
    checks = info.get("checks", {})
    parity = checks.get("tokenizer_parity", {})
    lines = [f"{art.name}: {info.get('architecture')} ({info.get('params', 0):,} parameters, fp32) from "
             f"{info.get('source')} ({info.get('source_arch')}, {info.get('source_file_type')}) in "
             f"{info.get('seconds', {}).get('total', 0):.1f} s",
             f"  tokenizer parity: {'identical' if parity.get('match') else 'not checked'} on "
             f"{', '.join(parity.get('samples', []))} ({parity.get('tokens', 0)} tokens)",
             "  chat template: " + {True: "kept (same as the GGUF's)", None: "none in the GGUF"}.get(
                 checks.get("chat_template_kept"), "not checked")]
    cmp = checks.get("compare")
    if cmp:
        lines.append(f"  against the GGUF in llama.cpp: top-1 agreement {cmp['top1']:.3f}, KLD mean "
                     f"{cmp['kld_mean']:.4f} (p99 {cmp['kld_p99']:.4f}) over {cmp['tokens']} tokens")
    return lines


