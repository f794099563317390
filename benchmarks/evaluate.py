"""Benchmark the Evaluate station: a cold leaderboard, the same call from the cache, one added variant, and
the LLM judge's agreement with exact match on the demo world.

Run: `LLMLAB_THREADS=1 python benchmarks/evaluate.py --source /tmp/demo-home` where the source store
holds the quickstart's variants (demo, demo-lora, demo-f16, demo-q8_0, demo-q4_k_m; make the GGUFs
with `llmlab quantize demo --types '[q8_0, q4_k_m]'`). They are copied into a fresh temporary store
so the quality cache starts empty. Writes ``benchmarks/results/evaluate.json``:

- ``first_run_seconds``: the default quality suite (world perplexity, KL/top-1 against each
  variant's parent, 100 held-out questions) over the five variants, nothing cached;
- ``second_run_seconds``: the same call again (goal: under 5% of the first; ``second_over_first``);
- ``add_one_seconds``: after a new Q6_K variant joins, the whole store again (goal: only it is
  scored; ``add_one_scored`` lists what was scored fresh, ``add_one_over_first_per_variant``
  compares with the first run's mean time per variant);
- ``judge_kappa``: Cohen's kappa between the judge's pass (score >= 4) and exact match, on the
  tuned model's answers to held-out questions, with the judge named and its missing scores counted.
  The demo model never writes "score: N" by itself (``judge_free_form``: every score missing), so
  the headline judge is the same model constrained to the likeliest allowed score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["demo", "demo-lora", "demo-f16", "demo-q8_0", "demo-q4_k_m"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=os.environ.get("LLMLAB_HOME", "models"),
                        help="store holding the quickstart's variants")
    parser.add_argument("--judge", default="demo-lora", help="artifact used as the judge")
    parser.add_argument("--judge-questions", type=int, default=40, help="held-out questions the judge grades")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate.json"))
    args = parser.parse_args()
    load_start = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="llmlab-bench-eval-")) / "models"
    home.mkdir(parents=True)
    for name in VARIANTS:
        shutil.copytree(Path(args.source) / name, home / name)
    os.environ["LLMLAB_HOME"] = str(home)
    os.environ["LLMLAB_TRACKING_URI"] = "off"

    from llmlab import settings
    from llmlab.evaluate import EvaluateConfig, evaluate
    from llmlab.evaluate.judge import ModelJudge, judge_set
    from llmlab.evaluate.suites import messages_for, resolve_task
    from llmlab.quantize import gguf
    from llmlab.runtime import load
    from llmlab.store import Parent, Store, library_versions

    store = Store(home)
    demo = store.get("demo")
    config = EvaluateConfig(track=False)  # the default suite; models: every candidate in the store

    def timed() -> tuple[float, list[dict]]:
        t0 = time.perf_counter()
        board = evaluate(config, store=store)
        return time.perf_counter() - t0, board.rows

    first, rows = timed()
    second, rows2 = timed()
    f16 = store.get("demo-f16")
    with store.write("demo-q6_k", "gguf") as w:  # one new variant, quantized from demo-f16 as Quantize does
        gguf.quantize(f16.file(".gguf"), w.path / "demo-q6_k.gguf", "q6_k")
        w.parents = [Parent(name="demo", content_hash=demo.content_hash, role="source"),
                     Parent(name="demo-f16", content_hash=f16.content_hash, role="reference")]
    add_one, rows3 = timed()
    fresh3 = [r["name"] for r in rows3 if r["quality_from"] == "fresh"]

    t0 = time.perf_counter()
    suite = config.suite_config()
    answerer = store.get("demo-lora")
    records = resolve_task(suite.tasks[0], store=store, artifact=answerer)[: args.judge_questions]
    with load(answerer, store=store) as m:
        answers = [{"question": r["question"], "gold": r["answers"][0],
                    "answer": m.chat(messages_for(suite, r), suite.sampling())} for r in records]
    with load(args.judge, store=store) as judge_model:
        free = judge_set(ModelJudge(judge_model), answers, retries=1)  # the judge writes "score: N" itself
        report = judge_set(ModelJudge(judge_model, constrained=True), answers, retries=0)
    judge_seconds = time.perf_counter() - t0

    out = {
        "first_run_seconds": round(first, 2),
        "second_run_seconds": round(second, 3),
        "second_over_first": round(second / first, 4),
        "add_one_seconds": round(add_one, 2),
        "add_one_scored": fresh3,
        "add_one_over_first_per_variant": round(add_one / (first / len(rows)), 3),
        "first_run_fresh": [r["name"] for r in rows if r["quality_from"] == "fresh"],
        "second_run_cached": [r["name"] for r in rows2 if r["quality_from"] == "cached"],
        "errors": {r["name"]: r["error"] for r in rows3 if r["error"]},
        "leaderboard": [{k: r.get(k) for k in ("name", "kind", "size_mb", "ppl", "kld_mean", "top1",
                                               "heldout.accuracy", "heldout.f1", "kld_reference")} for r in rows3],
        "judge": report["judge"],
        "judge_kappa": report["kappa_vs_exact_match"],
        "judge_agreement": report["agreement_vs_exact_match"],
        "judge_n": report["n"],
        "judge_scored": report["n_scored"],
        "judge_missing": report["n_missing"],
        "judge_free_form": {"judge": free["judge"], "kappa": free["kappa_vs_exact_match"],
                            "scored": free["n_scored"], "missing": free["n_missing"]},
        "judge_answers_exact_match": sum(v["exact_match"] for v in report["verdicts"]) / max(1, report["n"]),
        "judge_seconds": round(judge_seconds, 1),
        "judge_examples": [{k: v[k] for k in ("question", "answer", "gold", "reply", "score")}
                           for v in report["verdicts"][:3]],
        "settings": {
            "suite": suite.quality_dict(),
            "suite_hash": suite.suite_hash(),
            "variants": VARIANTS + ["demo-q6_k (added)"],
            "model": {k: demo.manifest.info.get(k) for k in ("architecture", "n_params", "size", "steps")},
            "threads": settings.threads(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "versions": library_versions(),
            "load_avg_start": [round(x, 2) for x in load_start],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("settings", "leaderboard", "judge_examples")},
                     indent=2))
    shutil.rmtree(home.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
