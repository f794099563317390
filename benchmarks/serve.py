"""Serve throughput: `llmlab serve` against `python -m llama_cpp.server` and llama.cpp's own `llama-server`.

Usage: python benchmarks/serve.py --gguf PATH [--threads 1] [--tokens 32] [--llama-server PATH] [--parallel 4]
       [--repeats 3]
       (make the GGUF with `llmlab quantize demo --types '[q4_k_m]'`; default: $LLMLAB_HOME/demo-q4_k_m)
Writes benchmarks/results/serve.json: ``runs`` ({server, concurrency, req_s, tok_s, ttft_ms_p50,
latency_ms_p95, errors}, the median of ``--repeats`` rounds in the same server, with every round's
``tok_s_rounds`` and the errors of all) at concurrency 1, 4 and 16 with distinct prompts (no prompt cache hits) and
exactly ``--tokens`` generated tokens per request (EOS suppressed: ``ignore_eos`` for llmlab and
llama-server, ``logit_bias`` for llama_cpp.server). ``llama-server`` (continuous batching over
``--parallel`` slots) runs when it is built: ``bash scripts/build_llama_server.sh`` builds it once
from the llama.cpp sources llama-cpp-python vendors. Both run flash attention by default; llmlab also runs
without it (``llmlab --flash-attn false``). ``ratios``: llmlab tok/s over each other server's
at concurrency 4 and its own c4/c1 (``ratio``: the one over llama_cpp.server, as before);
``shared_prefix`` (per server, time to first token of 8 requests one after the other whose prompts
start with the same ~310 tokens, as a system prompt does: a server that reuses the cached start answers
sooner); ``bandwidth_fraction`` (llmlab's weight reads per second over the machine's read bandwidth at
concurrency 1 and 4: a step reads the file once, and at 4 serves 4 tokens); ``overload`` (llmlab with a queue of 4 hit by 32 requests at once: 429s, no 5xx, still healthy);
``settings`` (model, threads, parallel, versions, load average at start and end: the machine is
shared). Every server gets the same thread count (llama_cpp.server's default is half the cores).

       python benchmarks/serve.py --multi-adapter --home /path/to/store-with-smollm2 [--threads 1]
              [--outtype f16|f32] [--adapter-outtype f32|f16] [--requests 24]
writes only the ``multi_adapter`` key of serve.json (the other keys are kept; ``--outtype f32`` writes
``multi_adapter.f32``): one base GGUF with N LoRA adapters in one bundle against N merged models (see
``multi_adapter``). The work happens in a copy of the store's artifacts under ``--work``.
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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str | None:
    """The CPU's name (/proc/cpuinfo): figures (and the demo model's training) differ from one CPU to another."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return None


