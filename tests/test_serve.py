"""The OpenAI-compatible server over a real HTTP socket: endpoints, limits, bad input, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.runtime import SamplingParams  # noqa: E402
from llmlab.serve import ServeConfig, running  # noqa: E402
from llmlab.serve.app import Served  # noqa: E402
from llmlab.serve.metrics import parse  # noqa: E402
from llmlab.serve.process import free_port  # noqa: E402
from llmlab.serve.requestlog import read  # noqa: E402

NAME = "micro-f16"
ASK = [{"role": "user", "content": "Where does Ada live?"}]


@pytest.fixture(scope="module")
def gguf_file(micro_gguf) -> Path:
    return micro_gguf("f16")


@pytest.fixture(scope="module")
def served(gguf_file: Path):
    from llmlab.runtime import load

    with load(gguf_file) as model:
        yield Served(model, NAME)


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "requests.jsonl"
    config = ServeConfig(source="unused", port=0, log_path=str(log), log_prompts=True,
                         max_tokens=4 * served.model.n_ctx, max_body_bytes=4096)
    with running(config, served) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.log = log  # type: ignore[attr-defined]
        yield client


def chat(client, **kw):
    return client.post("/v1/chat/completions", json={"model": NAME, "messages": ASK, "temperature": 0, **kw})


def test_chat_equals_runtime_greedy_with_logprobs(server, served: Served) -> None:
    want = served.model.chat(ASK, SamplingParams.greedy(12))
    r = chat(server, max_tokens=12, logprobs=True, top_logprobs=3)
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want}
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == want
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) == 3 for t in tokens)
    # greedy: the chosen token is the likeliest one
    assert all(abs(t["top_logprobs"][0]["logprob"] - t["logprob"]) < 1e-6 for t in tokens)
    assert body["usage"]["completion_tokens"] == len(tokens)
    assert body["usage"]["prompt_tokens"] == len(served.model.tokenize(served.model.apply_chat_template(ASK)))


def test_completions_and_stream_match(server, served: Served) -> None:
    want = served.model.complete("Once upon a time", SamplingParams.greedy(10))
    r = server.post("/v1/completions", json={"model": NAME, "prompt": "Once upon a time", "max_tokens": 10,
                                             "temperature": 0, "logprobs": 2})
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["text"] == want
    assert len(choice["logprobs"]["token_logprobs"]) == r.json()["usage"]["completion_tokens"]

    pieces, logprobs, usage, done = [], [], None, False
    with server.stream("POST", "/v1/chat/completions", json={
            "model": NAME, "messages": ASK, "temperature": 0, "max_tokens": 12, "stream": True, "logprobs": True,
            "stream_options": {"include_usage": True}}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for c in event["choices"]:
                pieces.append(c["delta"].get("content") or "")
                logprobs += (c["logprobs"] or {}).get("content", [])
    assert done and usage is not None
    assert len(logprobs) == usage["completion_tokens"]  # every token's log-probability, each once
    assert "".join(pieces) == served.model.chat(ASK, SamplingParams.greedy(12))


def test_json_schema_is_enforced(server) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"]}
    r = chat(server, max_tokens=40, response_format={"type": "json_schema",
                                                     "json_schema": {"name": "answer", "schema": schema}})
    assert r.status_code == 200, r.text
    obj = json.loads(r.json()["choices"][0]["message"]["content"])
    assert isinstance(obj["ok"], bool) and obj["n"] in (1, 2, 3)


def test_forced_tool_call(server) -> None:
    # the micro model's context is 256 tokens of a byte-level vocabulary: a small tool
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"w": {"enum": ["A", "B"]}}, "required": ["w"]}}}]
    r = chat(server, tools=tools, tool_choice="required")  # max_tokens: what the context leaves
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "f" and json.loads(call["arguments"])["w"] in ("A", "B")
    # the result goes back as a tool message
    follow = ASK + [{"role": "assistant", "tool_calls": choice["message"]["tool_calls"]},
                    {"role": "tool", "tool_call_id": "x", "content": "Paris"}]
    r = chat(server, messages=follow, max_tokens=4, tools=tools, tool_choice="none")
    assert r.status_code == 200, r.text


def test_models_health_metrics(server) -> None:
    assert server.get("/v1/models").json()["data"][0]["id"] == NAME
    assert server.get("/health").json()["status"] == "ok"
    chat(server, max_tokens=3)
    server.post("/v1/chat/completions", content=b"{not json")
    m = parse(server.get("/metrics").text)
    assert m['llmlab_requests_total{endpoint="chat",status="200"}'] >= 1
    assert m['llmlab_requests_total{endpoint="chat",status="400"}'] >= 1
    assert m['llmlab_errors_total{type="invalid_json"}'] >= 1
    assert m['llmlab_request_latency_seconds_count{endpoint="chat"}'] >= 2
    assert m['llmlab_tokens_total{type="completion"}'] >= 1
    assert "llmlab_queue_depth" in m


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (json.dumps({"model": NAME, "messages": ASK, "pad": "x" * 5000}).encode(), 413, "body_too_large"),
    (json.dumps({"model": "gpt-4", "messages": ASK}).encode(), 404, "model_not_found"),
    (json.dumps({"model": NAME, "messages": []}).encode(), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "invalid_request"),
])
def test_bad_requests(server, body: bytes, status: int, code: str) -> None:
    r = server.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_max_tokens_beyond_context_and_limit(server, served: Served) -> None:
    n_ctx = served.model.n_ctx
    r = chat(server, max_tokens=n_ctx)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert str(n_ctx) in r.json()["error"]["message"]
    r = chat(server, max_tokens=4 * n_ctx + 1)
    assert r.status_code == 400 and r.json()["error"]["code"] == "max_tokens_too_large"
    # a huge body sent in chunks (no content-length) is cut off too
    r = server.post("/v1/chat/completions", content=iter([b"x" * 3000, b"y" * 3000]))
    assert r.status_code == 413


def test_client_disconnect_stops_generation(server, served: Served) -> None:
    before = len(read(server.log))
    budget = served.model.n_ctx // 2
    with server.stream("POST", "/v1/completions", json={"model": NAME, "prompt": "Once", "max_tokens": budget,
                                                        "ignore_eos": True, "stream": True}) as s:
        next(s.iter_lines())  # the first event arrived; now hang up
    deadline = time.monotonic() + 20
    while len(read(server.log)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    line = read(server.log)[-1]
    assert line["status"] == 499 and line["error"] == "client_disconnected"
    assert line["completion_tokens"] < budget
    assert chat(server, max_tokens=2).status_code == 200  # the model is free again


def test_overload_gets_clean_429(served: Served, tmp_path: Path) -> None:
    config = ServeConfig(source="unused", port=0, log_path=str(tmp_path / "log.jsonl"), max_queue=1,
                         log_fsync=False)
    statuses: list[int] = []
    with running(config, served) as url:
        def one() -> None:
            r = httpx.post(f"{url}/v1/completions", timeout=60, json={
                "model": NAME, "prompt": "Once", "max_tokens": 150, "ignore_eos": True})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["retry-after"] and r.json()["error"]["code"] == "queue_full"
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert sorted(set(statuses)) == [200, 429] and statuses.count(200) >= 2


def test_api_key(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H7_KEY", "s3cret")
    config = ServeConfig(source="unused", port=0, api_key_env="H7_KEY", log_path=str(tmp_path / "l.jsonl"))
    with running(config, served) as url:
        body = {"model": NAME, "messages": ASK, "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        ok = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"},
                        timeout=60)
        assert ok.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # for load balancers and Docker's healthcheck


def test_public_host_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.serve import create_app

    with pytest.raises(ConfigError, match="without an API key"):
        create_app(ServeConfig(source="no-such-model", host="0.0.0.0"))  # refused before loading
    monkeypatch.delenv("H7_UNSET", raising=False)
    with pytest.raises(ConfigError, match="H7_UNSET"):
        create_app(ServeConfig(source="no-such-model", api_key_env="H7_UNSET"))


def _start(gguf_file: Path, log: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LLMLAB_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmlab", "serve", str(gguf_file), "--port", str(port),
                             "--log-path", str(log), "--model-name", NAME], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()
    proc.kill()
    raise AssertionError("the server did not start")


def test_killed_server_loses_no_acknowledged_line(gguf_file: Path, tmp_path: Path) -> None:
    log, port = tmp_path / "requests.jsonl", free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": NAME, "messages": ASK, "max_tokens": 4, "temperature": 0}
    proc = _start(gguf_file, log, port)
    try:
        for _ in range(3):
            assert httpx.post(url, json=body, timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(read(log)) == 3
    proc = _start(gguf_file, log, port)
    try:
        assert httpx.post(url, json=body, timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lines = read(log)
    assert len(lines) == 4 and len(log.read_text().splitlines()) == 4
    assert all(x["status"] == 200 and "prompt" not in x for x in lines)  # prompt text is off by default


def test_logs_back_into_evals(server, tmp_path: Path) -> None:
    from llmlab.data import load_records
    from llmlab.serve.evalset import FromLogsConfig, from_logs, scrub

    question = "Mail ada@example.com or call +1 555 123 4567 about order 12345678"
    assert chat(server, messages=[{"role": "user", "content": question}], max_tokens=3).status_code == 200
    out = tmp_path / "evalset.jsonl"
    report = from_logs(FromLogsConfig(log=str(server.log), output=str(out)))
    assert report["written"] >= 2 and report["skipped"] >= 1  # failed requests are not eval material
    records = load_records(str(out))
    assert {"question", "answer"} <= set(records[0])
    scrubbed = next(r["question"] for r in records if "order" in r["question"])
    assert scrubbed == "Mail [EMAIL] or call [PHONE] about order [NUMBER]"
    assert scrub("Ada is 42, born 1984-01-02") == "Ada is 42, born 1984-01-02"  # short numbers stay
    cli = subprocess.run([sys.executable, "-m", "llmlab", "eval", "from-logs", "--log", str(server.log), "--output",
                          str(out), "--scrub", "false", "--limit", "1"], capture_output=True, text=True)
    assert cli.returncode == 0 and json.loads(cli.stdout)["written"] == 1


def test_agent_as_a_model_name(served: Served, tmp_path: Path) -> None:
    pytest.importorskip("langgraph")
    from llmlab.agents.chat_model import RuntimeChatModel
    from llmlab.agents.graph import Agent
    from llmlab.rag.search import Hit
    from llmlab.store import Store

    class Searcher:  # one document; the agent's retrieval is tested by the Agents station
        def search(self, query: str, k: int = 5, mode: str = "hybrid", filters: dict | None = None) -> list[Hit]:
            return [Hit("d1#0", "d1", "Bodo Trastel", "Bodo Trastel lives in Dunmere.", 0.9)]

    agent = Agent("rag-rules", store=Store(tmp_path / "models"), llm=RuntimeChatModel(model=served.model,
                  max_tokens=8), searcher=Searcher(), memory=False, trace=False)
    with_agent = Served(served.model, NAME, agents={"micro-agent": agent})
    config = ServeConfig(source="unused", port=0, log_path=str(tmp_path / "log.jsonl"), log_prompts=True)
    with running(config, with_agent) as url:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == [NAME, "micro-agent"]
        q = [{"role": "user", "content": "Where does Bodo Trastel live?"}]
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "micro-agent", "messages": q}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["choices"][0]["message"]["content"], str) and "sources" in body
        assert httpx.post(f"{url}/v1/completions", json={"model": "micro-agent", "prompt": "x"}).status_code == 400
    assert read(tmp_path / "log.jsonl")[0]["endpoint"] == "agent"



def test_deep_json_is_a_counted_400(server) -> None:
    from llmlab.serve.guards import ApiError, json_depth, parse_body

    deep_in_a_request = json.dumps({"model": NAME, "messages": ASK, "x": "HERE"}).encode().replace(
        b'"HERE"', b"[" * 70 + b"1" + b"]" * 70)  # valid JSON, 70 levels deep
    for body in (b"[" * 4000, b'{"a":' * 800, deep_in_a_request):
        r = server.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "json_too_deep" and err["message"]
    m = parse(server.get("/metrics").text)
    assert m['llmlab_errors_total{type="json_too_deep"}'] >= 3
    assert m['llmlab_requests_total{endpoint="chat",status="400"}'] >= 3
    # brackets inside strings are text, not nesting
    text = "[{" * 300 + '"' + "[" * 100
    r = server.post("/apply-template", json={"model": NAME, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200 and text in r.json()["prompt"], r.text
    assert json_depth(b'{"a": "[[[[\\"[[[", "b": [[1], {"c": []}]}') == 4
    with pytest.raises(ApiError, match="deeper than 64"):
        parse_body(b"[" * 100_000)  # within the default size limit: refused, no RecursionError
    assert parse_body(json.dumps({"a": [[1]] * 2}).encode()) == {"a": [[1], [1]]}


def test_foreign_host_and_origin_are_refused(server) -> None:
    body = json.dumps({"model": NAME, "messages": ASK, "max_tokens": 2}).encode()
    port = server.base_url.port
    # a web page's "simple" request (no preflight) and a DNS-rebound name: refused before anything runs
    for headers, code in ((({"content-type": "text/plain", "origin": "http://evil.example"}), "origin_not_allowed"),
                          ({"host": f"evil.example:{port}"}, "host_not_allowed"),
                          ({"host": "evil.example"}, "host_not_allowed"),
                          ({"origin": "null"}, "origin_not_allowed")):
        r = server.post("/v1/chat/completions", content=body, headers=headers)
        assert r.status_code == 403, (headers, r.text)
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
        assert "access-control-allow-origin" not in r.headers
    assert server.get("/v1/models", headers={"host": "evil.example"}).status_code == 403
    assert server.get("/metrics", headers={"origin": "http://evil.example"}).status_code == 403
    assert server.options("/v1/chat/completions", headers={"origin": "http://evil.example"}).status_code == 403
    m = parse(server.get("/metrics").text)
    assert m['llmlab_errors_total{type="origin_not_allowed"}'] >= 3
    assert m['llmlab_errors_total{type="host_not_allowed"}'] >= 3
    assert m['llmlab_requests_total{endpoint="chat",status="403"}'] >= 4
    # loopback names and the server's own origin stay fine; so do requests without Origin (SDKs, curl)
    for headers in ({}, {"host": f"localhost:{port}"}, {"host": f"[::1]:{port}"}, {"host": "127.0.0.1"},
                    {"origin": f"http://127.0.0.1:{port}"}):
        assert server.post("/v1/chat/completions", content=body, headers=headers).status_code == 200, headers


def test_configured_hosts_and_origins(served: Served, tmp_path: Path) -> None:
    from llmlab.serve.guards import Access

    config = ServeConfig(source="unused", port=0, log_path=str(tmp_path / "l.jsonl"), log_fsync=False,
                         allowed_hosts="llm.internal, other:9", allowed_origins=["http://localhost:3000"])
    assert config.allowed_hosts == ["llm.internal", "other:9"]  # a flag's "a,b" is a list
    body = {"model": NAME, "messages": ASK, "max_tokens": 2}
    with running(config, served) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/v1/chat/completions", json=body, headers={"host": "llm.internal:8000"}).status_code == 200
        assert c.get("/health", headers={"host": "other:9"}).status_code == 200
        assert c.get("/health", headers={"host": "other:10"}).status_code == 403
        r = c.post("/v1/chat/completions", json=body, headers={"origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        pre = c.options("/v1/chat/completions", headers={"origin": "http://localhost:3000",
                                                          "access-control-request-method": "POST"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        assert c.post("/v1/chat/completions", json=body, headers={"origin": "http://localhost:3001"}).status_code \
            == 403
    # bound to every address with a key: clients use names the server cannot know, the key protects it
    assert Access("0.0.0.0", [], [], has_key=True).host_ok("10.1.2.3:8000")
    assert not Access("0.0.0.0", ["llm.internal"], [], has_key=True).host_ok("10.1.2.3:8000")
    assert Access("0.0.0.0", ["llm.internal"], [], has_key=True).host_ok("localhost:8000")
    assert Access("10.1.2.3", [], [], has_key=True).host_ok("10.1.2.3:8000")
    assert not Access("10.1.2.3", [], [], has_key=True).host_ok("evil.example:8000")
    assert not Access("0.0.0.0", [], [], has_key=False).host_ok("evil.example")


def test_bundle_by_store_name(empty_home, micro_gguf) -> None:
    from llmlab.errors import StoreError
    from llmlab.export import ExportConfig, export
    from llmlab.serve.app import load_served

    empty_home.add(micro_gguf("f16"), "micro-f16")
    bundle = export(ExportConfig(model="micro-f16", parity=False, tarball=False), store=empty_home)
    served = load_served(ServeConfig(source=bundle.name))
    try:
        assert served.bundle == bundle.path and served.name == bundle.name
        assert served.model.complete("Once", SamplingParams.greedy(3))
    finally:
        served.model.close()
    gguf = next((bundle.path / "model").glob("*.gguf"))
    gguf.write_bytes(gguf.read_bytes()[:1000])
    with pytest.raises(StoreError, match="tampered file"):  # verified like a folder path, before loading
        load_served(ServeConfig(source=bundle.name))


def test_plain_request_whose_client_gives_up(served: Served, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.serve import generation

    real = generation.sample_token

    def slow(*args, **kw):  # the micro model is too fast to leave a client waiting: 50 ms a token
        time.sleep(0.05)
        return real(*args, **kw)

    monkeypatch.setattr(generation, "sample_token", slow)
    log = tmp_path / "log.jsonl"
    config = ServeConfig(source="unused", port=0, log_path=str(log), log_fsync=False)
    budget = served.model.n_ctx // 2  # about 6 s of generation
    with running(config, served) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", timeout=0.5, json={
                "model": NAME, "prompt": "Once", "max_tokens": budget, "ignore_eos": True})
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/completions", timeout=30, json={"model": NAME, "prompt": "Once", "max_tokens": 2})
        assert r.status_code == 200 and time.monotonic() - t0 < 3  # the slot was freed at once
        m = parse(httpx.get(f"{url}/metrics").text)
    first = read(log)[0]
    assert first["status"] == 499 and first["error"] == "client_disconnected"
    assert first["completion_tokens"] < budget // 2
    assert m['llmlab_requests_total{endpoint="completions",status="499"}'] == 1
    assert m['llmlab_errors_total{type="client_disconnected"}'] == 1
