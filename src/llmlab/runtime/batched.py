"""Continuous batching over llama.cpp: several sequences decoded together in one context.

```python
from llmlab.runtime import load, SamplingParams
from llmlab.runtime.batched import chat_many
with load("demo-q8_0") as m:
    answers = chat_many(m, [[{"role": "user", "content": q}] for q in questions], SamplingParams.greedy(16))
```

One pass over the weights (``llama_decode``) serves every active sequence: each has its own
``seq_id`` in a context made for ``slots`` sequences beside the model's own, and its own sampling
(the shared ``sample_token`` of ``base.py``, with its own seed and history) and its own KV cache of
``slot_ctx`` tokens. A request joins as soon as a slot is free, and its prompt is fed in chunks beside
the tokens of the sequences already decoding; a finished one leaves at once. Its slot keeps what its
cache holds, so a later prompt with the same start (a system prompt, an agent's instructions, few-shot
examples) takes the slot sharing the longest prefix and computes only the rest (``reuse_prefix``).

Greedy output equals ``Model.generate_ids``'s for the request alone with F32, Q8_0 and Q4_1 weights
(``tests/test_batched.py``). llama.cpp picks its matrix kernels by the number of tokens in a batch,
and for some types (F16, K-quants) the kernels for several tokens round differently from the one for
a single token: there a sequence can take another token at a near tie (SmolLM2 Q4_K_M: 6 of 8 answers
of 32 tokens identical), as it does in llama.cpp's own server.

Adapters: the batch runs with the adapter the model had active when the engine was made (a GGUF loaded
with ``lora_path``), or, per request, with any adapter the model holds (``Request.adapter``, a bundle of
several adapters). llama.cpp applies one adapter set to a whole context, so one decode step takes the
sequences of one adapter, and the adapters in use take turns. The other engines generate one request after
the other through the same functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmlab.errors import ConfigError
from llmlab.runtime.base import Message, Model, SamplingParams, check_messages, sample_token, text_pieces

ACTIVE = "<active>"  # Request.adapter: the adapter the model had active when the engine was made
DEFAULT_SLOTS = 4
SLOT_CTX = 1024  # KV tokens per slot by default


@dataclass
class Request:
    """One generation: prompt ``ids`` and how to sample. ``on_token(out)`` (optional) sees the tokens
    generated so far after each one and returns False to end the sequence there (a stop string, a
    client gone); ``choose(logits, history)`` (optional) picks each token from the raw logits instead of
    ``sample_token`` (a grammar mask, log-probabilities). ``out`` holds the result once ``done`` is set;
    ``error`` what ``choose`` raised, if it did."""

    ids: Sequence[int]
    params: SamplingParams
    ignore_eos: bool = False
    on_token: Callable[[list[int]], bool] | None = None
    choose: Callable[[np.ndarray, list[int]], int] | None = None
    out: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    cancelled: bool = False  # set by the caller: the engine drops the sequence before its next token
    on_done: Callable[[], None] | None = None
    adapter: str | None = ACTIVE  # one of the model's adapters, or None for the base alone

    def finish(self, error: BaseException | None = None) -> None:
        """Called by the engine when it is done with the request (it never touches it again)."""
        self.error = self.error or error
        self.done.set()
        if self.on_done is not None:
            self.on_done()


@dataclass(eq=False)  # compared by identity: a sequence is itself, whatever it holds
class _Seq:
    req: Request
    seq_id: int
    adapter: str | None  # the adapter its cache is computed under
    feed: list[int]  # tokens still to decode: the prompt (in chunks), then the last sampled one
    budget: int  # tokens it may generate (max_tokens within the model's context)
    rng: np.random.Generator
    history: list[int]
    pos: int = 0  # tokens in its KV cache (a reused prefix included)
    decoded: list[int] = field(default_factory=list)  # those tokens, kept for the next request in the slot
    row: int = -1  # the batch row whose logits it samples from after this step (-1: none yet)


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def batchable(model: Model) -> bool:
    """True when ``model`` can decode several sequences in one pass (a GGUF, with or without adapters)."""
    return model.engine == "llama.cpp" and hasattr(model, "apply_adapter")


class BatchEngine:
    """``slots`` sequences of one llama.cpp model decoded together (see module doc)."""

    def __init__(self, model: Model, *, slots: int = DEFAULT_SLOTS, slot_ctx: int | None = None, n_batch: int = 512,
                 reuse_prefix: bool = True):
        if not batchable(model):
            raise ConfigError(f"'{model.path.name}' cannot decode sequences in a batch (only a GGUF model can).",
                              "Generate one request at a time (generate_many does).")
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, not {slots}.")
        import llama_cpp as ll

        self._ll, self.model, self.slots = ll, model, slots
        self.slot_ctx = min(slot_ctx or SLOT_CTX, model.n_ctx)
        self.n_batch = n_batch
        # The model's own context settings (flash attention, threads, rope), with a KV cache of its own
        # per sequence (not one shared: in a shared one a sequence's cells sit among the others', which
        # changes the order of the attention sums and so, at near ties, greedy tokens).
        params = ll.llama_context_params.from_buffer_copy(model.llm.context_params)
        params.n_ctx, params.n_batch, params.n_ubatch = slots * self.slot_ctx, n_batch, n_batch
        params.n_seq_max, params.kv_unified = slots, False
        self._ctx = ll.llama_init_from_model(model.llm.model, params)  # the weights are shared, not copied
        if not self._ctx:
            raise ConfigError(f"llama.cpp could not make a context of {slots} x {self.slot_ctx} tokens.",
                              "Use fewer slots or a smaller slot_ctx.")
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self._n_vocab = model.vocab_size
        self._mem = ll.llama_get_memory(self._ctx)
        # What each slot's KV cache holds once its sequence has left (prompt reuse): the tokens, and when
        # the slot was last used. A new request takes the free slot whose cache shares its longest prefix.
        self.reuse_prefix = reuse_prefix
        self._held: dict[int, tuple[str | None, list[int]]] = {}  # seq_id -> (adapter, tokens)
        self._used: dict[int, int] = {}
        self._starts = 0
        self.reused_tokens = 0  # prompt tokens not recomputed, over the engine's life
        self.default_adapter: str | None = getattr(model, "active_adapter", None)
        self._adapter: str | None = None  # what the context runs with now (a new context: the base)
        self._turn = 0

    def close(self) -> None:
        if self._ctx:
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def forget(self) -> None:
        """Drop every cached prompt (after a failed decode the cache cannot be trusted)."""
        self._ll.llama_memory_clear(self._mem, True)
        self._held.clear()

    def check(self, r: Request) -> None:
        """ConfigError for a request the engine cannot run."""
        if not r.ids:
            raise ConfigError("The prompt is empty: there is nothing to continue.")
        if len(r.ids) >= self.slot_ctx:
            raise ConfigError(f"The prompt has {len(r.ids)} tokens but a slot's context holds {self.slot_ctx}.",
                              "Shorten the prompt, or make the engine with a larger slot_ctx.")
        if r.adapter != ACTIVE:
            self.model.check_adapter(r.adapter)  # type: ignore[attr-defined]

    def run(self, requests: Sequence[Request], progress: Callable[[int], None] | None = None) -> list[Request]:
        """Generate every request (each ``out`` filled), ``slots`` at a time, joining as others finish;
        ``progress(n)`` after each one that finishes, with how many have."""
        for r in requests:
            self.check(r)
        waiting, active, done = deque(requests), [], 0
        while waiting or active:
            while waiting and len(active) < self.slots:
                active.append(self._start(waiting.popleft(), active))
            finished = len(self.tick(active))
            done += finished
            if progress is not None and finished:
                progress(done)
        return list(requests)

    def _start(self, r: Request, active: list[_Seq]) -> _Seq:
        free = sorted(set(range(self.slots)) - {s.seq_id for s in active})
        ids = list(r.ids)
        adapter = self.default_adapter if r.adapter == ACTIVE else r.adapter

        def shared(q: int) -> int:  # a cache computed under another adapter is of no use
            held_adapter, held = self._held.get(q, (adapter, []))
            return _shared(held, ids) if held_adapter == adapter else 0

        # the free slot sharing the longest prefix with this prompt; on a tie, the one used longest ago
        seq_id = max(free, key=lambda q: (shared(q), -self._used.get(q, -1)))
        keep = min(shared(seq_id), len(ids) - 1)  # its last token is computed again, for its logits
        self._held.pop(seq_id, None)
        if not self.reuse_prefix or not self._ll.llama_memory_seq_rm(self._mem, seq_id, keep, -1):
            self._ll.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            keep = 0
        self._starts += 1
        self._used[seq_id] = self._starts
        self.reused_tokens += keep
        budget = min(r.params.max_tokens, self.slot_ctx - len(ids))
        return _Seq(r, seq_id, adapter, ids[keep:], budget, np.random.default_rng(r.params.seed), ids, pos=keep,
                    decoded=ids[:keep])

    def tick(self, active: list[_Seq]) -> list[Request]:
        """One decode step of the sequences in ``active`` (of one adapter, when they use several), then a
        token for each that has its logits; the finished ones leave ``active`` (``done`` set) and are returned."""
        group = self._turn_of(active)
        self._step(group)
        finished = []
        for s in [s for s in active if (s.row >= 0 and s in group) or s.req.cancelled]:
            if not s.req.cancelled and self._sample(s):
                continue
            active.remove(s)
            self._held[s.seq_id] = (s.adapter, s.decoded)  # kept for a later prompt with the same start
            s.req.finish()
            finished.append(s.req)
        return finished

    def _turn_of(self, active: list[_Seq]) -> list[_Seq]:
        """The sequences that decode this step: all of them, or, when they use several adapters, those of
        the adapter whose turn it is (turns rotate); the context is switched to that adapter."""
        adapters = list(dict.fromkeys(s.adapter for s in active))  # in order of arrival
        if not adapters:
            return active
        self._turn += 1
        adapter = adapters[self._turn % len(adapters)]
        if adapter != self._adapter:
            self.model.apply_adapter(self._ctx, adapter)  # type: ignore[attr-defined]
            self._adapter = adapter
        return active if len(adapters) == 1 else [s for s in active if s.adapter == adapter]

    def _step(self, active: list[_Seq]) -> None:
        """One ``llama_decode`` of each sequence's next tokens (prompts chunked to fit ``n_batch``)."""
        b, n = self._batch, 0
        # In seq_id order: with a KV cache per sequence, llama.cpp puts sequences in one pass over the
        # weights only while each seq_id is the one before it plus one (split_equal's "sequential"
        # rule), so a batch in arrival order (say 2, 3, 0, 1) took two passes (measured: 1.5x the time
        # of a step, on every other round of requests).
        for s in sorted(active, key=lambda s: s.seq_id):
            take = s.feed[: self.n_batch - n]
            for j, tok in enumerate(take):
                b.token[n + j], b.pos[n + j], b.n_seq_id[n + j], b.seq_id[n + j][0] = tok, s.pos + j, 1, s.seq_id
                b.logits[n + j] = False
            s.pos += len(take)
            s.decoded += take
            s.feed = s.feed[len(take):]
            s.row = n + len(take) - 1 if take and not s.feed else -1  # logits once its input is all in
            if s.row >= 0:
                b.logits[s.row] = True
            n += len(take)
        b.n_tokens = n
        if n and self._ll.llama_decode(self._ctx, b) != 0:
            self.forget()
            raise RuntimeError(f"llama.cpp failed to decode a batch of {n} tokens of '{self.model.path.name}'.")

    def _sample(self, s: _Seq) -> bool:
        """Sample ``s``'s next token; False when the sequence is done (EOS, budget, ``on_token``)."""
        ptr = self._ll.llama_get_logits_ith(self._ctx, s.row)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,))
        try:
            tok = (s.req.choose(logits, s.history) if s.req.choose is not None
                   else sample_token(logits, s.req.params, s.rng, s.history))
        except Exception as e:  # e.g. no token fits a grammar: that request fails, the others go on
            s.req.error = e
            return False
        if not s.req.ignore_eos and self.model.is_eog(tok):
            return False
        s.req.out.append(tok)
        s.history.append(tok)
        wanted = s.req.on_token(s.req.out) if s.req.on_token is not None else True  # it sees every token
        if not wanted or len(s.req.out) >= s.budget:
            return False
        s.feed = [tok]
        return True


