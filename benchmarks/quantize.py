"""Measure the Quantize station: GGUF quality per type, the importance matrix, GPTQ/AWQ/RTN, and speed.

Usage: LLMLAB_THREADS=1 python benchmarks/quantize.py [--home /tmp/bench-models] [--only gguf,imatrix,...]
Parts (all by default): ``gguf`` (one row per type: size, bits per weight, perplexity, KL divergence
and top-1 agreement against the f16 GGUF, generation tokens/s; plus imatrix rows), ``imatrix`` (is
the imatrix Q4_K_M's KL difference from plain Q4_K_M real or noise: calibration sets, calibration
seeds, eval splits), ``imatrix_big`` (the same question on a bigger model: build-demo's ``large`` shape,
~29M parameters, trained ``--big-steps`` steps on TinyStories and cached under ``--big-cache``; plain vs
imatrix Q4_K_M, IQ4_XS, Q3_K_M and Q2_K, an all-ones control matrix, and imatrix IQ3_XXS, against its
f16 GGUF on >= 12k TinyStories validation tokens; its result sets the top-level ``imatrix_goal``),
``gptq`` (GPTQ, AWQ and RTN at 4 bits, group size 32), ``ratio`` (generation tokens/s through
llmlab's runtime divided by plain ``llama_cpp.Llama``, alternating runs) and ``bandwidth`` (a
random-weights Llama whose Q4_K_M file is >= 100 MB: tokens/s x file bytes / the memory read
bandwidth measured here). Writes benchmarks/results/quantize.json (parts not run keep their previous
values) with a ``settings`` block: model, threads, versions, load average at start and end (the
machine is shared). The demo model is copied from /tmp/demo-home when present, else built once into
--home; the bandwidth model is cached under /tmp/llmlab-bench-bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("gguf", "imatrix", "imatrix_big", "gptq", "ratio", "bandwidth")
PLAIN_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q3_K_S",
               "Q2_K", "IQ4_NL", "IQ4_XS"]
IMATRIX_TYPES = ["Q4_K_M", "IQ3_S", "IQ3_XXS", "IQ2_M", "IQ2_XS"]
BANDWIDTH_CACHE = Path("/tmp/llmlab-bench-bandwidth")
BIG_CACHE = Path("/tmp/llmlab-bench-imatrix-big")
# (type, with an importance matrix?) rows of the bigger-model study; the IQ types need one
BIG_VARIANTS = [("Q4_K_M", False), ("Q4_K_M", True), ("IQ4_XS", False), ("IQ4_XS", True), ("Q3_K_M", False),
                ("Q3_K_M", True), ("Q2_K", False), ("Q2_K", True), ("IQ3_XXS", True)]
BIG_EVAL_TOKENS = 12_000
BIG_STEPS = 220
BIG_EVERY_IMATRIX = ("Q4_K_M", "Q3_K_M", "Q2_K")  # types also run with sample B and the uniform control
UNIFORM = "uniform (control)"


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----- the demo model and its texts -----
def demo_store(home: Path) -> Any:
    from llmlab.store import Store

    store = Store(home)
    if not store.exists("demo"):
        shipped = Path("/tmp/demo-home/demo")
        if (shipped / "manifest.json").is_file():
            shutil.copytree(shipped, home / "demo")
        else:
            from llmlab.build import BuildDemoConfig, build_demo

            print("building the small demo model (~5 min at 2 threads)")
            build_demo(BuildDemoConfig(name="demo", size="small"), store=store)
    return store


def world_texts(store: Any) -> tuple[list[str], list[str], list[str]]:
    """(fact sentences, training stories, held-out eval stories) of the demo's world."""
    from llmlab.world import find_world

    w = find_world(store, store.get("demo"))
    return list(w.texts), list(w.stories), [s for s in w.eval_text.splitlines() if s.strip()]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


