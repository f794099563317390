"""One generation for the server: the runtime's loop plus what an API needs on top.

The runtime's ``Model.stream`` does tokenization, stop strings and incremental detokenization;
this module runs it with a token loop that also (1) constrains tokens with a llama.cpp grammar
(``response_format`` JSON schema, forced tool calls), (2) records each token's log-probability and
the top alternatives, (3) stops as soon as the client is gone (``cancel``), and (4) counts tokens.
Sampling itself is the runtime's ``sample_token``, so greedy output equals ``Model.chat``'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmlab.errors import ConfigError
from llmlab.runtime import Model, SamplingParams
from llmlab.runtime.base import sample_token


@dataclass
class TokenInfo:
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Generation:
    """A request's generation; iterate ``pieces()`` once, then read the counters."""

    model: Model
    prompt: str
    params: SamplingParams
    add_special: bool = True
    grammar: str | None = None  # GBNF text
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # a model holding several adapters runs with ``adapter`` (None: the base) for the whole generation
    selects_adapter: bool = False
    adapter: str | None = None
    batcher: Any = None  # a runtime.batched.Batcher: generate in its batch, beside other requests
    cancel: threading.Event = field(default_factory=threading.Event)
    tokens: list[TokenInfo] = field(default_factory=list)  # filled when ``logprobs``
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    def pieces(self) -> Iterator[str]:
        # Model.stream only calls tokenize, detokenize and generate_ids on its first argument.
        yield from Model.stream(self, self.prompt, self.params, add_special=self.add_special)  # type: ignore[arg-type]
        if self.finish_reason == "stop" and self.completion_tokens >= self.params.max_tokens:
            self.finish_reason = "length"

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return self.model.tokenize(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.model.detokenize(ids)

    def generate_ids(self, ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        m = self.model
        self.prompt_tokens = len(ids)
        if len(ids) + params.max_tokens > m.n_ctx:
            raise ConfigError(f"The prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}, but the "
                              f"model's context holds {m.n_ctx}.", "Lower max_tokens or shorten the prompt.")
        mask = _GrammarMask(m, self.grammar) if self.grammar else None
        chooser = _Chooser(params, np.random.default_rng(params.seed), mask, self.top_logprobs if self.logprobs else None)
        if self.batcher is not None:
            yield from self._in_batch(ids, params, chooser)
            return
        history = list(ids)
        try:
            scope = m.adapter(self.adapter) if self.selects_adapter else contextlib.nullcontext()  # type: ignore
            with scope, m.decoding(ids) as decoder:
                for i in range(params.max_tokens):
                    if self.cancel.is_set():
                        self.finish_reason = "cancelled"
                        return
                    tok = chooser(decoder.logits, history)
                    if not self.ignore_eos and m.is_eog(tok):
                        return
                    self.completion_tokens += 1
                    if self.logprobs:
                        self.tokens.append(chooser.infos[-1])
                    history.append(tok)
                    yield tok
                    if i + 1 < params.max_tokens:
                        decoder.push(tok)
        finally:
            if mask:
                mask.close()

    def _in_batch(self, ids: Sequence[int], params: SamplingParams, chooser: _Chooser) -> Iterator[int]:
        """``generate_ids`` through the server's batcher: the same ``chooser``, called in the batcher's
        thread for this request."""
        from llmlab.runtime.batched import ACTIVE, Request

        mask, infos = chooser.mask, chooser.infos
        request = Request(ids, params, ignore_eos=self.ignore_eos, choose=chooser,
                          on_token=lambda out: not self.cancel.is_set(),
                          adapter=self.adapter if self.selects_adapter else ACTIVE)
        tokens = self.batcher.stream(request)
        try:
            for tok in tokens:
                if self.logprobs:
                    self.tokens.append(infos[self.completion_tokens])
                self.completion_tokens += 1
                yield tok
        finally:
            tokens.close()  # waits until the batcher has let go of the request: no more calls to choose
            if mask:
                mask.close()
        if self.cancel.is_set():
            self.finish_reason = "cancelled"

    def text(self) -> str:
        return "".join(self.pieces())


@dataclass
class _Chooser:
    """How a request picks each token, one at a time or in a batch alike: the grammar mask (if any),
    the runtime's ``sample_token``, then the token's log-probability (when ``top`` is not None)."""

    params: SamplingParams
    rng: np.random.Generator
    mask: _GrammarMask | None
    top: int | None
    infos: list[TokenInfo] = field(default_factory=list)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        tok = sample_token(self.mask.apply(logits) if self.mask else logits, self.params, self.rng, history)
        if self.top is not None:
            self.infos.append(_token_info(logits, tok, self.top))
        if self.mask:
            self.mask.accept(tok)
        return tok


def _token_info(logits: np.ndarray, tok: int, top: int) -> TokenInfo:
    x = logits.astype(np.float64)
    lse = x.max() + np.log(np.exp(x - x.max()).sum())
    lp = x - lse
    best = np.argsort(-lp, kind="stable")[:top] if top else []
    return TokenInfo(tok, float(lp[tok]), [(int(t), float(lp[t])) for t in best])


class _GrammarMask:
    """llama.cpp's grammar sampler used as a mask: disallowed tokens get -inf logits."""

    def __init__(self, model: Model, grammar: str):
        vocab = getattr(model, "_vocab", None)
        if vocab is None:
            raise ConfigError("response_format with a JSON schema and forced tool calls need a GGUF model "
                              "(llama.cpp grammars).", "Serve the model's GGUF export, or drop response_format.")
        import llama_cpp

        self._ll = llama_cpp
        self._smpl = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not self._smpl:
            raise ConfigError("llama.cpp could not parse the grammar made from the JSON schema.",
                              "Simplify the schema (types, properties, required, enum, arrays).")
        n = model.vocab_size
        self._data = (llama_cpp.llama_token_data * n)()
        self._view = np.ctypeslib.as_array(ctypes.cast(self._data, ctypes.POINTER(ctypes.c_uint8)),
                                           shape=(n * ctypes.sizeof(llama_cpp.llama_token_data),))
        self._ids = np.arange(n, dtype=np.int32)
        self._n = n

    def apply(self, logits: np.ndarray) -> np.ndarray:
        rec = np.zeros(self._n, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        rec["id"], rec["logit"] = self._ids, logits[: self._n]
        self._view[:] = rec.view(np.uint8)
        arr = self._ll.llama_token_data_array(data=self._data, size=self._n, selected=-1, sorted=False)
        self._ll.llama_sampler_apply(self._smpl, ctypes.byref(arr))
        out = self._view.view(rec.dtype)
        masked = np.full_like(logits, -np.inf)
        masked[out["id"][: arr.size]] = out["logit"][: arr.size]
        if not np.isfinite(masked).any():
            raise ConfigError("No token fits the JSON schema here.", "Check the schema or raise max_tokens.")
        return masked

    def accept(self, token: int) -> None:
        self._ll.llama_sampler_accept(self._smpl, token)

    def close(self) -> None:
        if self._smpl:
            self._ll.llama_sampler_free(self._smpl)
            self._smpl = None


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF text for a JSON schema (llama.cpp's converter)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises plain exceptions on unsupported schemas
        raise ConfigError(f"The JSON schema cannot be turned into a grammar: {e}.",
                          "Use types, properties, required, enum and arrays.") from None