class Batcher:
    """A ``BatchEngine`` in a thread of its own, for requests that arrive over time (a server): each
    joins the running batch at the next step and streams its tokens as they come.

    ```python
    with Batcher(model, slots=4) as b:
        for tok in b.stream(Request(ids, params)): ...      # from any thread
    ```
    """

    def __init__(self, model: Model, *, slots: int = DEFAULT_SLOTS, slot_ctx: int | None = None,
                 reuse_prefix: bool = True):
        self.engine = BatchEngine(model, slots=slots, slot_ctx=slot_ctx, reuse_prefix=reuse_prefix)
        self._pending: deque[Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llmlab-batcher", daemon=True)
        self._thread.start()

    @property
    def slots(self) -> int:
        return self.engine.slots

    def submit(self, r: Request) -> Request:
        """Queue ``r`` (ConfigError at once if the engine cannot run it); ``r.done`` is set when it ends."""
        self.engine.check(r)
        with self._wake:
            if self._closed:
                raise RuntimeError("The batcher is closed.")
            self._pending.append(r)
            self._wake.notify()
        return r

    def stream(self, r: Request) -> Iterator[int]:
        """Submit ``r`` and yield its tokens as they are made; closing the iterator early ends the
        sequence (and waits until the engine has let go of it, so its callbacks run no more)."""
        tokens: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        inner = r.on_token

        def on_token(out: list[int]) -> bool:
            tokens.put(out[-1])
            return inner(out) if inner is not None else True

        r.on_token, r.on_done = on_token, lambda: tokens.put(None)
        self.submit(r)
        try:
            while (tok := tokens.get()) is not None:
                yield tok
        finally:
            r.cancelled = True
            r.done.wait()
        if r.error is not None:
            raise r.error

    def stream_chat(self, messages: Sequence[Message], params: SamplingParams | None = None,
                    adapter: str | None = ACTIVE) -> Iterator[str]:
        """The assistant's reply to ``messages`` in text pieces, as ``Model.stream_chat`` gives it,
        generated in the batch beside the other requests (from any thread), with ``adapter`` (see Request)."""
        params = params or SamplingParams()
        check_messages(messages)
        m = self.engine.model
        ids = m.tokenize(m.apply_chat_template(messages), add_special=False)
        with contextlib.closing(self.stream(Request(ids, params, adapter=adapter))) as tokens:
            yield from text_pieces(m, tokens, params.stop)

    def _loop(self) -> None:
        active: list[_Seq] = []
        while True:
            with self._wake:
                while not self._pending and not active and not self._closed:
                    self._wake.wait()
                if self._closed:
                    break
                while self._pending and len(active) < self.engine.slots:
                    active.append(self.engine._start(self._pending.popleft(), active))
            try:
                self.engine.tick(active)
            except Exception as e:  # a failed decode fails the requests in it, not the server
                for s in active:
                    s.req.finish(e)
                active.clear()
        closed = RuntimeError("The batcher was closed before the request finished.")
        for r in [s.req for s in active] + list(self._pending):
            r.finish(closed)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self.engine.close()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def generate_many(model: Model, requests: Sequence[Request], *, slots: int | None = None,
                  progress: Callable[[int], None] | None = None) -> list[Request]:
    """Fill each request's ``out``: batched where the model allows it (``batchable``), else one by one;
    ``progress(n)`` after each request that finishes."""
    slots = slots or min(DEFAULT_SLOTS, len(requests))
    if batchable(model) and slots > 1:
        # a KV cache per slot as long as the longest request needs, not the model's whole context
        need = max(len(r.ids) + r.params.max_tokens for r in requests)
        with BatchEngine(model, slots=slots, slot_ctx=min(need + 1, model.n_ctx)) as engine:
            return engine.run(requests, progress)
    for i, r in enumerate(requests):
        for tok in model.generate_ids(r.ids, r.params, ignore_eos=r.ignore_eos):
            r.out.append(tok)
            if r.on_token is not None and not r.on_token(r.out):
                break
        if progress is not None:
            progress(i + 1)
    return list(requests)


def chat_many(model: Model, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None, *,
              slots: int | None = None, progress: Callable[[int], None] | None = None) -> list[str]:
    """The assistant's reply to each conversation, as ``model.chat`` gives it, decoded together."""
    params = params or SamplingParams()
    for messages in conversations:
        check_messages(messages)

    # The text-level stop strings end a sequence early, looked for in the text of its last few tokens
    # (each token is at least a character or part of one); text_of cuts the output exactly.
    window = max((len(s) for s in params.stop), default=0) + 8

    def stop_seen(out: list[int]) -> bool:
        tail = model.detokenize(out[-window:])
        return not any(s in tail for s in params.stop if s)

    requests = [Request(model.tokenize(model.apply_chat_template(m), add_special=False), params,
                        on_token=stop_seen if params.stop else None) for m in conversations]
    generate_many(model, requests, slots=slots, progress=progress)
    return [model.text_of(r.out, params) for r in requests]