# ----- gguf -----
def gguf_rows(store: Any, work: Path) -> dict[str, Any]:
    from llmlab.quantize.step import QuantizeConfig, quality_table, quantize

    facts, stories, _ = world_texts(store)
    calib = write_jsonl(work / "calibration.jsonl", facts + stories)
    plain = quantize(QuantizeConfig(model="demo", types=PLAIN_TYPES, score=False, redo=True), store=store,
                     overwrite=True)
    imat = quantize(QuantizeConfig(model="demo", name_prefix="demo-im", types=IMATRIX_TYPES, imatrix=str(calib),
                                   score=False, redo=True), store=store, overwrite=True)
    t0 = time.perf_counter()
    table = quality_table(plain["variants"] + imat["variants"], store, qa=[], redo=True)
    rows = [{"type": r["type"] + (" imatrix" if r["name"].startswith("demo-im-") else ""), "name": r["name"],
             "size_bytes": r["size_bytes"], "bpw": r["bpw"], "ppl": _r(r["ppl"]), "kld": _r(r["kld_mean"], 6),
             "top1": _r(r["top1"]), "tok_s": _r(r["gen_tok_s"], 1)} for r in table]
    by = {r["type"]: r for r in rows}
    goals = {
        "kld_rises_as_bits_fall": by["Q8_0"]["kld"] < by["Q6_K"]["kld"] < by["Q4_K_M"]["kld"] < by["Q2_K"]["kld"],
        "q8_0_top1_at_least_0.98": by["Q8_0"]["top1"] >= 0.98,
        "imatrix_q4_k_m_kld_no_worse": by["Q4_K_M imatrix"]["kld"] <= by["Q4_K_M"]["kld"],
    }
    f16 = store.get("demo-f16")
    return {"rows": rows, "goals": goals, "reference": f16.name, "f16_size_bytes": f16.size_bytes,
            "calibration": "world fact sentences + training stories (disjoint from the eval stories)",
            "score_seconds": round(time.perf_counter() - t0, 1)}


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(float(x), n)


