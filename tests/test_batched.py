"""Continuous batching over llama.cpp (``llmlab.runtime.batched``): sequences decoded together give what
each gives alone, requests join and leave between steps, and stop strings and cancellation end one
sequence without touching the others."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.runtime import SamplingParams, load  # noqa: E402
from llmlab.runtime.batched import BatchEngine, Request, batchable, chat_many, generate_many  # noqa: E402

PROMPTS = ["Once upon a time", "The river", "A", "Bodo lives in the town of Dunmere, which stands on the river",
           "Mira keeps a goat", "In the morning the baker"]


@pytest.fixture(scope="module")
def micro(micro_gguf):
    with load(micro_gguf("f32")) as m:
        yield m


def alone(model, ids, params, ignore_eos=True) -> list[int]:
    return list(model.generate_ids(ids, params, ignore_eos=ignore_eos))


def test_greedy_batch_equals_each_request_alone(micro) -> None:
    params = SamplingParams.greedy(max_tokens=24)
    ids = [micro.tokenize(p, add_special=True) for p in PROMPTS]
    # 3 slots for 6 requests of different lengths: the last three join as the first ones leave
    reqs = generate_many(micro, [Request(i, params, ignore_eos=True) for i in ids], slots=3)
    assert [r.out for r in reqs] == [alone(micro, i, params) for i in ids]
    assert all(len(r.out) == 24 for r in reqs)


def test_seeded_sampling_is_per_sequence(micro) -> None:
    """Each request keeps its own seed and history: the batch draws what each draws alone."""
    ids = micro.tokenize(PROMPTS[0], add_special=True)
    params = [SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_tokens=16, seed=s) for s in (1, 2, 3)]
    reqs = generate_many(micro, [Request(ids, p, ignore_eos=True) for p in params], slots=3)
    assert [r.out for r in reqs] == [alone(micro, ids, p) for p in params]
    assert len({tuple(r.out) for r in reqs}) > 1  # different seeds, different text


def test_fewer_slots_than_requests_queue_them(micro) -> None:
    params = SamplingParams.greedy(max_tokens=20)
    ids = [micro.tokenize(p, add_special=True) for p in PROMPTS]
    with BatchEngine(micro, slots=1) as engine:  # one at a time: each waits for the one before to leave
        reqs = engine.run([Request(i, params, ignore_eos=True) for i in ids])
    assert [r.out for r in reqs] == [alone(micro, i, params) for i in ids]


def test_budget_stops_at_the_slot_context(micro) -> None:
    ids = micro.tokenize(PROMPTS[3], add_special=True)
    with BatchEngine(micro, slots=2, slot_ctx=len(ids) + 5) as engine:
        (r,) = engine.run([Request(ids, SamplingParams.greedy(max_tokens=50), ignore_eos=True)])
    assert len(r.out) == 5


def test_on_token_ends_one_sequence_only(micro) -> None:
    params = SamplingParams.greedy(max_tokens=16)
    ids = micro.tokenize(PROMPTS[1], add_special=True)
    cut = Request(ids, params, ignore_eos=True, on_token=lambda out: len(out) < 5)  # a client that goes away
    full = Request(ids, params, ignore_eos=True)
    generate_many(micro, [cut, full], slots=2)
    assert len(cut.out) == 5 and len(full.out) == 16 and full.out[:5] == cut.out


def test_prompts_longer_than_a_batch_are_fed_in_chunks(micro) -> None:
    params = SamplingParams.greedy(max_tokens=8)
    long_ids = micro.tokenize(" ".join(PROMPTS * 2), add_special=True)[:200]
    short_ids = micro.tokenize(PROMPTS[2], add_special=True)
    with BatchEngine(micro, slots=2, n_batch=32) as engine:  # micro: a 256-token context
        assert len(long_ids) > 32
        reqs = engine.run([Request(long_ids, params, ignore_eos=True), Request(short_ids, params, ignore_eos=True)])
    assert [r.out for r in reqs] == [alone(micro, long_ids, params), alone(micro, short_ids, params)]


def test_bad_requests_are_refused(micro) -> None:
    with pytest.raises(ConfigError, match="prompt is empty"):
        generate_many(micro, [Request([], SamplingParams.greedy(4)), Request([1], SamplingParams.greedy(4))], slots=2)
    with BatchEngine(micro, slots=2, slot_ctx=64) as engine, pytest.raises(ConfigError, match="context holds 64"):
        engine.run([Request(list(range(1, 80)), SamplingParams.greedy(4))])
    with pytest.raises(ConfigError, match="slots must be"):
        BatchEngine(micro, slots=0)


def test_other_engines_generate_one_by_one(micro_model_dir) -> None:
    with load(micro_model_dir) as hf:
        assert not batchable(hf)
        ids = hf.tokenize(PROMPTS[0], add_special=True)
        (r,) = generate_many(hf, [Request(ids, SamplingParams.greedy(6), ignore_eos=True)], slots=4)
        assert r.out == alone(hf, ids, SamplingParams.greedy(6))


def test_real_model_answers_in_a_batch_as_alone(smollm2_gguf) -> None:
    """SmolLM2-135M-Instruct: batched chat replies equal ``Model.chat``'s, stop strings included."""
    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?",
                 "Which planet is known as the red planet?", "What do bees make?", "Write a haiku about rain.",
                 "Who wrote Hamlet?", "Explain photosynthesis in one sentence."]
    convs = [[{"role": "user", "content": q}] for q in questions]
    with load(smollm2_gguf, n_ctx=512) as m:
        params = SamplingParams.greedy(max_tokens=32)
        assert chat_many(m, convs, params, slots=4) == [m.chat(c, params) for c in convs]
        stopped = SamplingParams.greedy(max_tokens=24, stop=["."])
        got = chat_many(m, convs, stopped, slots=4)
        assert got == [m.chat(c, stopped) for c in convs] and not any("." in g for g in got)