def llama_kernels() -> str:
    """The instruction sets llama.cpp was compiled for (its system info)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    import httpx

    # stderr to a file, not a pipe nobody reads: a server that logs every request (llama-server does)
    # would fill the pipe and stall mid-benchmark
    with tempfile.NamedTemporaryFile(prefix="llmlab-bench-server-", suffix=".log", delete=False) as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    log = Path(err.name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:  # model loaded
                return proc
        except httpx.TransportError:
            pass
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


PREFIX = ("You are the archivist of the river towns. Answer from what you know of their people, trades and "
          "places, in one short sentence, and say you don't know when you don't. ") * 8  # ~310 tokens


async def level(base: str, model: str, concurrency: int, n: int, tokens: int, extra: dict, offset: int,
                prefix: str = "") -> dict:
    import httpx

    results: list = []
    sem = asyncio.Semaphore(concurrency)

    async def task(i: int) -> None:
        async with sem:
            body = {"model": model, "prompt": f"{prefix}Story {offset + i}: once upon a time, in town number {offset + i},",
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
            "errors": len(results) - len(ok), "error_kinds": sorted({str(r["status"]) for r in results if not r["ok"]}),
            "chunks_mean": round(float(np.mean([r["chunks"] for r in ok])), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="the Q4_K_M GGUF (default: $LLMLAB_HOME/demo-q4_k_m/demo-q4_k_m.gguf)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds per level in each server; its row is the median round (by tokens/s)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    parser.add_argument("--llama-server", help="llama.cpp's own llama-server (default: the one "
                        "scripts/build_llama_server.sh built and cached, when it is there)")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server's parallel slots")
    parser.add_argument("--multi-adapter", action="store_true", help="run only the multi_adapter section")
    parser.add_argument("--home", help="multi_adapter: a store holding smollm2, smollm2-f16 and smollm2-reader "
                        "(read only: the work happens in a copy under --work)")
    parser.add_argument("--work", default="/tmp/llmlab-bench-multi-adapter", help="multi_adapter: work folder")
    parser.add_argument("--adapters", type=int, default=3, help="multi_adapter: number of adapters (N)")
    parser.add_argument("--outtype", default="f16", choices=("f16", "f32"),
                        help="multi_adapter: GGUF type of the base, the adapters and the merged models (f32 is "
                        "written as multi_adapter.f32, beside the f16 figures)")
    parser.add_argument("--adapter-outtype", default="f32", choices=("f16", "f32"),
                        help="multi_adapter: GGUF type of the adapters (f32: ~6%% faster than f16 on SmolLM2 here, "
                        "the adapters stay small)")
    parser.add_argument("--rss-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child)
    if args.multi_adapter:
        return multi_adapter(args)
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
        # flash attention is on by default in both llmlab and llama-server (auto on CPU); llmlab without it too
        "llmlab --flash-attn false": ([sys.executable, "-m", "llmlab", "serve", str(gguf), "--model-name", "m",
                                       "--log-fsync", "false", "--max-queue", "32", "--flash-attn", "false",
                                       "--log-path", "/tmp/llmlab-bench-serve.jsonl"], {"ignore_eos": True}),
        "llama_cpp.server": ([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
                              "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                              "--n_ctx", str(n_ctx), "--verbose", "false",
                              # its default cuts a running request off when the next arrives: queue instead
                              "--interrupt_requests", "false"], {"logit_bias": {str(eos): -100.0}}),
    }
    llama_server = args.llama_server or cached_llama_server()
    if llama_server:  # continuous batching over --parallel slots, each with n_ctx of its own
        servers["llama-server"] = ([llama_server, "-m", str(gguf), "--alias", "m", "-t", str(args.threads),
                                    "-tb", str(args.threads), "-np", str(args.parallel), "-c",
                                    str(n_ctx * args.parallel), "--host", "127.0.0.1", "--no-webui"],
                                   {"ignore_eos": True})
    runs, prefixed, offset = [], [], 0
    for name, (cmd, extra) in servers.items():
        port = free_port()
        proc = start(cmd + ["--port", str(port)], port, env)
        try:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(level(base, "m", 1, 2, args.tokens, extra, 10_000))  # warm-up
            for c in (1, 4, 16):
                rounds = []
                for _ in range(args.repeats):  # fresh prompts each round, in the same server
                    rounds.append(asyncio.run(level(base, "m", c, max(args.requests, c), args.tokens, extra, offset)))
                    offset += rounds[-1]["requests"]
                row = sorted(rounds, key=lambda r: r["tok_s"])[len(rounds) // 2]  # the median round
                runs.append({"server": name, **row, "tok_s_rounds": [r["tok_s"] for r in rounds],
                             "errors": sum(r["errors"] for r in rounds),
                             "error_kinds": sorted({k for r in rounds for k in r["error_kinds"]})})
                print(json.dumps(runs[-1]), flush=True)
            # one after the other, every prompt starting with the same ~310 tokens (a system prompt)
            asyncio.run(level(base, "m", 1, 1, 4, extra, 20_000, prefix=PREFIX))  # the prefix computed once
            row = asyncio.run(level(base, "m", 1, 8, 8, extra, offset, prefix=PREFIX))
            offset += row["requests"]
            prefixed.append({"server": name, "ttft_ms_p50": row["ttft_ms_p50"], "requests": row["requests"],
                             "errors": row["errors"]})
            print(json.dumps(prefixed[-1]), flush=True)
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

    def tok_s(server: str, concurrency: int = 4) -> float:
        return next(r["tok_s"] for r in runs if r["server"] == server and r["concurrency"] == concurrency)

    ratios = {"vs_llama_cpp_server_c4": round(tok_s("llmlab") / tok_s("llama_cpp.server"), 3),
              "c4_over_c1": round(tok_s("llmlab") / tok_s("llmlab", 1), 3)}
    # how much of the machine's memory bandwidth the weights' reads use: one pass over the file per decode
    # step, and a step at concurrency 4 serves 4 tokens (quantize.py's read_bandwidth: a numpy sum)
    from quantize import read_bandwidth

    bw = read_bandwidth(args.threads)
    size = gguf.stat().st_size
    bandwidth = {"read_bandwidth_gb_s": round(bw / 1e9, 2),
                 "c1": round(tok_s("llmlab", 1) * size / bw, 3), "c4": round(tok_s("llmlab") / 4 * size / bw, 3)}
    if "llama-server" in servers:
        ratios.update(vs_llama_server_c4=round(tok_s("llmlab") / tok_s("llama-server"), 3),
                      no_flash_attn_vs_llama_server_c4=round(tok_s("llmlab --flash-attn false")
                                                             / tok_s("llama-server"), 3),
                      llama_server_c4_over_c1=round(tok_s("llama-server") / tok_s("llama-server", 1), 3))
    out = {
        **(json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}),  # keeps multi_adapter
        "runs": runs,
        "ratio": ratios["vs_llama_cpp_server_c4"],
        "ratios": ratios,
        "overload": overload,
        "shared_prefix": prefixed,
        "bandwidth_fraction": bandwidth,
        "goals": {"ratio_at_least": 1.0, "errors_up_to_concurrency_4": 0},
        "settings": {
            "model": str(gguf.name), "size_bytes": gguf.stat().st_size, "threads": args.threads,
            "llama_server_parallel": args.parallel if "llama-server" in servers else None,
            "generated_tokens_per_request": args.tokens, "requests_per_level": args.requests,
            "rounds_per_level": args.repeats,
            "endpoint": "/v1/completions (streaming)", "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(), "cpu_model": cpu_model(),
            "llama_cpp_kernels": llama_kernels(),
            "versions": {**library_versions(("llmlab", "llama_cpp_python")),
                         **library_versions(("fastapi", "uvicorn", "starlette"))},
            "load_avg": {"start": [round(x, 2) for x in load_start],
                         "end": [round(x, 2) for x in os.getloadavg()]},
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "overload": overload}))


def cached_llama_server() -> str | None:
    """The llama-server scripts/build_llama_server.sh cached for the installed llama-cpp-python, if built."""
    import importlib.metadata

    cache = Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))
    path = cache / f"llama-server-{importlib.metadata.version('llama_cpp_python')}" / "llama-server"
    return str(path) if path.is_file() else None


# ----- multi_adapter: one base with N adapters against N merged models -----
SOURCE_ARTIFACTS = ("smollm2", "smollm2-f16", "smollm2-reader")


def _random_lora(store, name: str, seed: int) -> None:
    """A peft LoRA on every linear layer of smollm2 with random, moderate weights (quality does not
    matter for memory, speed and parity; the answers must differ from the base's)."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.store import Parent

    base = store.get("smollm2")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.02)
    with tempfile.TemporaryDirectory() as tmp, store.write(name, "adapter") as w:
        peft_model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base.path).save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            shutil.copy(f, w.path / f.name)
        w.parents = [Parent(name=base.name, content_hash=base.content_hash, role="base")]


