"""The llama.cpp engine: ``.gguf`` files through llama-cpp-python.

Generation and scoring drive llama.cpp's low-level decode API directly (one sequence, a KV
cache we manage), so logits of every position are available for ``logprobs`` without
``logits_all`` (which would keep ``n_ctx x vocab`` floats for the whole session). Sampling is the
shared one in ``base.py``. The chat template comes from the GGUF metadata and is rendered the way
transformers renders it (same Jinja sandbox and options), so a prompt is the same text in both
engines. ``self.llm`` is the ``llama_cpp.Llama`` for callers that want llama-cpp-python's own API.
``lora_path`` (and ``lora_scale``) applies a GGUF LoRA adapter on top of the model without merging
(a ``gguf-adapter`` artifact loads this way: ``llmlab.quantize.adapter``).

One loaded base can hold several adapters and switch between them without reloading (a server
choosing the adapter per request)::

    m.add_adapter("reader", "reader.gguf"); m.add_adapter("poet", "poet.gguf")
    with m.adapter("poet"):        # None: the base alone
        m.chat(messages)

Adapters are applied by llama.cpp at run time on top of the memory-mapped base, so N adapters
cost their own (small) tensors, not N copies of the model. A switch clears the KV cache: keys and
values computed under one adapter are never reused under another.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmlab import settings
from llmlab.errors import ConfigError, MissingExtraError
from llmlab.formats.gguf import read_header, tensor_shapes
from llmlab.noise import quiet_llama_cpp
from llmlab.runtime.base import MB, Message, Model, check_memory

DEFAULT_MAX_CTX = 4096  # cap on the context when the model's own is larger (KV memory grows with it)
LORA = "lora"  # the name ``lora_path``'s adapter gets among the model's adapters


@dataclass(frozen=True)
class LoadedAdapter:
    """A GGUF LoRA adapter loaded into llama.cpp beside its base (freed with the base model)."""

    name: str
    path: Path
    scale: float
    handle: Any  # llama_adapter_lora_p


@functools.lru_cache(maxsize=8)
def _compile_template(template: str) -> Any:
    """A Jinja template compiled like transformers' ``_compile_jinja_template``."""
    import json
    from datetime import datetime

    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # transformers' {% generation %} tag (marks assistant text); rendering keeps its body.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


@functools.cache  # once a process
def warn_if_amx_build(llama_cpp: Any) -> None:
    """Warn when llama.cpp was compiled with ggml's AMX kernels: on a Xeon VM with AMX they crashed every
    quantized model (a general protection fault in ggml_backend_amx_mul_mat, no Python error), and
    ``make install`` builds without them (LLAMA_CMAKE_ARGS in the Makefile)."""
    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        logging.getLogger("llmlab").warning(
            "This llama-cpp-python was compiled with ggml's AMX kernels, which crashed quantized GGUF models "
            "(Segmentation fault) on an AMX Xeon. If one crashes, rebuild it without them: `make install` does, "
            "or see docs/troubleshooting.md.")