# ----- is the imatrix difference real? -----
def imatrix_study(store: Any, work: Path) -> dict[str, Any]:
    """KL of Q4_K_M against f16 without and with importance matrices from different calibration
    sets and seeds, on the whole eval text and on four disjoint parts of it (paired differences)."""
    import random

    from llmlab.quantize import gguf
    from llmlab.runtime import load
    from llmlab.scoring import compare

    facts, stories, evals = world_texts(store)
    f16 = store.get("demo-f16").file(".gguf")
    groups = [evals[i::4] for i in range(4)]

    def quantize_with(texts: list[str] | None, tag: str) -> Path:
        im = None if texts is None else work / f"{tag}.imatrix.gguf"
        if im is not None:
            gguf.compute_imatrix(f16, texts, im, dataset=tag)
        return gguf.quantize(f16, work / f"{tag}.q4_k_m.gguf", "Q4_K_M", imatrix=im)

    variants = {"plain": quantize_with(None, "plain"),
                "facts (the 'world' default)": quantize_with(facts, "facts"),
                "facts + stories": quantize_with(facts + stories, "all"),
                # calibrating on the evaluation text itself: not for use, only to rule out a mismatch
                "eval text itself (oracle)": quantize_with(evals, "oracle")}
    for seed in range(3):
        half = random.Random(seed).sample(facts + stories, (len(facts) + len(stories)) // 2)
        variants[f"random half, seed {seed}"] = quantize_with(half, f"seed{seed}")
    out: dict[str, Any] = {"eval_tokens": None, "variants": {}}
    with load(f16) as ref:
        for label, path in variants.items():
            with load(path) as m:
                whole = compare(m, ref, evals)
                parts = [compare(m, ref, g)["kld_mean"] for g in groups]
            out["eval_tokens"] = whole["tokens"]
            out["variants"][label] = {"kld": _r(whole["kld_mean"], 6), "top1": _r(whole["top1"]),
                                      "kld_by_eval_part": [_r(k, 6) for k in parts]}
    plain = out["variants"]["plain"]["kld_by_eval_part"]
    for label, v in out["variants"].items():
        diffs = [a - b for a, b in zip(v["kld_by_eval_part"], plain, strict=True)]
        v["minus_plain_by_part"] = [_r(d, 6) for d in diffs]
        v["better_than_plain_in_parts"] = sum(d < 0 for d in diffs)
    seeds = [out["variants"][f"random half, seed {s}"]["kld"] for s in range(3)]
    out["seed_kld_mean"], out["seed_kld_sd"] = _r(statistics.mean(seeds), 6), _r(statistics.stdev(seeds), 6)
    out["imatrix_vs_transformers"] = imatrix_check(store, work, evals[0] + evals[1])
    return out


def imatrix_check(store: Any, work: Path, text: str) -> dict[str, Any]:
    """Largest relative difference between llmlab's importance matrix (llama.cpp, f16) and the mean
    squared inputs of the same layers in transformers (fp32) on the same tokens: is the matrix right?"""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.quantize import gguf

    demo = store.get("demo").path
    gguf.compute_imatrix(store.get("demo-f16").file(".gguf"), [text], work / "check.imatrix.gguf")
    ours = gguf.read_imatrix(work / "check.imatrix.gguf")
    tok = AutoTokenizer.from_pretrained(demo)
    ids = [tok.bos_token_id, *tok.encode(text, add_special_tokens=True)]  # each chunk starts with BOS
    model = AutoModelForCausalLM.from_pretrained(demo, dtype=torch.float32)
    modules = {"self_attn.q_proj": "attn_q", "self_attn.o_proj": "attn_output", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
    theirs: dict[str, Any] = {}
    for i, layer in enumerate(model.model.layers):
        for hf, name in modules.items():
            layer.get_submodule(hf).register_forward_hook(
                lambda m, inp, out, k=f"blk.{i}.{name}.weight": theirs.__setitem__(k, (inp[0][0].double() ** 2)
                                                                                   .mean(0).numpy()))
    with torch.no_grad():
        model(torch.tensor([ids]))
    errs = {k: float(np.abs(v - ours[k]).max() / np.abs(v).max()) for k, v in theirs.items()}
    return {"tokens": len(ids), "weights_compared": len(errs), "max_relative_difference": _r(max(errs.values()), 6)}


# ----- the importance matrix on a bigger model -----
def big_model(cache: Path, steps: int) -> Any:
    """The ``large`` demo shape (hidden 512, 8 layers, ~29M parameters) trained for ``steps`` steps of
    4 x 512 tokens on TinyStories (public data, via LLMLAB_DATA) plus the micro world; cached in
    ``cache``/store (a store of its own) so a re-run skips the training."""
    from llmlab.build import BuildDemoConfig, build_demo
    from llmlab.store import Store

    store = Store(cache / "store")
    name = f"big-{steps}"
    if not store.exists(name):
        print(f"training {name} (the large demo shape, {steps} steps; ~6 s per step at 1 thread)", flush=True)
        start = load_avg()
        build_demo(BuildDemoConfig(name=name, size="large", world_size="micro", steps=steps, batch_size=4,
                                   learning_rate=2e-3, grounded_share=0.0, tinystories_chars=1_000_000,
                                   eval_every=25), store=store, progress=_print_metrics)
        (cache / f"{name}.load_avg.json").write_text(json.dumps({"start": start, "end": load_avg()}))
    return store.get(name)


def imatrix_big(cache: Path, steps: int, home_store: Any) -> dict[str, Any]:
    """Plain vs importance-matrix KL divergence (and top-1) against the f16 GGUF of the bigger model,
    on >= ``BIG_EVAL_TOKENS`` tokens of TinyStories' validation text in four disjoint parts;
    importance matrices from two disjoint samples of TinyStories' training text, plus an all-ones
    control matrix."""
    import random

    import numpy as np

    from llmlab import data, gguf, settings
    from llmlab.quantize.step import gguf_bpw
    from llmlab.runtime import load
    from llmlab.scoring import compare, perplexity

    t0 = time.perf_counter()
    art = big_model(cache, steps)
    work = cache / art.name  # its GGUF files, beside the store
    work.mkdir(exist_ok=True)
    f16 = work / "f16.gguf"
    if not f16.is_file():
        gguf.convert(art.path, f16, "f16")
    train = data.load_texts(data.public_path("tinystories"))
    valid = data.load_texts(data.public_path("tinystories-valid"))
    with load(f16) as ref:
        evals: list[str] = []
        n_tokens = 0
        for text in valid:  # whole stories from the start of the validation file up to the token target
            if n_tokens >= BIG_EVAL_TOKENS:
                break
            evals.append(text)
            n_tokens += len(ref.tokenize(text, add_special=True))
        f16_ppl = perplexity(ref, evals)["ppl"]
    groups = [evals[i::4] for i in range(4)]
    # two disjoint random samples of the training stories (at most 64 chunks of 512 tokens each)
    shuffled = random.Random(0).sample(train, len(train))
    calib = {"train sample A": shuffled[:400], "train sample B": shuffled[400:800]}
    imatrices, imatrix_info = {}, {}
    for i, (label, texts) in enumerate(calib.items()):
        imatrices[label] = work / f"calib{i}.imatrix.gguf"
        imatrix_info[label] = gguf.compute_imatrix(f16, texts, imatrices[label], max_chunks=64, dataset=label)
    # Control: the same importance-matrix code path of llama.cpp with every weight equally important,
    # which tells the activation statistics apart from the different rounding search llama.cpp runs
    # whenever it is given a matrix. (Written with gguf's own imatrix writer.)
    imatrices[UNIFORM] = work / "uniform.imatrix.gguf"
    ones = {k: np.ones_like(v) for k, v in gguf.read_imatrix(imatrices["train sample A"]).items()}
    gguf.write_imatrix(imatrices[UNIFORM], ones, dict.fromkeys(ones, 1), chunks=1, chunk_size=512, dataset=UNIFORM)
    runs: list[tuple[str, str, str | None]] = []  # (label, type, calibration)
    for type_name, with_imatrix in BIG_VARIANTS:
        for label in (list(imatrices) if with_imatrix else [None]):
            if label not in (None, "train sample A") and type_name not in BIG_EVERY_IMATRIX:
                continue
            runs.append((f"{type_name}" + (f" imatrix ({label})" if label else " plain"), type_name, label))
    out: dict[str, Any] = {"variants": {}}
    tokens = 0
    with load(f16) as ref:
        for label, type_name, calibration in runs:
            path = gguf.quantize(f16, work / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}.gguf",
                                 type_name, imatrix=imatrices[calibration] if calibration else None)
            with load(path) as m:
                parts = [compare(m, ref, g, max_len=512, stride=512) for g in groups]
            tokens = sum(p["tokens"] for p in parts)
            out["variants"][label] = {
                "type": type_name, "imatrix": calibration, "size_bytes": path.stat().st_size,
                "bpw": _r(gguf_bpw(path), 3),
                "kld": _r(sum(p["kld_mean"] * p["tokens"] for p in parts) / tokens, 6),
                "top1": _r(sum(p["top1"] * p["tokens"] for p in parts) / tokens),
                "kld_by_eval_part": [_r(p["kld_mean"], 6) for p in parts],
                "top1_by_eval_part": [_r(p["top1"]) for p in parts]}
            print(json.dumps({label: out["variants"][label]}), flush=True)
            path.unlink()
    v = out["variants"]
    for label, row in v.items():
        plain = v.get(f"{row['type']} plain")
        if plain is not None and row["imatrix"]:
            diffs = [a - b for a, b in zip(row["kld_by_eval_part"], plain["kld_by_eval_part"], strict=True)]
            row["minus_plain_by_part"] = [_r(d, 6) for d in diffs]
            row["better_than_plain_in_parts"] = sum(d < 0 for d in diffs)
            row["kld_ratio_to_plain"] = _r(row["kld"] / plain["kld"])
    out["goals"] = {  # every calibrated importance matrix, for each type that also runs without one
        f"imatrix_{t.lower()}_kld_no_worse": all(r["kld"] <= v[f"{t} plain"]["kld"] for r in v.values()
                                                 if r["type"] == t and r["imatrix"] not in (None, UNIFORM))
        for t in dict.fromkeys(r["type"] for r in v.values() if f"{r['type']} plain" in v)}
    out["outliers"] = {"big": activation_outliers(imatrices["train sample A"])}
    if home_store.exists("demo-f16"):  # the same statistic for the small demo model, on its own training text
        small = work / "small-demo.imatrix.gguf"
        facts, stories, _ = world_texts(home_store)
        gguf.compute_imatrix(home_store.get("demo-f16").file(".gguf"), facts + stories, small, max_chunks=64)
        out["outliers"]["small_demo"] = activation_outliers(small)
    info = art.manifest.info
    train_load = cache / f"{art.name}.load_avg.json"
    out["settings"] = {
        "model": {k: info.get(k) for k in ("architecture", "size", "n_params", "hidden_size", "layers", "vocab_size",
                                           "steps", "train_loss", "val_loss", "train_seconds", "train_tok_s",
                                           "threads")},
        "model_note": "build-demo's `large` shape (hidden 512, FFN 1536, 8 layers, 8 heads / 4 KV heads) trained "
                      f"from scratch for {info.get('steps')} steps of 4 x 512 tokens (peak lr 2e-3) on TinyStories "
                      "train.txt plus the micro world's texts (LLMLAB_DATA); val_loss is on the world's eval stories",
        "training_load_avg": json.loads(train_load.read_text()) if train_load.is_file() else None,
        "cache": str(cache), "f16_ppl_on_eval": _r(f16_ppl),
        "eval": "TinyStories valid.txt, whole stories from the start; four interleaved parts (story i to part "
                "i % 4), each scored in windows of 512 tokens without overlap",
        "eval_tokens": tokens,
        "calibration": "two disjoint random samples of 400 TinyStories train.txt stories (the model's training "
                       "text, disjoint from the eval text), at most 64 chunks of 512 tokens each",
        "imatrix": imatrix_info, "reference": "f16 GGUF of the same model", "threads": settings.threads(),
        "seconds": round(time.perf_counter() - t0, 1)}
    return out


def activation_outliers(imatrix_file: Path) -> dict[str, float]:
    """How uneven the importance (mean squared input) of a weight's columns is: per weight matrix the
    largest column's share over the mean one, median and maximum over the model's weights."""
    from llmlab.quantize import gguf

    ratios = [float(v.max() / v.mean()) for v in gguf.read_imatrix(imatrix_file).values()]
    return {"max_over_mean_median": _r(statistics.median(ratios), 2), "max_over_mean_max": _r(max(ratios), 2)}


def imatrix_goal(out: dict[str, Any]) -> dict[str, Any]:
    """The goal "imatrix Q4_K_M KL divergence no worse than plain Q4_K_M", judged on the bigger model
    (the small demo model's row is kept beside it: too small to show the difference)."""
    goal: dict[str, Any] = {}
    big = out.get("imatrix_bigger_model")
    if big:
        v = big["variants"]
        goal["met"] = big["goals"]["imatrix_q4_k_m_kld_no_worse"]
        goal["judged_on"] = (f"bigger demo model ({big['settings']['model']['n_params'] / 1e6:.1f}M parameters, "
                             f"{big['settings']['eval_tokens']} TinyStories eval tokens)")
        goal["bigger_model"] = {k: r["kld"] for k, r in v.items() if r["type"] == "Q4_K_M"}
    small = out.get("gguf", {}).get("rows")
    if small:
        by = {r["type"]: r["kld"] for r in small}
        goal["small_demo"] = {"Q4_K_M plain": by.get("Q4_K_M"), "Q4_K_M imatrix": by.get("Q4_K_M imatrix"),
                              "met": out["gguf"]["goals"]["imatrix_q4_k_m_kld_no_worse"]}
    return goal


def _print_metrics(event: dict[str, Any]) -> None:
    if event["type"] == "metric":
        print(json.dumps({k: v for k, v in event.items() if k != "type"}), flush=True)


# ----- gptq, awq, rtn -----
def gptq_rows(store: Any) -> dict[str, Any]:
    from llmlab.quantize.step import QuantizeConfig, quantize

    t0 = time.perf_counter()
    summary = quantize(QuantizeConfig(model="demo", types=["gptq", "awq", "rtn"], bits=4, group_size=32,
                                      calibration="world", qa="none", redo=True), store=store, overwrite=True)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"total_seconds": round(seconds, 1)}
    for row in summary["table"]:
        method = row["kind"]
        if method in ("gptq", "awq", "rtn"):
            out[method] = {"bits": row.get("bits", 4), "group_size": row.get("group_size", 32),
                           "size_bytes": row["size_bytes"], "ppl": _r(row["ppl"]), "kld": _r(row["kld_mean"], 6),
                           "top1": _r(row["top1"]), "seconds": row.get("seconds"), "name": row["name"],
                           "reference": row["reference"], "tok_s": _r(row["gen_tok_s"], 1)}
        elif row.get("kind") in ("base", "full", "merged", "distilled"):
            out["source_ppl"] = _r(row["ppl"])
    if {"gptq", "rtn", "source_ppl"} <= set(out):
        gap = {m: abs(out[m]["ppl"] - out["source_ppl"]) for m in ("gptq", "rtn")}
        out["goals"] = {"gptq_ppl_closer_to_source_than_rtn": gap["gptq"] < gap["rtn"]}
    return out