def _gguf(store, source: str, folder: Path, name: str, outtype: str) -> str:
    """The GGUF artifact ``name``: the Hugging Face ``folder`` (made from ``source``) converted to ``outtype``."""
    from llmlab.quantize import gguf
    from llmlab.store import Parent

    if not store.exists(name):
        art = store.get(source)
        with store.write(name, "gguf") as w:
            gguf.convert(folder, w.path / f"{name}.gguf", outtype)
            w.parents = [Parent(name=source, content_hash=art.content_hash, role="source")]
    return name


def _prepare(args) -> tuple[Path, str, dict[str, str], dict[str, str], dict[str, str], str]:
    """The work store (a copy of the source artifacts), the base GGUF, and per peft adapter: its name in
    the bundle, its gguf-adapter artifact and its merged GGUF; the bundle. (f16 base and adapters: the
    export converts the peft adapters itself; other types are converted here.)"""
    import shutil

    from llmlab.export import ExportConfig, export
    from llmlab.quantize.adapter import GGUFAdapterConfig, convert_adapter
    from llmlab.runtime.adapters import merged_folder
    from llmlab.store import Store

    home = Path(args.work) / "home"
    home.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_ARTIFACTS:
        if not (home / name).is_dir():
            shutil.copytree(Path(args.home) / name, home / f".{name}.copy")
            (home / f".{name}.copy").rename(home / name)
    store = Store(home)
    adapters = ["smollm2-reader"] + [f"smollm2-random{i}" for i in range(1, args.adapters)]
    for i, name in enumerate(adapters[1:], 1):
        if not store.exists(name):
            _random_lora(store, name, seed=i)
    t, at = args.outtype, args.adapter_outtype
    base = _gguf(store, "smollm2", store.get("smollm2").path, f"smollm2-{t}", t)
    merged = {a: _gguf(store, a, merged_folder(store.get(a), store), f"{a}-merged-{t}", t) for a in adapters}
    if t == at == "f16":
        in_bundle, gguf = {a: a for a in adapters}, {a: f"{a}-gguf" for a in adapters}
    else:
        in_bundle = gguf = {a: f"{a}-{at}-for-{t}-gguf" for a in adapters}
        for a in adapters:
            if not store.exists(gguf[a]):
                convert_adapter(GGUFAdapterConfig(adapter=a, base=base, name=gguf[a], outtype=at), store=store)
    bundle = f"smollm2-{t}-{args.adapters}-{at}-adapters"
    if not store.exists(bundle):
        export(ExportConfig(model=base, adapters=list(in_bundle.values()), name=bundle, tarball=False), store=store)
    return home, base, in_bundle, gguf, merged, bundle