class LlamaCppModel(Model):
    """A GGUF model in llama.cpp. ``flash_attn`` (default on, as llama.cpp's own "auto" is on the CPU):
    flash attention for the model and any batch over it; ``False`` for the plain attention path, whose
    logits differ slightly (greedy answers can differ at near ties)."""

    engine = "llama.cpp"

    def __init__(self, path: Path, *, n_ctx: int | None = None, n_gpu_layers: int | None = None,
                 lora_path: str | Path | None = None, lora_scale: float = 1.0, flash_attn: bool = True):
        super().__init__(path)
        try:
            import llama_cpp
        except ImportError as e:
            raise MissingExtraError("Running GGUF models", "lab", "llama-cpp-python") from e
        self._ll = llama_cpp
        quiet_llama_cpp()
        header = read_header(path)  # a truncated or foreign file fails here, with its name
        if header.get("type") == "adapter":
            raise ConfigError(f"'{path.name}' is a LoRA adapter, not a model.",
                              "Load its base model with lora_path= this file, or load the gguf-adapter artifact.")
        lora_bytes = 0 if lora_path is None else self._adapter_header(Path(lora_path), header)["size_bytes"]
        meta = header["metadata"]
        arch = header["arch"]
        train_ctx = int(meta.get(f"{arch}.context_length") or DEFAULT_MAX_CTX)
        ctx = n_ctx or min(train_ctx, DEFAULT_MAX_CTX)
        # file (mmapped, fully touched while running) + f16 KV cache + compute buffers
        layers = int(meta.get(f"{arch}.block_count") or 0)
        heads = int(meta.get(f"{arch}.attention.head_count") or 1)
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv") or heads)
        width = int(meta.get(f"{arch}.embedding_length") or 0)
        kv = 2 * 2 * ctx * layers * kv_heads * (width // max(heads, 1))
        # the base file stays mapped (llama.cpp applies adapters at run time, see add_adapter)
        check_memory(header["size_bytes"] + lora_bytes + kv + 100 * MB, f"'{path.name}'")

        gpu = n_gpu_layers if n_gpu_layers is not None else (-1 if llama_cpp.llama_supports_gpu_offload() else 0)
        self._n_batch = min(512, ctx)
        if not gpu:
            settings.warn_if_cores_busy()
            warn_if_amx_build(llama_cpp)
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=ctx, n_batch=self._n_batch, n_ubatch=self._n_batch,
            n_threads=settings.threads(), n_threads_batch=settings.threads(), n_gpu_layers=gpu,
            logits_all=False, verbose=False, flash_attn=flash_attn,
        )
        self._adapters: dict[str, LoadedAdapter] = {}
        self._active: str | None = None
        self._base_shapes: dict[str, list[int]] | None = None
        self.device = "gpu" if gpu else "cpu"
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._n_ctx = self.llm.n_ctx()
        # our own prototype of llama_get_logits returning the address as an int (see _last_logits)
        self._get_logits = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libllama.so"))["llama_get_logits"]
        self._get_logits.restype, self._get_logits.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        self._logits_addr: int | None = None
        self._logits_view = np.empty(0, dtype=np.float32)
        self._n_vocab = self.llm.n_vocab()
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        # Free on close(), garbage collection or interpreter exit, whichever comes first: freed by
        # llama-cpp-python's own __del__ during shutdown, the model raises a TypeError traceback.
        self._finalizer = weakref.finalize(self, _release, self.llm, self._batch, llama_cpp)
        self._n_past = 0
        self._template = self.llm.metadata.get("tokenizer.chat_template")
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._header = header
        # llama-cpp-python's own lora_path would read the whole base into memory (no mmap): the
        # adapter is loaded as one of the model's adapters instead
        self.lora_path = None if lora_path is None else Path(lora_path)
        self.lora_scale = lora_scale
        if self.lora_path is not None:
            self.add_adapter(LORA, self.lora_path, lora_scale)
            self.use_adapter(LORA)

    # ----- adapters -----
    def _adapter_header(self, path: Path, base: dict[str, Any]) -> dict[str, Any]:
        """The header of a GGUF LoRA adapter for this base (ConfigError naming both when it is not)."""
        lora = read_header(path)
        if lora.get("type") != "adapter":
            raise ConfigError(f"'{path.name}' is not a LoRA adapter (its general.type is "
                              f"'{lora.get('type')}').", "Give a GGUF adapter (llmlab gguf-adapter makes one).")
        if lora["arch"] != base["arch"]:
            raise ConfigError(f"The adapter '{path.name}' is for {lora['arch']} models, but "
                              f"'{self.path.name}' is {base['arch']}.", "Use the adapter's own base model.")
        return lora

    def add_adapter(self, name: str, path: str | Path, scale: float = 1.0) -> None:
        """Load the GGUF LoRA adapter ``path`` as ``name`` beside the base (inactive until ``use_adapter``).
        Refused before llama.cpp reads it when its architecture or a tensor shape does not fit the base."""
        path = Path(path)
        if name in self._adapters:
            raise ConfigError(f"'{self.path.name}' already holds an adapter named '{name}'.",
                              "Give each adapter its own name.")
        lora = self._adapter_header(path, self._header)
        if self._base_shapes is None:
            self._base_shapes = tensor_shapes(self.path)
        for tensor, shape in tensor_shapes(path).items():
            target, _, part = tensor.rpartition(".")
            dim = {"lora_a": 0, "lora_b": 1}.get(part)  # A: [in, r], B: [r, out] against the base's [in, out]
            if dim is None:
                continue
            base_shape = self._base_shapes.get(target)
            if base_shape is None or shape[dim] != base_shape[dim]:
                raise ConfigError(f"The adapter '{path.name}' does not fit '{self.path.name}': its '{tensor}' "
                                  f"{shape} has no matching base tensor ({target}: {base_shape}).",
                                  "Serve each adapter with the base GGUF it was converted for.")
        check_memory(lora["size_bytes"] + 16 * MB, f"the adapter '{path.name}'")
        handle = self._ll.llama_adapter_lora_init(self.llm.model, str(path).encode("utf-8"))
        if not handle:
            raise ConfigError(f"llama.cpp could not load the adapter '{path.name}' on '{self.path.name}'.",
                              "Convert the adapter again for this base (llmlab gguf-adapter --base ...).")
        self._adapters[name] = LoadedAdapter(name, path, scale, handle)

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters loaded beside the base."""
        return list(self._adapters)

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def use_adapter(self, name: str | None) -> None:
        """Make ``name`` the active adapter (None: the base alone) for what runs next."""
        with self._lock:
            if name == self._active:
                return
            self.apply_adapter(self.llm.ctx, name)
            self._reset()  # the KV cache was computed under the other adapter
            self._active = name

    def check_adapter(self, name: str | None) -> None:
        """ConfigError unless ``name`` is None (the base alone) or one of the loaded adapters."""
        if name is not None and name not in self._adapters:
            raise ConfigError(f"'{self.path.name}' holds no adapter named '{name}'.",
                              f"Use one of: {', '.join(self._adapters) or '(none loaded)'}.")

    def apply_adapter(self, ctx: Any, name: str | None) -> None:
        """Make ``name`` (None: the base alone) the adapter that llama.cpp context ``ctx`` on these weights
        runs with (the model's own, or a batch's); the caller drops what its cache computed under another."""
        self.check_adapter(name)
        ll = self._ll
        if name is None:
            rc = ll.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            a = self._adapters[name]
            rc = ll.llama_set_adapters_lora(ctx, (ll.llama_adapter_lora_p_ctypes * 1)(a.handle), 1,
                                            (ctypes.c_float * 1)(a.scale))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not switch '{self.path.name}' to the adapter {name!r}.")

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[LlamaCppModel]:
        """The model with adapter ``name`` active (None: the base alone), held for the block so no other
        thread switches it meanwhile."""
        with self._lock:
            self.use_adapter(name)
            yield self

    # ----- tokens and templates -----
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special and self._add_bos, special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids), special=False).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str | None:
        if token < 0 or token >= self._n_vocab:
            return None
        return self._ll.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> str | None:
        return self._template or None

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        if not self._template:
            raise ConfigError(f"'{self.path.name}' has no chat template in its metadata.",
                              "Use complete() with a plain prompt, or convert a model that has a chat template.")
        v, ll = self._vocab, self._ll
        specials = {"bos_token": ll.llama_vocab_bos(v), "eos_token": ll.llama_vocab_eos(v),
                    "pad_token": ll.llama_vocab_pad(v)}
        named = {k: t for k, tok in specials.items() if (t := self.token_text(tok)) is not None}
        return _compile_template(self._template).render(
            messages=[dict(m) for m in messages], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **named)

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    @property
    def bos_id(self) -> int | None:
        bos = self._ll.llama_vocab_bos(self._vocab)
        return None if bos < 0 else int(bos)

    @property
    def adds_bos(self) -> bool:
        """Whether llama.cpp puts the BOS token before a prompt (the GGUF's ``add_bos_token``)."""
        return self._add_bos

    @property
    def eos_id(self) -> int | None:
        eos = self._ll.llama_vocab_eos(self._vocab)
        return None if eos < 0 else int(eos)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def info(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "path": str(self.path), "n_ctx": self.n_ctx, "vocab_size": self.vocab_size,
            "n_params": int(self._ll.llama_model_n_params(self.llm.model)), "device": self.device,
            "size_bytes": self._header["size_bytes"], "file_type": self._header["file_type"],
            **({"lora_path": str(self.lora_path), "lora_scale": self.lora_scale} if self.lora_path else {}),
            **({"adapters": {n: str(a.path) for n, a in self._adapters.items()}, "active_adapter": self._active}
               if self._adapters else {}),
        }

    # ----- decoding -----
    def _decode(self, ids: Sequence[int], all_logits: bool) -> np.ndarray:
        """Append ``ids`` to the cached sequence; logits of every new position, or of the last."""
        ll, b = self._ll, self._batch
        if self._n_past + len(ids) > self._n_ctx:
            raise ConfigError(f"{self._n_past + len(ids)} tokens do not fit the model's context of {self._n_ctx}.")
        rows = []
        for start in range(0, len(ids), self._n_batch):
            chunk = ids[start:start + self._n_batch]
            b.n_tokens = len(chunk)
            for j, tok in enumerate(chunk):
                b.token[j] = tok
                b.pos[j] = self._n_past + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = all_logits
            b.logits[len(chunk) - 1] = True
            if ll.llama_decode(self.llm.ctx, b) != 0:
                raise RuntimeError(f"llama.cpp failed to decode {len(chunk)} tokens of '{self.path.name}'.")
            self._n_past += len(chunk)
            if all_logits:
                logits = ll.llama_get_logits(self.llm.ctx)
                rows.append(np.ctypeslib.as_array(logits, shape=(len(chunk), self._n_vocab)).copy())
        return np.concatenate(rows) if all_logits else self._last_logits()

    def _last_logits(self) -> np.ndarray:
        """A copy of the logits of the one position that asked for them.

        Generation calls this once per token, so it reads llama.cpp's output buffer through a
        numpy view made once per buffer address (the buffer moves only when llama.cpp grows it):
        building a fresh view per token (``np.ctypeslib.as_array``) cost more than the sampling."""
        addr = self._get_logits(self.llm.ctx)
        if addr != self._logits_addr:
            self._logits_view = np.ctypeslib.as_array((ctypes.c_float * self._n_vocab).from_address(addr))
            self._logits_addr = addr
        return self._logits_view.copy()

    def _reset(self) -> None:
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.llm.ctx), True)
        self._n_past = 0
        self.llm.n_tokens = 0  # keep llama-cpp-python's own prefix cache from trusting our KV state

    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        with self._lock:
            self._reset()
            logits = self._decode(list(ids), all_logits=True)
        m = logits.max(axis=-1, keepdims=True)
        lse = m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
        return (logits - lse).astype(np.float32)

    def _begin(self, ids: Sequence[int]) -> np.ndarray:
        self._reset()
        return self._decode(list(ids), all_logits=False)

    def _advance(self, token: int) -> np.ndarray:
        return self._decode([token], all_logits=False)

    def close(self) -> None:
        self._finalizer()


def _release(llm: Any, batch: Any, ll: Any) -> None:
    ll.llama_batch_free(batch)
    llm.close()
