"""Serve throughput: `llmlab serve` against `python -m llama_cpp.server` on the same Q4_K_M GGUF.

Usage: python benchmarks/serve.py --gguf PATH [--threads 1] [--tokens 32]
       (make the GGUF with `llmlab quantize demo --types '[q4_k_m]'`; default: $LLMLAB_HOME/demo-q4_k_m)
Writes benchmarks/results/serve.json: ``runs`` ({server, concurrency, req_s, tok_s, ttft_ms_p50,
latency_ms_p95, errors}) at concurrency 1, 4 and 16 with distinct prompts (no prompt cache hits) and
exactly ``--tokens`` generated tokens per request (EOS suppressed: ``ignore_eos`` for llmlab,
``logit_bias`` for llama_cpp.server); ``ratio`` = llmlab tok/s / llama_cpp.server tok/s at
concurrency 4; ``overload`` (llmlab with a queue of 4 hit by 32 requests at once: 429s, no 5xx, still
healthy); ``settings`` (model, threads, versions, load average at start and end: the machine is
shared). Both servers get the same thread count (llama_cpp.server's default is half the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[:3]} did not start")


async def one(client, url: str, body: dict, out: list) -> None:
    t0 = time.perf_counter()
    ttft, chunks = None, 0
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                out.append({"ok": False, "status": r.status_code})
                return
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if event["choices"] and event["choices"][0].get("text"):
                        chunks += 1
                        ttft = ttft or time.perf_counter() - t0
        out.append({"ok": True, "ttft": ttft, "latency": time.perf_counter() - t0, "chunks": chunks})
    except Exception as e:  # timeouts and resets count as errors
        out.append({"ok": False, "status": type(e).__name__})


async def level(base: str, model: str, concurrency: int, n: int, tokens: int, extra: dict, offset: int) -> dict:
    import httpx

    results: list = []
    sem = asyncio.Semaphore(concurrency)

    async def task(i: int) -> None:
        async with sem:
            body = {"model": model, "prompt": f"Story {offset + i}: once upon a time, in town number {offset + i},",
                    "max_tokens": tokens, "temperature": 0, "stream": True, **extra}
            await one(client, f"{base}/v1/completions", body, results)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(n)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    return {"concurrency": concurrency, "requests": n, "req_s": round(len(ok) / wall, 3),
            "tok_s": round(len(ok) * tokens / wall, 2),
            "ttft_ms_p50": round(float(np.median([r["ttft"] for r in ok])) * 1000, 1) if ok else None,
            "latency_ms_p95": round(float(np.percentile([r["latency"] for r in ok], 95)) * 1000, 1) if ok else None,
            "errors": len(results) - len(ok), "chunks_mean": round(float(np.mean([r["chunks"] for r in ok])), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="the Q4_K_M GGUF (default: $LLMLAB_HOME/demo-q4_k_m/demo-q4_k_m.gguf)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    from llmlab import settings
    from llmlab.runtime import load
    from llmlab.store import library_versions

    gguf = Path(args.gguf or settings.home() / "demo-q4_k_m" / "demo-q4_k_m.gguf")
    with load(gguf) as m:
        eos = m.eos_id
        n_ctx = m.n_ctx
    load_start = os.getloadavg()
    env = {**os.environ, "LLMLAB_THREADS": str(args.threads), "LLMLAB_TRACKING_URI": "off"}
    servers = {
        "llmlab": ([sys.executable, "-m", "llmlab", "serve", str(gguf), "--model-name", "m", "--log-fsync", "false",
                    "--max-queue", "32", "--log-path", "/tmp/llmlab-bench-serve.jsonl"], {"ignore_eos": True}),
        "llama_cpp.server": ([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
                              "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                              "--n_ctx", str(n_ctx), "--verbose", "false",
                              # its default cuts a running request off when the next arrives: queue instead
                              "--interrupt_requests", "false"], {"logit_bias": {str(eos): -100.0}}),
    }
    runs, offset = [], 0
    for name, (cmd, extra) in servers.items():
        port = free_port()
        proc = start(cmd + ["--port", str(port)], port, env)
        try:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(level(base, "m", 1, 2, args.tokens, extra, 10_000))  # warm-up
            for c in (1, 4, 16):
                row = asyncio.run(level(base, "m", c, max(args.requests, c), args.tokens, extra, offset))
                offset += row["requests"]
                runs.append({"server": name, **row})
                print(json.dumps(runs[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    # overload: a queue of 4, 32 requests at once
    port = free_port()
    cmd = [sys.executable, "-m", "llmlab", "serve", str(gguf), "--model-name", "m", "--log-fsync", "false",
           "--max-queue", "4", "--log-path", "/tmp/llmlab-bench-serve.jsonl", "--port", str(port)]
    proc = start(cmd, port, env)
    try:
        results: list = []

        async def burst() -> None:
            import httpx

            async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
                await asyncio.gather(*(one(client, f"http://127.0.0.1:{port}/v1/completions", {
                    "model": "m", "prompt": f"Burst {i}", "max_tokens": args.tokens, "stream": True,
                    "ignore_eos": True}, results) for i in range(32)))

        asyncio.run(burst())
        import httpx

        healthy = httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        statuses = [r.get("status", 200) for r in results]
        overload = {"requests": 32, "max_queue": 4, "ok": statuses.count(200), "status_429": statuses.count(429),
                    "other_errors": len([s for s in statuses if s not in (200, 429)]), "healthy_after": healthy}
    finally:
        proc.terminate()
        proc.wait(30)

    def tok_s(server: str) -> float:
        return next(r["tok_s"] for r in runs if r["server"] == server and r["concurrency"] == 4)

    out = {
        "runs": runs,
        "ratio": round(tok_s("llmlab") / tok_s("llama_cpp.server"), 3),
        "overload": overload,
        "goals": {"ratio_at_least": 1.0, "errors_up_to_concurrency_4": 0},
        "settings": {
            "model": str(gguf.name), "size_bytes": gguf.stat().st_size, "threads": args.threads,
            "generated_tokens_per_request": args.tokens, "requests_per_level": args.requests,
            "endpoint": "/v1/completions (streaming)", "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": {**library_versions(("llmlab", "llama_cpp_python")),
                         **library_versions(("fastapi", "uvicorn", "starlette"))},
            "load_avg": {"start": [round(x, 2) for x in load_start],
                         "end": [round(x, 2) for x in os.getloadavg()]},
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"ratio": out["ratio"], "overload": overload}))


if __name__ == "__main__":
    main()
