"""What every engine shares: sampling parameters, the generation loop, stop strings, checks.

An engine (``hf.py``, ``llamacpp.py``) only supplies tokenization, the chat template and the
next-token logits (``_begin`` / ``_advance``, used through ``Model.decoding``). Sampling, stop
strings, ``max_tokens`` and incremental detokenization happen here, once, so the same
``SamplingParams`` mean exactly the same thing in every engine: with the same logits, two engines
pick the same tokens.

Sampling order (as in transformers): repetition penalty, temperature, top-k, top-p, then a draw
from numpy's ``default_rng(seed)``. ``temperature=0`` is greedy (argmax after the penalty).
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, ResourceError

Message = dict[str, str]

MB = 1024 * 1024


class SamplingParams(BaseModel):
    """How text is generated. The defaults suit chat; use ``SamplingParams.greedy()`` for scoring."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0, le=5, description="Randomness; 0 means greedy (always the likeliest token).")
    top_p: float = Field(0.95, gt=0, le=1,
                         description="Nucleus sampling: keep the likeliest tokens up to this probability mass.")
    top_k: int = Field(40, ge=0, description="Keep only the k likeliest tokens; 0 means no limit.")
    repetition_penalty: float = Field(
        1.0, gt=0, description="Above 1 discourages tokens already in the prompt or the output (1 = off).")
    max_tokens: int = Field(256, ge=1, description="Most tokens to generate.")
    seed: int | None = Field(None, description="Random seed; the same seed gives the same text (None: a fresh draw).")
    stop: list[str] = Field(default_factory=list,
                            description="Stop before any of these strings (not included in the output).")

    @classmethod
    def greedy(cls, max_tokens: int = 256, **kw: Any) -> SamplingParams:
        return cls(temperature=0.0, max_tokens=max_tokens, **kw)


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                 history: Sequence[int] = ()) -> int:
    """Pick the next token from raw ``logits`` (1-D) as described in the module doc."""
    x = logits.astype(np.float64, copy=True)
    if params.repetition_penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        seen = seen[seen < x.shape[0]]
        v = x[seen]
        x[seen] = np.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(x))
    x /= params.temperature
    if 0 < params.top_k < x.shape[0]:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x[x < kth] = -np.inf
    if params.top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order[0]])
        p /= p.sum()
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cut = int(np.searchsorted(np.cumsum(p), params.top_p)) + 1
        x[order[cut:]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    return int(rng.choice(x.shape[0], p=p))


class _StopFilter:
    """Holds back text that could be the start of a stop string; cuts at the first stop."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.buf += piece
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf, self.stopped = self.buf[: min(hits)], "", True
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out = self.buf[: len(self.buf) - keep]
        self.buf = self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def text_pieces(model: Any, tokens: Iterable[int], stop: Sequence[str] = ()) -> Iterator[str]:
    """The text of generated ``tokens`` in pieces as they come, cut before the first ``stop`` string
    (``model`` needs only ``detokenize``)."""
    stops = _StopFilter(stop)
    out: list[int] = []
    # Decode a short window (as text-generation-inference does): the text of out[prefix:]
    # minus that of out[prefix:read] is the new piece, and tokenizers that drop a leading
    # space at the start of a decode (SentencePiece) still get it right.
    prefix = read = 0
    for tok in tokens:
        out.append(tok)
        before = model.detokenize(out[prefix:read])
        text = model.detokenize(out[prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):  # e.g. half a UTF-8 character
            continue
        piece = stops.feed(text[len(before):])
        prefix, read = read, len(out)
        if piece:
            yield piece
        if stops.stopped:
            return
    tail = stops.feed(model.detokenize(out[prefix:])[len(model.detokenize(out[prefix:read])):])
    if rest := tail + stops.flush():
        yield rest


class Decoder:
    """One sequence being decoded (made by ``Model.decoding``): ``logits`` for the next token."""

    def __init__(self, model: Model, ids: Sequence[int]):
        self._model = model
        self.logits: np.ndarray = model._begin(ids)

    def push(self, token: int) -> np.ndarray:
        """Append ``token``; the logits for the one after it (also kept in ``logits``)."""
        self.logits = self._model._advance(token)
        return self.logits


class Model(abc.ABC):
    """A loaded model. Use as a context manager, or call ``close()`` when done."""

    engine: ClassVar[str]

    def __init__(self, path: Path):
        self.path = path
        self.artifact: Any = None  # the store Artifact it came from, set by ``load``
        # One generation at a time: engines keep a single KV cache.
        self._lock = threading.RLock()

    # ----- what an engine provides -----
    @abc.abstractmethod
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of ``text``; special-token text (``<|end|>``) maps to its token. ``add_special``
        adds what the tokenizer adds to a plain prompt (usually BOS)."""

    @abc.abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens left out."""

    @abc.abstractmethod
    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The model's own chat template rendered for ``messages``."""

    @abc.abstractmethod
    def token_text(self, token: int) -> str | None:
        """The text of one token as the vocabulary holds it, special tokens included (``<|end|>``);
        None for an id outside the vocabulary."""

    @property
    @abc.abstractmethod
    def chat_template(self) -> str | None:
        """The model's own chat template (Jinja source), or None when it has none."""

    @abc.abstractmethod
    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """``[len(ids), vocab]`` float32 log-softmax of the next-token distribution after each position."""

    @abc.abstractmethod
    def is_eog(self, token: int) -> bool:
        """True for tokens that end generation (EOS, end-of-turn)."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def n_ctx(self) -> int: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """engine, path, n_params, n_ctx, vocab_size, size_bytes, device (and engine extras)."""

    @abc.abstractmethod
    def _begin(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the cache, run the prompt ``ids``; return the logits for the next token."""

    @abc.abstractmethod
    def _advance(self, token: int) -> np.ndarray:
        """Append ``token`` to the cached sequence; return the logits for the next token."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the weights (the object is unusable afterwards)."""

    # ----- shared -----
    @contextlib.contextmanager
    def decoding(self, ids: Sequence[int]) -> Iterator[Decoder]:
        """Token-by-token access to the next-token logits of one sequence: ``decoder.logits`` after
        the prompt ``ids``, then ``decoder.push(token)`` for each token chosen. The model's cache
        is held for the whole block (other generations wait)."""
        with self._lock:
            yield Decoder(self, ids)

    def generate_ids(self, ids: Sequence[int], params: SamplingParams | None = None, *,
                     ignore_eos: bool = False) -> Iterator[int]:
        """Generated token ids after the prompt ``ids`` (stops at EOS, ``max_tokens`` or ``n_ctx``;
        stop strings are handled by the text-level methods)."""
        params = params or SamplingParams()
        if not ids:
            raise ConfigError("The prompt is empty: there is nothing to continue.")
        if len(ids) >= self.n_ctx:
            raise ConfigError(f"The prompt has {len(ids)} tokens but the model's context holds {self.n_ctx}.",
                              "Shorten the prompt or the conversation.")
        rng = np.random.default_rng(params.seed)
        history = list(ids)
        budget = min(params.max_tokens, self.n_ctx - len(ids))
        with self.decoding(ids) as decoder:
            for i in range(budget):
                tok = sample_token(decoder.logits, params, rng, history)
                if not ignore_eos and self.is_eog(tok):
                    return
                history.append(tok)
                yield tok
                if i + 1 < budget:
                    decoder.push(tok)

    def stream(self, prompt: str, params: SamplingParams | None = None, *, add_special: bool = True) -> Iterator[str]:
        """Continue ``prompt``, yielding text pieces as they are decoded."""
        params = params or SamplingParams()
        yield from text_pieces(self, self.generate_ids(self.tokenize(prompt, add_special=add_special), params), params.stop)

    def text_of(self, tokens: Iterable[int], params: SamplingParams | None = None) -> str:
        """Generated ``tokens`` as the text ``stream`` would have given (cut at ``params.stop``)."""
        return "".join(text_pieces(self, tokens, params.stop if params else ()))

    def complete(self, prompt: str, params: SamplingParams | None = None, *, add_special: bool = True) -> str:
        """The continuation of ``prompt`` as one string."""
        return "".join(self.stream(prompt, params, add_special=add_special))

    def stream_chat(self, messages: Sequence[Message], params: SamplingParams | None = None) -> Iterator[str]:
        """The assistant's reply to ``messages``, streamed; the template supplies BOS and roles."""
        check_messages(messages)
        yield from self.stream(self.apply_chat_template(messages), params, add_special=False)

    def chat(self, messages: Sequence[Message], params: SamplingParams | None = None) -> str:
        """The assistant's reply to ``messages`` (a system prompt is just the first message)."""
        return "".join(self.stream_chat(messages, params))

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def check_messages(messages: Sequence[Message]) -> None:
    """ConfigError unless ``messages`` is a non-empty list of {role, content} strings."""
    if not messages:
        raise ConfigError("No messages to answer.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"Message {i} must be a dict with string 'role' and 'content', got {m!r}.")


def check_memory(need_bytes: int, what: str, *, available: int | None = None, where: str = "RAM") -> None:
    """Refuse with numbers when ``need_bytes`` will not fit into the available memory."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    if need_bytes > available:
        raise ResourceError(
            f"Loading {what} needs about {need_bytes / MB:,.0f} MB of {where} but only "
            f"{available / MB:,.0f} MB is available.",
            "Close other programs, use a smaller or more quantized model, or a shorter context (n_ctx).",
        )