def rss_child(argv: list[str]) -> None:
    """In a fresh process: load what ``argv`` says, generate with each model, print peak and current RSS.
    ``adapters HOME BASE A1 A2 ...`` (one base holding the gguf-adapters) or ``merged HOME M1 M2 ...``."""
    from llmlab.runtime import SamplingParams, load
    from llmlab.runtime.adapters import load_with_adapters
    from llmlab.store import Store

    mode, home, *names = argv
    store = Store(home)
    params = SamplingParams.greedy(32)
    ask = [{"role": "user", "content": "Tell me a short story about a baker."}]
    if mode == "adapters":
        with load_with_adapters(names[0], {a: a for a in names[1:]}, store=store) as m:
            for a in names[1:]:
                with m.adapter(a):
                    m.chat(ask, params)
            print(json.dumps(_rss()))
    else:
        models = [load(n, store=store) for n in names]
        for m in models:
            m.chat(ask, params)
        print(json.dumps(_rss()))
        for m in models:
            m.close()


def _rss() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def _measure_rss(home: Path, mode: str, names: list[str], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--rss-child", mode, str(home), *names], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _paired_tok_s(arms: dict[str, tuple[list[str], list[str]]], env: dict[str, str], tokens: int,
                  rounds: int) -> dict[str, float]:
    """Generated tokens/s of each arm ({arm: (server command, models to cycle through)}), every server
    running at once and the arms taking turns request by request, so a busy shared machine slows them
    alike. One plain /v1/completions of ``tokens`` tokens (EOS ignored) per arm and round."""
    import httpx

    procs, urls = [], {}
    try:
        for arm, (cmd, _) in arms.items():
            port = free_port()
            procs.append(start(cmd + ["--port", str(port)], port, env))
            urls[arm] = f"http://127.0.0.1:{port}"
        seconds = dict.fromkeys(arms, 0.0)
        with httpx.Client(timeout=300) as http:
            for i in range(-1, rounds):  # round -1: warm-up, not timed
                for arm, (_, models) in arms.items():
                    for m in (models if i < 0 else [models[i % len(models)]]):
                        body = {"model": m, "prompt": f"Story {i}: once upon a time, in town number {i},",
                                "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
                        t0 = time.perf_counter()
                        r = http.post(f"{urls[arm]}/v1/completions", json=body)
                        if r.status_code != 200 or r.json()["usage"]["completion_tokens"] != tokens:
                            raise RuntimeError(f"{arm}: {m} answered {r.status_code}: {r.text[:300]}")
                        if i >= 0:
                            seconds[arm] += time.perf_counter() - t0
        return {arm: round(rounds * tokens / t, 2) for arm, t in seconds.items()}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _merged_parity(home: Path, bundle: str, in_bundle: dict[str, str], merged: dict[str, str],
                   env: dict[str, str]) -> dict[str, Any]:
    """Each adapter through the bundle's server (alternating adapters) against its merged model in
    process: greedy answers of the parity prompts, and the log-probabilities of the served tokens."""
    import httpx

    from llmlab.export.parity import PROMPTS, decoded_logprobs
    from llmlab.runtime import SamplingParams, load
    from llmlab.store import Store

    store = Store(home)
    port = free_port()
    proc = start([sys.executable, "-m", "llmlab", "serve", str(home / bundle), "--log-fsync", "false",
                  "--log-path", "/tmp/llmlab-bench-multi.jsonl", "--port", str(port)], port, env)
    report: dict[str, Any] = {}
    try:
        adapters = list(in_bundle)
        refs = {a: load(merged[a], store=store) for a in adapters}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            rows = {a: {"greedy_equal": 0, "prompts": 0, "max_logprob_diff": 0.0} for a in adapters}
            for text in PROMPTS:
                for a in adapters:  # alternating: the server switches adapters on every request
                    msgs = [{"role": "user", "content": text}]
                    r = http.post("/v1/chat/completions", json={"model": f"{bundle}:{in_bundle[a]}", "messages": msgs,
                                                                "temperature": 0, "max_tokens": 16,
                                                                "logprobs": True}).json()
                    got = r["choices"][0]["message"]["content"]
                    ref = refs[a]
                    want = ref.chat(msgs, SamplingParams.greedy(16))
                    row = rows[a]
                    row["prompts"] += 1
                    row["greedy_equal"] += int(got == want)
                    ids = ref.tokenize(ref.apply_chat_template(msgs))
                    lps = [t["logprob"] for t in r["choices"][0]["logprobs"]["content"]]
                    if got == want and lps:
                        out = list(ref.generate_ids(ids, SamplingParams.greedy(16)))
                        diff = np.abs(np.array(lps) - decoded_logprobs(ref, ids, out)).max()
                        row["max_logprob_diff"] = round(max(row["max_logprob_diff"], float(diff)), 5)
            report = rows
        for m in refs.values():
            m.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return report


def multi_adapter(args) -> None:
    """One bundle (smollm2 as GGUF ``--outtype`` + N adapters: the trained reader and N-1 random LoRAs)
    against N merged GGUFs of the same type: peak RSS of each set loaded in a fresh process (after generating with every model),
    tokens/s of one server alternating adapters per request against one server of one merged model
    (same requests, sequential), and parity of every adapter: the export's check (bundle server vs the
    adapter artifact, exact) and the served answers against each merged model."""
    from llmlab.store import Store, library_versions

    if not args.home:
        raise SystemExit("--multi-adapter needs --home (a store with smollm2, smollm2-f16, smollm2-reader)")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    home, base, in_bundle, gguf, merged, bundle = _prepare(args)
    adapters = list(in_bundle)
    store = Store(home)
    export_parity = store.get(bundle).metrics.get("parity", {})
    env = {**os.environ, "LLMLAB_HOME": str(home), "LLMLAB_THREADS": str(args.threads), "LLMLAB_TRACKING_URI": "off",
           "OMP_NUM_THREADS": str(args.threads)}
    os.environ["LLMLAB_THREADS"] = str(args.threads)  # the in-process references of the parity check too
    rss_adapters = _measure_rss(home, "adapters", [base, *gguf.values()], env)
    rss_merged = _measure_rss(home, "merged", [merged[a] for a in adapters], env)
    rss_one_merged = _measure_rss(home, "merged", [merged[adapters[0]]], env)
    print(json.dumps({"rss_adapters": rss_adapters, "rss_merged": rss_merged, "rss_one_merged": rss_one_merged}),
          flush=True)
    serve = [sys.executable, "-m", "llmlab", "serve", "--log-fsync", "false", "--log-path",
             "/tmp/llmlab-bench-multi.jsonl", "--max-queue", "32"]
    one_merged = str(home / merged[adapters[0]] / f"{merged[adapters[0]]}.gguf")
    speed = _paired_tok_s({
        "switching": ([*serve[:4], str(home / bundle), *serve[4:]], [f"{bundle}:{in_bundle[a]}" for a in adapters]),
        "one_adapter": ([*serve[:4], str(home / bundle), *serve[4:]], [f"{bundle}:{in_bundle[adapters[0]]}"]),
        "merged": ([*serve[:4], one_merged, "--model-name", "m", *serve[4:]], ["m"]),
    }, env, args.tokens, args.requests)
    print(json.dumps(speed), flush=True)
    vs_merged = _merged_parity(home, bundle, in_bundle, merged, env)
    ok = bool(export_parity.get("ok"))  # the export raised ParityError otherwise
    section = {
        "adapters": len(adapters),
        "rss_one_base_mb": rss_adapters["VmHWM"],
        "rss_merged_models_mb": rss_merged["VmHWM"],
        "tok_s_switching": speed["switching"],
        "tok_s_merged": speed["merged"],
        "parity": ok and all(r["greedy_equal"] == r["prompts"] and r["max_logprob_diff"] <= 1e-2
                             for r in vs_merged.values()),
        "memory_ratio": round(rss_adapters["VmHWM"] / rss_merged["VmHWM"], 3),
        "speed_ratio": round(speed["switching"] / speed["merged"], 3),
        "tok_s_one_adapter_no_switching": speed["one_adapter"],
        "rss_one_merged_model_mb": rss_one_merged["VmHWM"],
        "parity_export": {"ok": ok, "mode": export_parity.get("mode"), "tolerance": export_parity.get("tolerance"),
                          "max_logprob_diff": export_parity.get("max_logprob_diff"),
                          "adapters": export_parity.get("adapters")},
        "parity_vs_merged": vs_merged,
        "goals": {"memory_ratio_at_most": 0.5, "speed_ratio_at_least": 0.8, "parity": True},
        "settings": {
            "base": f"{base} (SmolLM2-135M-Instruct, GGUF {args.outtype})", "bundle": bundle,
            "adapter_names": list(in_bundle.values()),
            "adapters_made": "smollm2-reader (the tuned reader LoRA, r16) and random peft LoRAs (r16, all linear "
                             f"layers, nonzero init, B x 0.02), converted with llmlab gguf-adapter "
                             f"(--outtype {args.adapter_outtype})",
            "merged_models": "each adapter merged into smollm2 (peft merge_and_unload) and converted to GGUF "
                             f"{args.outtype}",
            "parity_vs_merged": "each adapter through the bundle's server (requests alternating adapters) against its "
                                "merged GGUF in process: greedy answers to the 4 parity prompts (16 tokens) equal, "
                                "log-probabilities of the answer tokens within 1e-2",
            "rss": "peak RSS (VmHWM) of a fresh process that loads the set and generates 32 tokens with each model",
            "tok_s": f"{args.requests} rounds of sequential /v1/completions of {args.tokens} tokens (EOS ignored), "
                     "three servers up at once taking turns request by request: switching = the bundle, the adapter "
                     "changes on every request; one_adapter = the bundle, always the first adapter; merged = one "
                     "merged model's GGUF",
            "threads": args.threads, "cores": os.cpu_count(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "llama_cpp_kernels": llama_kernels(), "flash_attention": True,
            "versions": library_versions(("llmlab", "llama_cpp_python", "peft", "transformers")),
            "nice": os.nice(0), "seconds": round(time.perf_counter() - t0, 1),
            "load_avg": {"start": [round(x, 2) for x in load_start],
                         "end": [round(x, 2) for x in os.getloadavg()]},
        },
    }
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    if args.outtype == "f16":
        data["multi_adapter"] = {**section, **{k: v for k, v in data.get("multi_adapter", {}).items() if k == "f32"}}
    else:
        data.setdefault("multi_adapter", {})[args.outtype] = section
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in section.items() if k not in ("settings", "parity_vs_merged")}, indent=2))


if __name__ == "__main__":
    main()