def test_batcher_serves_requests_arriving_from_threads(micro) -> None:
    """Requests submitted over time from several threads join the running batch; each streams what it
    would generate alone, and closing a stream early ends that sequence only."""
    import threading

    from llmlab.runtime.batched import Batcher

    params = SamplingParams.greedy(max_tokens=20)
    ids = [micro.tokenize(p, add_special=True) for p in PROMPTS]
    got: dict[int, list[int]] = {}
    with Batcher(micro, slots=3) as batcher:
        def one(i: int) -> None:
            got[i] = list(batcher.stream(Request(ids[i], params, ignore_eos=True)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ids))]
        for t in threads:
            t.start()
        early = batcher.stream(Request(ids[0], SamplingParams.greedy(max_tokens=200), ignore_eos=True))
        first = [next(early) for _ in range(3)]
        early.close()  # a client that went away: its sequence leaves, the others go on
        for t in threads:
            t.join(60)

        def boom(logits, history) -> int:
            raise ConfigError("No token fits the JSON schema here.")

        with pytest.raises(ConfigError, match="No token fits"):
            list(batcher.stream(Request(ids[1], params, choose=boom)))
        assert list(batcher.stream(Request(ids[2], params, ignore_eos=True))) == alone(micro, ids[2], params)
    assert [got[i] for i in range(len(ids))] == [alone(micro, i, params) for i in ids]
    assert first == alone(micro, ids[0], params)[:3]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(Request(ids[0], params))


