"""Time every merge method on the demo specialists and compare `llmlab merge` with mergekit's own CLI.

Usage: python benchmarks/merge.py --home DIR [--rounds 3] [--qa-limit N] [--only methods|ratio]
``DIR`` is a store holding ``demo`` and the two specialists of recipes/merge.yaml (``demo-people``,
``demo-places``; run the recipe first). Writes benchmarks/results/merge.json:

- ``methods``: per method (mergekit's and peft's), the merge of the two specialists: ``seconds``,
  ``peak_rss_mb`` (each merge runs in its own subprocess) and the demo scores of the merge
  (world-text perplexity, held-out accuracy per relation group, retention of each specialist
  on its own skill); ``parents`` holds the parents' scores, measured once on the same questions;
- ``plain``: the same for the specialists tuned without an anchor (``demo-people-plain``,
  ``demo-places-plain``), merged at full weight and with the best setting found for them;
- ``llmlab_vs_mergekit_ratio``: wall time of ``llmlab merge`` / ``mergekit-yaml`` on the same linear
  config of two random-weights Llama models of >= 100M parameters (cached under /tmp), both as
  subprocesses with one thread, alternated for ``--rounds`` rounds, scoring off, each run into an empty
  output (the previous run's output is removed before the clock starts, for both); median over median.
  ``ratio_details.cpu_ratio`` is the same ratio of user+system CPU seconds (less sensitive to the load of a
  shared machine than wall time, which is the goal's measure);
- ``settings``: model, threads, versions and the machine's load average at start and end.

``--only ratio`` (or ``--only methods``) measures one part and updates that part of an existing
results file, keeping the other; ``ratio_details.load_avg`` is the load around the ratio runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BIG = Path("/tmp/llmlab-merge-bench-models")
SPECIALISTS = ["demo-people", "demo-places"]  # tuned with an anchor (recipes/merge.yaml)
PLAIN = ["demo-people-plain", "demo-places-plain"]  # the same without it
# method -> options for the two specialists (a base is found from the adapters when needed)
CASES: dict[str, dict] = {
    "linear": {"weights": [0.5, 0.5]},
    "task_arithmetic": {"weights": [1.0, 1.0]},  # the recipe's best merge of the anchored specialists
    "ties": {"weights": [1.0, 1.0], "densities": [0.8, 0.8]},
    "dare_ties": {"densities": [0.7, 0.7]},
    "dare_linear": {"densities": [0.7, 0.7]},
    "della": {"densities": [0.7, 0.7]},
    "breadcrumbs_ties": {"weights": [1.0, 1.0], "densities": [0.8, 0.8]},
    "sce": {},
    "model_stock": {},
    "karcher": {},
    "multislerp": {"weights": [0.5, 0.5]},
    "nuslerp": {"weights": [0.5, 0.5]},
    "peft_cat": {"weights": [1.0, 1.0], "output": "model"},
    "peft_svd": {"weights": [1.0, 1.0]},
}
# The plain specialists merged the recipe's two ways: at full weight, and the best setting found for them.
PLAIN_CASES: dict[str, dict] = {
    "task_arithmetic": {"weights": [1.0, 1.0]},
    "breadcrumbs_ties": {"weights": [1.0, 0.7], "densities": [0.8, 0.8]},
}
MERGE_ONE = """
import json, sys
from llmlab.merge.step import MergeConfig, merge
from llmlab.store import Store
store = Store(sys.argv[1])
art = merge(MergeConfig.model_validate(json.loads(sys.argv[2])), store=store, overwrite=True)
print(json.dumps(art.metrics))
"""


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def method_runs(home: Path, qa_limit: int | None, specialists: list[str], cases: dict[str, dict],
                others: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
    """Each of ``cases`` run on ``specialists`` and scored; the parents' scores (the specialists', and
    those of ``others`` in the store, for comparison) on the same questions."""
    from llmlab.merge.scores import score_one, skill_of
    from llmlab.store import Store
    from llmlab.world import RELATION_GROUP, find_world

    store = Store(home)
    world = find_world(store, store.get("demo"))
    qa = {g: world.split(f"heldout:{g}")[:qa_limit] for g in sorted(set(RELATION_GROUP.values()))}
    parents = {n: score_one(store.get(n), store, [world.eval_text], qa, None)
               for n in [*others, *specialists] if n in specialists or store.exists(n)}
    out = {}
    for method, extra in cases.items():
        name = f"bench-{method}"
        cfg = {"name": name, "method": method, "models": specialists, "evaluate": False, **extra}
        r = subprocess.run([sys.executable, "-c", MERGE_ONE, str(home), json.dumps(cfg)], capture_output=True,
                           text=True, env={**os.environ, "LLMLAB_TRACKING_URI": "off"})
        if r.returncode:
            out[method] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
            print(method, "FAILED", out[method]["error"], flush=True)
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        scores = score_one(store.get(name), store, [world.eval_text], qa, None)
        retention = {}
        for s in specialists:
            for g in skill_of(store.get(s)):
                theirs = parents[s][f"accuracy_{g}"]
                retention[f"{s}:{g}"] = round(scores[f"accuracy_{g}"] / theirs, 3) if theirs else None
        out[method] = {"seconds": m["merge_seconds"], "peak_rss_mb": m["merge_peak_rss_mb"], "scores": scores,
                       "retention": retention, "min_retention": min(v for v in retention.values() if v is not None)}
        print(method, out[method]["seconds"], "s", "retention", retention, flush=True)
        store.rm(name, force=True)
    return out, parents, {g: len(r) for g, r in qa.items()}


def big_models(params_target: int = 100_000_000) -> tuple[list[Path], int]:
    """Two random-weights Llama folders of >= 100M parameters (cached)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
                      num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)
    paths = []
    for seed in (1, 2):
        p = BIG / f"random-{seed}"
        if not (p / "model.safetensors").is_file():
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg)
            tmp = p.with_name(p.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            tmp.rename(p)
        paths.append(p)
    from safetensors import safe_open

    with safe_open(paths[0] / "model.safetensors", "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert n >= params_target, n
    return paths, n


def ratio(rounds: int) -> dict:
    import yaml

    paths, n = big_models()
    work = Path(tempfile.mkdtemp(prefix="llmlab-merge-ratio-"))
    cfg = {"merge_method": "linear", "dtype": "float32",
           "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in paths]}
    (work / "cfg.yml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "LLMLAB_THREADS": "1", "OMP_NUM_THREADS": "1", "LLMLAB_TRACKING_URI": "off"}
    commands = {
        "llmlab": [str(BIN / "llmlab"), "--home", str(work / "store"), "merge", "--name", "big",
                   "--method", "linear", "--models", json.dumps([str(p) for p in paths]), "--weights", "[0.5, 0.5]",
                   "--evaluate", "false", "--force", "--no-track"],
        "mergekit": [str(BIN / "mergekit-yaml"), str(work / "cfg.yml"), str(work / "mk-out"), "--quiet",
                     "--num-threads", "1"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    for r in range(rounds):
        for k in (commands if r % 2 == 0 else reversed(list(commands))):
            # each run starts with no output, as a first run would (removing a 448 MB model is not the merge)
            shutil.rmtree(work / "mk-out", ignore_errors=True)
            shutil.rmtree(work / "store" / "big", ignore_errors=True)
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            res = subprocess.run(commands[k], capture_output=True, text=True, env=env)
            times[k].append(round(time.perf_counter() - t0, 2))
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[k].append(round(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime, 2))
            if res.returncode:
                raise SystemExit(f"{k} failed: {res.stderr[-2000:]}")
            print(k, times[k][-1], "s", cpu[k][-1], "s cpu", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"ratio": round(med["llmlab"] / med["mergekit"], 3), "seconds": times, "median": med,
            "cpu_seconds": cpu, "median_cpu": med_cpu,
            "cpu_ratio": round(med_cpu["llmlab"] / med_cpu["mergekit"], 3),
            "n_params": n, "config": cfg | {"models": ["random-1", "random-2"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="store with demo, demo-people and demo-places")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--qa-limit", type=int, default=None, help="held-out questions per relation group "
                        "(default: all of them, as the recipe's merge steps score)")
    parser.add_argument("--specialists", default=",".join(SPECIALISTS), help="the two adapters to merge")
    parser.add_argument("--only", choices=["methods", "ratio"], help="measure one part; the other is kept from "
                        "the existing --out file")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "merge.json"))
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_THREADS", "1")
    os.environ["LLMLAB_TRACKING_URI"] = "off"
    from llmlab import settings
    from llmlab.store import Store, library_versions

    start = load_avg()
    t0 = time.perf_counter()
    out: dict = json.loads(Path(args.out).read_text()) if args.only and Path(args.out).is_file() else {}
    if args.only != "ratio":
        out["methods"], out["parents"], qa_n = method_runs(Path(args.home), args.qa_limit,
                                                           args.specialists.split(","), CASES, ("demo", "demo-multi"))
        if all(Store(args.home).exists(n) for n in PLAIN):  # what the anchor buys: the unanchored pair
            plain, plain_parents, _ = method_runs(Path(args.home), args.qa_limit, PLAIN, PLAIN_CASES)
            out["plain"] = {"specialists": PLAIN, "methods": plain, "parents": plain_parents}
        ok = {k: v for k, v in out["methods"].items() if "min_retention" in v}
        best = max(ok, key=lambda k: ok[k]["min_retention"]) if ok else None
        out["best_merge"] = {"method": best, "min_retention": ok[best]["min_retention"] if best else None,
                             "goal": 0.7}
    if args.only != "methods":
        r0 = load_avg()
        r = ratio(args.rounds)
        out["llmlab_vs_mergekit_ratio"] = r.pop("ratio")
        out["ratio_details"] = r | {"goal": 1.1, "rounds": args.rounds, "load_avg": {"start": r0, "end": load_avg()}}
    n_big = out.get("ratio_details", {}).get("n_params")
    kept = out.get("settings", {}) if args.only == "ratio" else {}
    demo = Store(args.home).get("demo")
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    out["settings"] = {
        "model": {"demo": {k: demo.manifest.info.get(k) for k in ("architecture", "n_params", "size")},
                  "ratio": {"architecture": "LlamaForCausalLM (random weights)", "n_params": n_big}},
        "specialists": kept.get("specialists", args.specialists.split(",")),
        "qa_limit_per_group": kept.get("qa_limit_per_group", args.qa_limit),
        "qa_questions_per_group": kept.get("qa_questions_per_group") if args.only == "ratio" else qa_n,
        "rounds": out.get("ratio_details", {}).get("rounds", args.rounds),
        "threads": settings.threads(), "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "versions": library_versions(),
        "load_avg": {"start": start, "end": load_avg()}, "only": args.only,
    }
    if kept:  # the methods part was measured in an earlier run, under its own load
        out["settings"]["load_avg_methods"] = kept.get("load_avg_methods", kept.get("load_avg"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("llmlab_vs_mergekit_ratio", "best_merge") if k in out}))


if __name__ == "__main__":
    main()
