"""Time the quickstart recipe step by step on this machine and record the demo model's scores.

Usage: python benchmarks/quickstart.py [--home DIR]
Writes benchmarks/results/quickstart.json: ``steps`` ({name, seconds} per step, named by station:
build, score, tune, merge, quantize, gguf-adapter, index, agent, evaluate, export, serve), the final
``leaderboard`` (the evaluate step's table), what the served winner answered over HTTP, the demo model's
``ppl`` and ``accuracy`` (held-out world questions), ``variants`` (every artifact the quickstart
made, with its size and scores: the tuned adapter's accuracy, the quantized files' KL divergence),
and ``settings`` (machine, threads, versions) so the figures can be reproduced; ``install`` (a fresh
machine's ``make install``, timed by hand as its ``what`` says) is kept. It runs in a fresh
temporary store unless --home is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATION = {"build-demo": "build"}  # step kinds are named by their station, the rest already are


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="store folder (default: a fresh temporary one)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quickstart.json"))
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="llmlab-bench-"))
    os.environ["LLMLAB_HOME"] = str(home)
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")

    from llmlab import recipes, settings
    from llmlab.store import Store, library_versions

    recipe = recipes.load(ROOT / "recipes" / "quickstart.yaml")
    store = Store(home)
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    try:
        results = recipes.run(recipe, store=store, force=True, track=False)
    finally:
        from llmlab.serve import process

        process.stop_all(store)  # the serve step leaves the winner running
    total = time.perf_counter() - t0
    by_kind = {r.kind: r for r in results}
    board_columns = ("name", "kind", "size_mb", "ppl", "kld_mean", "top1", "heldout.accuracy", "heldout.f1")
    demo = store.get("demo")
    metrics = demo.metrics
    out = {
        "steps": [{"name": STATION.get(r.kind, r.kind), "step": r.kind, "seconds": r.seconds} for r in results],
        "total_seconds": round(total, 1),
        "leaderboard": [{c: row.get(c) for c in board_columns} for row in by_kind["evaluate"].metrics["table"]],
        "served": {k: by_kind["serve"].metrics.get(k)
                   for k in ("question", "answer", "expected", "correct", "seconds")},
        "ppl": metrics.get("ppl"),
        "accuracy": metrics.get("accuracy"),
        "gen_tok_s": metrics.get("gen_tok_s"),
        "size_bytes": demo.size_bytes,
        "n_params": demo.manifest.info.get("n_params"),
        "variants": [
            {"name": a.name, "kind": a.kind, "size_bytes": a.size_bytes,
             **{k: a.metrics.get(k) for k in ("ppl", "kld_mean", "top1", "accuracy", "gen_tok_s")}}
            for a in sorted(store.list(), key=lambda a: a.manifest.created)
        ],
        "settings": {
            "recipe": "recipes/quickstart.yaml",
            "model": {k: demo.manifest.info.get(k) for k in ("architecture", "n_params", "size", "steps")},
            "threads": settings.threads(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_avg_start": load_start,
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "versions": library_versions(),
        },
    }
    kept = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    if "install" in kept:  # the fresh-machine install time is measured by hand (see its "what")
        out["install"] = kept["install"]
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("steps", "total_seconds", "served", "leaderboard")}, indent=2))


if __name__ == "__main__":
    main()