def test_server_answers_concurrent_requests_as_each_alone(micro, tmp_path) -> None:
    """llmlab serve with 4 slots: six clients at once, each answer equal to the model's own greedy one;
    a JSON-schema request and logprobs work inside the batch."""
    import json
    import threading

    import httpx

    from llmlab.serve.app import Served, running
    from llmlab.serve.config import ServeConfig

    config = ServeConfig(source="unused", port=0, log_path=str(tmp_path / "log.jsonl"), log_fsync=False, parallel=4)
    asks = [[{"role": "user", "content": p}] for p in PROMPTS]
    got: dict[int, dict] = {}
    with running(config, Served(micro, "m")) as url:
        def one(i: int) -> None:
            got[i] = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "m", "messages": asks[i], "temperature": 0, "max_tokens": 16, "logprobs": True}).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        shaped = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "m", "messages": asks[0], "temperature": 0, "max_tokens": 24,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}).json()
        for t in threads:
            t.join(120)
        health = httpx.get(f"{url}/health").json()
    assert health["slots"] == 4 and health["active"] == 0
    for i, ask in enumerate(asks):
        choice = got[i]["choices"][0]
        assert choice["message"]["content"] == micro.chat(ask, SamplingParams.greedy(16))
        assert len(choice["logprobs"]["content"]) == got[i]["usage"]["completion_tokens"]
    text = shaped["choices"][0]["message"]["content"]
    if shaped["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text)["n"], int)
    else:  # cut at max_tokens: still the schema's prefix
        assert text.startswith('{')


def test_a_batch_lists_its_sequences_in_seq_id_order(micro, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a KV cache per sequence, llama.cpp decodes sequences in one pass over the weights only
    while each seq_id is the one before it plus one: a batch in arrival order (2, 3, 0, 1) took two
    passes. Requests that leave out of order (different budgets) refill the slots out of order; every
    batch still lists its sequences in seq_id order, and each answer is its own alone."""
    import llama_cpp

    ids = [micro.tokenize(p, add_special=True) for p in PROMPTS + PROMPTS[:2]]
    budgets = [12, 3, 8, 2, 6, 10, 4, 9]
    orders: list[list[int]] = []
    real = llama_cpp.llama_decode

    def spy(ctx, batch):  # the seq_id of each token, in batch order
        orders.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", spy)
    with BatchEngine(micro, slots=4) as engine:
        reqs = engine.run([Request(i, SamplingParams.greedy(max_tokens=b), ignore_eos=True)
                           for i, b in zip(ids, budgets, strict=True)])
    assert orders and all(order == sorted(order) for order in orders)
    assert any(len(set(order)) == 4 for order in orders)  # full batches happened
    assert [r.out for r in reqs] == [alone(micro, i, SamplingParams.greedy(max_tokens=b))
                                     for i, b in zip(ids, budgets, strict=True)]


def test_a_shared_prompt_start_is_computed_once_per_slot(micro) -> None:
    """Prompts that start alike (a system prompt) reuse the slot's cached prefix: only the rest is
    computed, and the output is what each request gives alone."""
    params = SamplingParams.greedy(max_tokens=12)
    system = micro.tokenize(" ".join(PROMPTS), add_special=True)[:80]
    ids = [system + micro.tokenize(" " + p) for p in PROMPTS]
    with BatchEngine(micro, slots=2) as engine:
        reqs = engine.run([Request(i, params, ignore_eos=True) for i in ids])
        reused = engine.reused_tokens
        # a prompt equal to one already cached still computes its last token (for its logits)
        (again,) = engine.run([Request(ids[-1], params, ignore_eos=True)])
        assert engine.reused_tokens - reused == len(ids[-1]) - 1
    assert [r.out for r in reqs] == [alone(micro, i, params) for i in ids]
    assert again.out == reqs[-1].out
    assert reused >= (len(PROMPTS) - 2) * len(system)  # every request after each slot's first one
    with BatchEngine(micro, slots=2, reuse_prefix=False) as engine:
        assert [r.out for r in engine.run([Request(i, params, ignore_eos=True) for i in ids])] == [r.out for r in reqs]
        assert engine.reused_tokens == 0


def test_batcher_stream_chat_gives_the_models_own_reply(micro) -> None:
    from llmlab.runtime.batched import Batcher

    conv = [{"role": "user", "content": PROMPTS[3]}]
    params = SamplingParams.greedy(max_tokens=20, stop=["the"])
    with Batcher(micro, slots=2) as batcher:
        assert "".join(batcher.stream_chat(conv, params)) == micro.chat(conv, params)
        assert "".join(batcher.stream_chat(conv, SamplingParams.greedy(12))) == micro.chat(conv, SamplingParams.greedy(12))


def test_flash_attention_is_on_by_default_and_batches_as_the_model_alone(micro_gguf, tmp_path) -> None:
    """llama.cpp's flash attention is on by default, in the model and its batch (llmlab serve), and off with
    ``--flash-attn false``: either way each concurrent answer is the model's own greedy one, loaded with
    the same attention."""
    import threading

    import httpx

    from llmlab.serve.app import running
    from llmlab.serve.config import ServeConfig

    path = micro_gguf("f32")
    asks = [[{"role": "user", "content": p}] for p in PROMPTS]
    for flash in (True, False):
        off = {} if flash else {"flash_attn": False}
        config = ServeConfig(source=str(path), port=0, log_path=str(tmp_path / "log.jsonl"), log_fsync=False,
                             parallel=4, **off)
        got: dict[int, str] = {}
        with running(config) as url:
            def one(i: int, url: str = url, got: dict[int, str] = got) -> None:
                got[i] = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                    "model": path.stem, "messages": asks[i], "temperature": 0, "max_tokens": 16}).json()[
                    "choices"][0]["message"]["content"]

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(asks))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        with load(path, **off) as model:
            assert model.llm.context_params.flash_attn_type == (1 if flash else 0)
            assert [got[i] for i in range(len(asks))] == [model.chat(a, SamplingParams.greedy(16)) for a in asks]


def test_flash_attention_is_refused_for_transformers(micro_model_dir) -> None:
    with pytest.raises(ConfigError, match="flash_attn is a llama.cpp option"):
        load(micro_model_dir, flash_attn=True)
    with load(micro_model_dir, flash_attn=False) as hf:  # off is what transformers runs anyway
        assert hf.engine == "transformers"
