"""The FastAPI app: OpenAI-compatible endpoints over one loaded model.

A GGUF model generates up to ``parallel`` requests together (``runtime.batched.Batcher``: one decode
step serves them all, and a request joins or leaves between steps; with several adapters, the adapters'
requests take turns step by step); other models one at a time. Up to ``max_queue`` more wait (``llmlab_queue_depth``) and the rest
get a 429 at once. Generation runs in a worker thread, so
``/health`` and ``/metrics`` answer while a request generates, and a client that goes away (streaming
or not) stops its generation at the next token (status 499). Every request first passes the checks of
``guards`` (Host and Origin headers, JSON nesting depth).

A bundle with several GGUF adapters loads its base once: each request's ``model`` picks one
(``bundle`` for the base, ``bundle:adapter`` for an adapter), switched per request without reloading.

This module imports FastAPI at the top (route annotations must resolve): import it lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from llmlab import settings
from llmlab.errors import LlmlabError
from llmlab.runtime import SamplingParams
from llmlab.serve import protocol as P
from llmlab.serve.config import ServeConfig, api_key
from llmlab.serve.generation import Generation, schema_grammar
from llmlab.serve.guards import Access, ApiError, parse_body
from llmlab.serve.metrics import Metrics
from llmlab.serve.requestlog import RequestLog
from llmlab.serve.served import Served, load_served

MAX_EMBED_INPUTS = 256
DISCONNECT_POLL_S = 0.1  # how often a plain (non-streaming) request checks that its client is still there


def _batcher(config: ServeConfig, served: Served) -> Any:
    """The ``Batcher`` that generates ``config.parallel`` requests together, or None where requests go one at
    a time (``parallel`` 1, a model llama.cpp cannot batch)."""
    import os

    from llmlab.runtime.batched import Batcher, batchable

    parallel = config.parallel or min(8, 2 * (os.cpu_count() or 1))
    if parallel < 2 or not batchable(served.model):
        return None
    return Batcher(served.model, slots=parallel, slot_ctx=served.model.n_ctx)


class _State:
    def __init__(self, config: ServeConfig, served: Served, key: str | None):
        self.config, self.served, self.key = config, served, key
        self.metrics = Metrics()
        path = config.log_path or settings.home() / ".serve" / f"{served.name}.requests.jsonl"
        self.log = RequestLog(path, fsync=config.log_fsync)
        self.batcher = _batcher(config, served)
        self.slots = self.batcher.slots if self.batcher else 1
        self.slot = asyncio.Semaphore(self.slots)
        self.waiting = 0
        self.active = 0

    async def acquire(self) -> None:
        if self.active >= self.slots and self.waiting >= self.config.max_queue:
            raise ApiError(429, f"The server is busy ({self.waiting} requests waiting, the most it queues).",
                           "rate_limit_error", "queue_full")
        self.waiting += 1
        self.metrics.queue_depth = self.waiting
        try:
            await self.slot.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth = self.waiting
        self.active += 1
        self.metrics.active = self.active

    def release(self) -> None:
        self.active -= 1
        self.metrics.active = self.active
        self.slot.release()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.log.close()

    def record(self, endpoint: str, status: int, t0: float, gen: Generation | None = None, *,
               error: str | None = None, stream: bool = False, prompt: str | list | None = None,
               completion: str | None = None, model: str | None = None,
               tokens: tuple[int, int] | None = None) -> None:
        """Count and log one request; ``model``: the served name it asked for (counted per model);
        ``tokens``: (prompt, completion) where there is no single ``gen`` (an agent's several calls)."""
        seconds = time.perf_counter() - t0
        pt, ct = (gen.prompt_tokens, gen.completion_tokens) if gen else tokens or (0, 0)
        self.metrics.observe(endpoint, status, seconds, pt, ct, error, model=model)
        rec: dict[str, Any] = {"time": round(time.time(), 3), "endpoint": endpoint,
                               "model": model or self.served.name,
                               "status": status, "latency_ms": round(seconds * 1000, 1), "stream": stream,
                               "prompt_tokens": pt, "completion_tokens": ct,
                               "finish_reason": gen.finish_reason if gen else None, "error": error}
        if self.config.log_prompts:
            rec.update({"messages" if isinstance(prompt, list) else "prompt": prompt, "completion": completion})
        self.log.append(rec)


def create_app(config: ServeConfig, served: Served | None = None) -> Any:
    """The FastAPI app for ``config`` (``served``: an already loaded model, else it is loaded here)."""
    key = api_key(config)  # refuses a public host without a key before loading anything
    served = served or load_served(config)
    state = _State(config, served, key)
    access = Access(config.host, config.allowed_hosts, config.allowed_origins, has_key=key is not None)
    model = served.model
    app = FastAPI(title="llmlab serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llmlab = state

    def fail(endpoint: str, t0: float, e: ApiError) -> JSONResponse:
        state.record(endpoint, e.status, t0, error=e.code or e.type)
        headers = {"Retry-After": "1"} if e.status == 429 else None
        if e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(P.error_body(e.message, e.type, e.code), status_code=e.status, headers=headers)

    def admit(request: Request, *, key: bool = True) -> str | None:
        """Refuse a foreign Host or Origin (then a wrong key); the allowed cross-origin Origin, if any."""
        cors = access.check(request.headers)
        if key:
            check_key(request)
        return cors

    def with_cors(response: Any, cors: str | None) -> Any:
        if cors is not None:
            response = response if isinstance(response, Response) else JSONResponse(response)
            response.headers["Access-Control-Allow-Origin"] = cors
            response.headers["Vary"] = "Origin"
        return response

    def check_key(request: Request) -> None:
        if state.key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), state.key.encode()):
            raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                           "authentication_error", "invalid_api_key")

    async def read(request: Request, schema: type[BaseModel], names: list[str] | None = None) -> Any:
        limit = config.max_body_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise ApiError(413, f"The request body is larger than {limit} bytes.", code="body_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"The request body is larger than {limit} bytes.", code="body_too_large")
        # a nesting depth bound first (no RecursionError); a large body is scanned off the event loop
        data = parse_body(body) if len(body) < 65536 else await asyncio.to_thread(parse_body, body)
        try:
            req = schema.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ApiError(400, f"'{where}': {err['msg']}.", code="invalid_value") from None
        names = served.names if names is None else names
        if req.model not in names and req.model.startswith(f"{served.name}:") and served.adapters:
            raise ApiError(404, f"The bundle '{served.name}' holds no adapter "
                           f"'{req.model[len(served.name) + 1:]}'; it holds "
                           f"{', '.join(repr(a) for a in served.adapters.values())}.", code="model_not_found")
        if req.model not in names:
            raise ApiError(404, f"The model '{req.model}' does not exist here; this server serves "
                           f"{', '.join(repr(n) for n in names) or 'no such model'} on this endpoint.",
                           code="model_not_found")
        return req

    def prepare(req: P.RequestBase, prompt: str, add_special: bool, wanted: int | None, **gen_kw: Any) -> Generation:
        n_prompt = len(model.tokenize(prompt, add_special=add_special))
        room = model.n_ctx - n_prompt
        if wanted is not None and wanted > config.max_tokens:
            raise ApiError(400, f"max_tokens is {wanted}, above this server's limit of {config.max_tokens}.",
                           code="max_tokens_too_large")
        if room <= 0 or (wanted is not None and wanted > room):
            raise ApiError(400, f"The prompt has {n_prompt} tokens and max_tokens is {wanted}; the model's context "
                           f"holds {model.n_ctx}.", code="context_length_exceeded")
        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed,
                                repetition_penalty=req.repetition_penalty, stop=req.stops(),
                                max_tokens=wanted or min(config.max_tokens, room))
        return Generation(model, prompt, params, add_special=add_special, ignore_eos=req.ignore_eos,
                          selects_adapter=bool(served.adapters), adapter=served.adapter_of(req.model),
                          batcher=state.batcher, **gen_kw)

    async def watch(request: Request, gen: Generation) -> None:
        """Cancel ``gen`` (at its next token) once the client of a plain request has gone away."""
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        gen.cancel.set()

    async def run(request: Request, endpoint: str, t0: float, gen: Generation, stream: bool, chunk: Any,
                  final: Any, include_usage: bool = False, logged: Any = None, name: str | None = None) -> Any:
        """Generate (queued) and answer in one body or as server-sent events; ``logged``: the prompt as logged
        (a chat's messages; default the prompt text); ``name``: the model (or adapter) the request asked for."""
        logged = gen.prompt if logged is None else logged
        await state.acquire()
        if not stream:
            watcher = asyncio.create_task(watch(request, gen))
            try:
                text = await asyncio.to_thread(gen.text)
            except LlmlabError as e:
                state.record(endpoint, 400, t0, gen, error="invalid_request", model=name)
                return JSONResponse(P.error_body(e.message, "invalid_request_error"), status_code=400)
            finally:
                watcher.cancel()
                state.release()
            if gen.finish_reason == "cancelled":  # nobody reads the answer: logged and counted as 499
                state.record(endpoint, 499, t0, gen, error="client_disconnected", prompt=logged, completion=text,
                             model=name)
                return Response(status_code=499)
            body = final(gen, text)
            state.record(endpoint, 200, t0, gen, prompt=logged, completion=text, model=name)  # before answered
            return JSONResponse(body)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue()
        done: dict[str, Any] = {"text": "", "status": 200, "error": None, "recorded": False}

        def work() -> None:
            try:
                for piece in gen.pieces():
                    done["text"] += piece
                    loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece, len(gen.tokens)))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None, len(gen.tokens)))
            except Exception as e:  # reported to the client as an error event
                done.update(status=500, error=type(e).__name__)
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e, 0))

        def finish() -> None:
            """Free the model and log the request, once: before [DONE], or when the client went away."""
            if done["recorded"]:
                return
            done["recorded"] = True
            state.release()
            if gen.finish_reason == "cancelled":
                done.update(status=499, error="client_disconnected")
            state.record(endpoint, done["status"], t0, gen, error=done["error"], stream=True, prompt=logged,
                         completion=done["text"], model=name)

        worker = loop.run_in_executor(None, work)
        # also when the response never starts or stops early (client gone): the slot is always freed
        worker.add_done_callback(lambda _: finish())

        async def events() -> AsyncIterator[str]:
            seen = 0
            try:
                yield _sse(chunk(gen, None, [], None))
                while True:
                    kind, value, upto = await queue.get()
                    if kind == "piece":
                        yield _sse(chunk(gen, value, gen.tokens[seen:upto], None))
                        seen = upto
                    elif kind == "error":
                        await worker
                        finish()
                        msg = value.message if isinstance(value, LlmlabError) else "generation failed"
                        yield _sse(P.error_body(msg, "server_error"))
                        break
                    else:
                        await worker
                        finish()  # logged before the client sees [DONE]
                        yield _sse(chunk(gen, None, gen.tokens[seen:upto], gen.finish_reason))
                        if include_usage:
                            yield _sse({**chunk(gen, None, [], None), "choices": [], "usage": P.usage(gen)})
                        yield "data: [DONE]\n\n"
                        break
            finally:
                gen.cancel.set()  # a client gone mid-stream stops the generation at its next token

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def guarded(endpoint: str, request: Request, work: Any) -> Any:
        """``work(request, t0)`` with every refusal answered as an OpenAI error (and counted, and logged)."""
        t0 = time.perf_counter()
        cors = None
        try:
            cors = admit(request)
            return with_cors(await work(request, t0), cors)
        except ApiError as e:
            return with_cors(fail(endpoint, t0, e), cors)
        except LlmlabError as e:
            return with_cors(fail(endpoint, t0, ApiError(400, str(e), code="invalid_request")), cors)

    async def agent_work(req: P.ChatRequest, t0: float) -> Any:
        """The agent ``req.model`` answers the last user message (its own retrieval, prompts and model
        settings)."""
        question = next((m.get("content") for m in reversed(req.messages) if m.get("role") == "user"), None)
        if not isinstance(question, str) or not question.strip():
            raise ApiError(400, "The agent needs a user message with text.", code="invalid_value")
        await state.acquire()
        try:
            reply = await asyncio.to_thread(served.agents[req.model].ask, question, thread_id=P.new_id("thread"))
        finally:
            state.release()
        tokens = (reply.prompt_tokens, reply.completion_tokens)  # every model call of the agent's answer
        state.record("agent", 200, t0, prompt=req.messages, completion=reply.answer, model=req.model, tokens=tokens)
        rid = P.new_id("chatcmpl")
        message = {"role": "assistant", "content": reply.answer}
        extra = {"sources": reply.sources, "refused": reply.refused, "retrieved": reply.retrieved_ids}
        if not req.stream:
            return JSONResponse(P.envelope("chat.completion", rid, req.model, [
                {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                usage=P.token_usage(*tokens), **extra))
        # the agent's answer is complete when its checks pass: it is sent as one chunk
        events = [P.envelope("chat.completion.chunk", rid, req.model, [
            {"index": 0, "delta": message, "finish_reason": "stop", "logprobs": None}], **extra)]
        body = "".join(_sse(e) for e in events) + "data: [DONE]\n\n"
        return StreamingResponse(iter([body]), media_type="text/event-stream")

    async def chat_work(request: Request, t0: float) -> Any:
        req: P.ChatRequest = await read(request, P.ChatRequest)
        if req.model in served.agents:
            return await agent_work(req, t0)
        messages = P.chat_messages(req)
        schema = P.forced_schema(req)
        prompt = model.apply_chat_template(messages)
        gen = prepare(req, prompt, False, req.max_completion_tokens or req.max_tokens,
                      grammar=schema_grammar(schema) if schema is not None else None,
                      logprobs=req.logprobs, top_logprobs=req.top_logprobs)
        rid = P.new_id("chatcmpl")

        def final(g: Generation, text: str) -> dict[str, Any]:
            calls = P.tool_calls(req, text)
            message: dict[str, Any] = {"role": "assistant", "content": None if calls else text}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else g.finish_reason,
                      "logprobs": P.chat_logprobs(g, g.tokens) if req.logprobs else None}
            return P.envelope("chat.completion", rid, req.model, [choice], usage=P.usage(g))

        def chunk(g: Generation, piece: str | None, tokens: list, finish: str | None) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if piece is None and finish is None \
                else ({"content": piece} if piece is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish,
                      "logprobs": P.chat_logprobs(g, tokens) if req.logprobs and tokens else None}
            return P.envelope("chat.completion.chunk", rid, req.model, [choice])

        return await run(request, "chat", t0, gen, req.stream, chunk, final,
                         bool((req.stream_options or {}).get("include_usage")), logged=messages, name=req.model)

    async def completions_work(request: Request, t0: float) -> Any:
        req: P.CompletionRequest = await read(request, P.CompletionRequest)
        if req.model in served.agents:
            raise ApiError(400, f"'{req.model}' is an agent: it answers /v1/chat/completions only.",
                           code="agent_chat_only")
        gen = prepare(req, P.prompt_text(req), True, req.max_tokens, logprobs=req.logprobs is not None,
                      top_logprobs=req.logprobs or 0)
        rid = P.new_id("cmpl")

        def choice(g: Generation, text: str, tokens: list, finish: str | None) -> dict[str, Any]:
            lp = P.completion_logprobs(g, tokens) if req.logprobs is not None else None
            return {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}

        def final(g: Generation, text: str) -> dict[str, Any]:
            return P.envelope("text_completion", rid, req.model, [choice(g, text, g.tokens, g.finish_reason)],
                              usage=P.usage(g))

        def chunk(g: Generation, piece: str | None, tokens: list, finish: str | None) -> dict[str, Any]:
            return P.envelope("text_completion", rid, req.model, [choice(g, piece or "", tokens, finish)])

        return await run(request, "completions", t0, gen, req.stream, chunk, final,
                         bool((req.stream_options or {}).get("include_usage")), name=req.model)

    async def template_work(request: Request, t0: float) -> Any:
        req: P.ChatRequest = await read(request, P.ChatRequest)
        prompt = model.apply_chat_template(P.chat_messages(req))
        return {"prompt": prompt, "tokens": model.tokenize(prompt)}

    async def embeddings_work(request: Request, t0: float) -> Any:
        if served.embedder is None:
            raise ApiError(404, "This server has no embedding model (only bundles with an index have one).",
                           code="model_not_found")
        req: P.EmbeddingRequest = await read(request, P.EmbeddingRequest, [served.embedder.name])
        texts = req.texts()
        if not texts or len(texts) > MAX_EMBED_INPUTS:
            raise ApiError(400, f"'input' must hold 1 to {MAX_EMBED_INPUTS} texts, got {len(texts)}.",
                           code="invalid_value")
        await state.acquire()
        try:
            vectors = await asyncio.to_thread(served.embedder.encode, texts)
        finally:
            state.release()
        state.record("embeddings", 200, t0)
        return {"object": "list", "model": served.embedder.name, "usage": {"prompt_tokens": 0, "total_tokens": 0},
                "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
                         for i, v in enumerate(vectors)]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        return await guarded("embeddings", request, embeddings_work)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await guarded("chat", request, chat_work)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await guarded("completions", request, completions_work)

    @app.post("/apply-template")
    async def apply_template(request: Request) -> Any:
        """llama.cpp server's extension: the prompt text a chat request becomes (for parity checks)."""
        return await guarded("apply-template", request, template_work)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        try:
            cors = admit(request)
        except ApiError as e:
            return fail("models", time.perf_counter(), e)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "llmlab", "n_ctx": model.n_ctx,
                 "agent": n in served.agents, **({"adapter": served.adapter_of(n), "parent": served.name}
                                                  if served.adapters else {})}
                for n in served.names]
        if served.embedder is not None:
            data.append({"id": served.embedder.name, "object": "model", "created": 0, "owned_by": "llmlab",
                         "embedding": True, "dim": served.embedder.dim})
        return with_cors({"object": "list", "data": data}, cors)

    @app.get("/health")
    async def health(request: Request) -> Any:
        try:
            cors = admit(request, key=False)
        except ApiError as e:
            return fail("health", time.perf_counter(), e)
        return with_cors({"status": "ok", "model": served.name, "queue_depth": state.waiting,
                          "busy": state.active >= state.slots, "active": state.active, "slots": state.slots}, cors)

    @app.get("/metrics")
    async def metrics(request: Request) -> Any:
        try:
            cors = admit(request)
        except ApiError as e:
            return fail("metrics", time.perf_counter(), e)
        return with_cors(PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4"), cors)

    @app.options("/{path:path}")
    async def preflight(request: Request, path: str) -> Any:
        """A browser's CORS preflight: answered for an allowed origin, refused (403) for others."""
        try:
            cors = admit(request, key=False)
        except ApiError as e:
            return fail("preflight", time.perf_counter(), e)
        return with_cors(Response(status_code=204, headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600"}), cors)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Any:
        return JSONResponse(P.error_body(f"No endpoint {request.method} {request.url.path}.",
                                         "invalid_request_error", "not_found"), status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc: Exception) -> Any:
        return JSONResponse(P.error_body(f"{request.method} is not allowed on {request.url.path}.",
                                         "invalid_request_error", "method_not_allowed"), status_code=405)

    return app


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _uvicorn(app: Any, config: ServeConfig) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                         access_log=False, timeout_graceful_shutdown=5))


def serve(config: ServeConfig) -> None:
    """Run the server in the foreground until interrupted (``llmlab serve``)."""
    app = create_app(config)
    served = app.state.llmlab.served
    adapters = f" with the adapters {', '.join(repr(n) for n in served.adapters)}" if served.adapters else ""
    batcher = app.state.llmlab.batcher
    together = f", {batcher.slots} requests at a time" if batcher else ""
    print(f"serving '{served.name}'{adapters} on http://{config.host}:{config.port}/v1{together} "
          f"(log: {app.state.llmlab.log.path})", flush=True)
    try:
        _uvicorn(app, config).run()
    finally:
        app.state.llmlab.close()


@contextlib.contextmanager
def running(config: ServeConfig, served: Served | None = None) -> Iterator[str]:
    """The server in a background thread on a free port of 127.0.0.1 (or ``config.port``); yields its URL."""
    app = create_app(config, served)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    server = _uvicorn(app, config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("The server did not start.")
        time.sleep(0.02)
    try:
        yield f"http://{config.host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        app.state.llmlab.close()