# ----- llmlab runtime vs plain llama_cpp -----
def _tok_s(stamps: list[float]) -> float:
    """Generation tokens/s from the time each token arrived (the first one carries the prompt)."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def runtime_ratio(gguf_file: Path, rounds: int = 15, n_tokens: int = 200) -> dict[str, Any]:
    import llama_cpp

    from llmlab import settings
    from llmlab.runtime import SamplingParams, load
    from llmlab.scoring import SPEED_TEXT

    threads = settings.threads()
    ours = load(gguf_file)
    ids = ours.tokenize(SPEED_TEXT, add_special=True)
    plain = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=ours.n_ctx, n_batch=min(512, ours.n_ctx),
                            n_ubatch=min(512, ours.n_ctx), n_threads=threads, n_threads_batch=threads,
                            verbose=False)

    def run_ours() -> tuple[float, list[int]]:
        stamps, toks = [time.perf_counter()], []
        for tok in ours.generate_ids(ids, SamplingParams.greedy(n_tokens), ignore_eos=True):
            stamps.append(time.perf_counter())
            toks.append(tok)
        return _tok_s(stamps[1:]), toks

    def run_plain() -> tuple[float, list[int]]:
        plain.reset()
        stamps, toks = [], []
        for tok in plain.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            stamps.append(time.perf_counter())
            toks.append(tok)
            if len(toks) == n_tokens:
                break
        return _tok_s(stamps), toks

    run_ours(), run_plain()  # warm-up
    a, b = [], []
    same = True
    for r in range(rounds):  # A B, B A, A B...: a drifting machine load hits both sides alike
        first, second = (run_ours, run_plain) if r % 2 == 0 else (run_plain, run_ours)
        (t1, x1), (t2, x2) = first(), second()
        (ta, tb) = (t1, t2) if r % 2 == 0 else (t2, t1)
        a.append(ta)
        b.append(tb)
        same = same and x1 == x2
    ours.close()
    plain.close()
    # best of the rounds on each side: the runs least disturbed by the other programs on the machine
    ratio = max(a) / max(b)
    return {"llmlab_vs_llama_cpp_tok_s_ratio": round(ratio, 3),
            "paired_median_ratio": round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3),
            "ratio_of_medians": round(statistics.median(a) / statistics.median(b), 3),
            "llmlab_tok_s": [round(x, 1) for x in a], "llama_cpp_tok_s": [round(x, 1) for x in b],
            "rounds": rounds, "tokens": n_tokens, "prompt_tokens": len(ids), "same_tokens": same,
            "model": gguf_file.name, "threads": threads, "goal_met": ratio >= 0.95,
            "method": "best tokens/s of each side over the rounds; each round runs both, order alternating"}


# ----- memory bandwidth -----
def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a numpy sum over a ``gib`` GiB buffer, split over ``threads`` threads; best of ``repeats``."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    buf = np.ones(int(gib * 2**30) // 8, dtype=np.float64)
    parts = np.array_split(buf, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            total = sum(pool.map(np.sum, parts))
            dt = time.perf_counter() - t0
            assert total == buf.size
            best = max(best, buf.nbytes / dt)
    return best


def bandwidth_model(store_dir: Path) -> Path:
    """A random-weights Llama (hidden 1024, FFN 2816, 14 layers, the demo tokenizer) as Q4_K_M GGUF."""
    out = BANDWIDTH_CACHE / "bw-q4_k_m.gguf"
    if out.is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmlab.quantize import gguf

    BANDWIDTH_CACHE.mkdir(parents=True, exist_ok=True)
    hf = BANDWIDTH_CACHE / "hf"
    tok = AutoTokenizer.from_pretrained(store_dir / "demo")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=14,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    f16 = gguf.convert(hf, BANDWIDTH_CACHE / "bw-f16.gguf", "f16")
    gguf.quantize(f16, out, "Q4_K_M")
    shutil.rmtree(hf)
    f16.unlink()
    return out


def bandwidth(store_dir: Path) -> dict[str, Any]:
    from llmlab import settings
    from llmlab.runtime import load
    from llmlab.scoring import speed

    path = bandwidth_model(store_dir)
    threads = settings.threads()
    bw = read_bandwidth(threads)
    with load(path) as m:
        s = speed(m, prompt_tokens=32, gen_tokens=32, repeats=3)
    size = path.stat().st_size
    fraction = s["gen_tok_s"] * size / bw
    return {"bandwidth_fraction": round(fraction, 3), "gen_tok_s": round(s["gen_tok_s"], 2),
            "file_bytes": size, "read_bandwidth_bytes_s": round(bw), "read_bandwidth_gb_s": round(bw / 1e9, 2),
            "threads": threads, "model": "random Llama, hidden 1024, FFN 2816, 14 layers, vocab 2048, Q4_K_M",
            "goal_met": fraction >= 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/bench-models", help="benchmark store (the demo model is kept there)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantize.json"))
    parser.add_argument("--big-cache", default=str(BIG_CACHE), help="where imatrix_big keeps its trained model")
    parser.add_argument("--big-steps", type=int, default=BIG_STEPS, help="training steps of imatrix_big's model")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}")
    home = Path(args.home)
    os.environ["LLMLAB_HOME"] = str(home)
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")

    from llmlab import settings
    from llmlab.store import library_versions

    out_path = Path(args.out)
    out: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    t0, run_load = time.perf_counter(), load_avg()
    store = demo_store(home)
    demo = store.get("demo")
    # per part, merged with earlier runs' parts: when it ran, how long, the machine's load around it
    runs: dict[str, Any] = out.get("settings", {}).get("parts", {})

    def save() -> None:  # after every part, so an interrupted run keeps what it measured
        out["settings"] = {
            "model": {"name": "demo", **{k: demo.manifest.info.get(k) for k in
                                         ("architecture", "size", "n_params", "hidden_size", "layers", "steps")}},
            "threads": settings.threads(), "threads_note": "threads of the last run; each part records its own",
            "parts": runs, "last_run_parts": parts,
            "last_run_seconds": round(time.perf_counter() - t0, 1),
            "load_avg_start": run_load, "load_avg_end": load_avg(),
            "note": "2 shared cores: load averages (1, 5, 15 min) are of the whole machine, at the start and "
                    "end of the last run and of each part (parts may come from separate runs)",
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "versions": library_versions(),
        }
        out_path.write_text(json.dumps(out, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="llmlab-bench-q-") as tmp:
        work = Path(tmp)
        for part in parts:
            t, start_load = time.perf_counter(), load_avg()
            print(f"== {part}", flush=True)
            if part == "gguf":
                out["gguf"] = gguf_rows(store, work)
            elif part == "imatrix":
                if not store.exists("demo-f16"):
                    gguf_rows(store, work)
                out["imatrix_study"] = imatrix_study(store, work)
            elif part == "imatrix_big":
                out["imatrix_bigger_model"] = imatrix_big(Path(args.big_cache), args.big_steps, store)
            elif part == "gptq":
                out["gptq_awq_rtn"] = gptq_rows(store)
                for m in ("gptq", "awq", "rtn"):
                    out[m] = out["gptq_awq_rtn"].get(m, out["gptq_awq_rtn"].get("status"))
            elif part == "ratio":
                if not store.exists("demo-q4_k_m"):
                    gguf_rows(store, work)
                out["ratio"] = runtime_ratio(store.get("demo-q4_k_m").file(".gguf"))
                out["llmlab_vs_llama_cpp_tok_s_ratio"] = out["ratio"]["llmlab_vs_llama_cpp_tok_s_ratio"]
            elif part == "bandwidth":
                result = bandwidth(home)  # kept per thread count; the headline is the best one
                out.setdefault("bandwidth_by_threads", {})[str(result["threads"])] = result
                out["bandwidth"] = max(out["bandwidth_by_threads"].values(), key=lambda r: r["bandwidth_fraction"])
                out["bandwidth_fraction"] = out["bandwidth"]["bandwidth_fraction"]
            out["imatrix_goal"] = imatrix_goal(out)
            runs[part] = {"seconds": round(time.perf_counter() - t, 1), "threads": settings.threads(),
                          "load_avg_start": start_load,
                          "load_avg_end": load_avg(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(json.dumps({part: runs[part]}), flush=True)
            save()
    print(json.dumps({k: v for k, v in out.items() if k in ("llmlab_vs_llama_cpp_tok_s_ratio", "bandwidth_fraction")}
                     | {"goals": out.get("gguf", {}).get("goals"), "imatrix_goal": out.get("imatrix_goal")}, indent=2))


if __name__ == "__main__":
    main()
