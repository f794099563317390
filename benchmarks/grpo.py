"""What GRPO adds to an SFT adapter: held-out accuracy of the demo world before and after.

Usage: nice -n 10 python benchmarks/grpo.py [--home /tmp/bench-grpo] [--steps 700] [--batch-size 8]
       [--group-size 16] [--learning-rate 3e-4]
Writes benchmarks/results/grpo.json:

- ``world.sft``: the quickstart's SFT LoRA (``demo-lora``, every tune default) on the demo world's held-out
  phrasings (questions never trained on), greedy, judged as the scoring core judges every model;
- ``world.grpo``: ``method: grpo`` started from that adapter (its own weights continued) on the world's tune
  questions with the exact_match reward, scored on the same held-out questions in the same run; ``steps`` and
  ``seconds`` (training time) with it;
- ``goal``: at least +5 points within 15 minutes of training on 2 cores, and whether it was met;
- ``run``: the GRPO settings and its measures (reward and group accuracy of the first and last tenth of the
  steps, KL at the end);
- ``settings``: threads, cores, the machine's load average at start and end, library versions;
- ``tried`` (kept from the results file when present): other settings run with this script, and what
  they gave, so a result that misses the goal says what was tried;
- ``trl_vs_own`` (kept, written by benchmarks/grpo_trl.py): TRL's GRPOTrainer against this loop at the same
  settings, seconds per step and held-out accuracy.

The demo model (``build_demo``, ~4.5 min at 2 threads) and its SFT adapter (~1 min) are made once in --home
and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def sft_store(home: str) -> Any:
    """The store at ``home`` with the demo model and its SFT LoRA (``demo-lora``), made once."""
    from llmlab.build import BuildDemoConfig, build_demo
    from llmlab.store import Store
    from llmlab.tune import TuneConfig, tune

    store = Store(home)
    if not store.exists("demo"):
        build_demo(BuildDemoConfig(name="demo", size="small"), store=store)
    if not store.exists("demo-lora"):
        tune(TuneConfig(name="demo-lora", model="demo"), store=store)  # the quickstart's SFT step
    return store


def _earlier(kept: dict[str, Any]) -> dict[str, Any]:
    """A replaced run, as a ``tried`` entry: its settings, results, machine and load."""
    run, world = kept.get("run", {}), kept["world"]
    entry = {k: run.get(k) for k in ("batch_size", "group_size", "learning_rate", "beta")}
    entry.update(steps=world["grpo"]["steps"], sft_accuracy=world["sft"]["accuracy"],
                 grpo_accuracy=world["grpo"]["accuracy"], n=world["grpo"]["n"], seconds=world["grpo"]["seconds"],
                 reward_start=run.get("reward_start"), reward_end=run.get("reward_end"), kl_end=run.get("kl_end"),
                 note=f"an earlier run of this script (load average {kept['settings'].get('load_avg')}, "
                      f"cores {kept['settings'].get('cores')}); its own demo and SFT adapter")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/bench-grpo", help="store holding (or to hold) demo and demo-lora")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=16, help="answers sampled per prompt")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo.json"))
    args = parser.parse_args()
    os.environ["LLMLAB_HOME"] = args.home
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")
    load_start = [round(x, 2) for x in os.getloadavg()]

    import torch
    from serve import cpu_model  # benchmarks/serve.py, beside this script

    from llmlab import settings
    from llmlab.store import library_versions
    from llmlab.tune import TuneConfig, tune

    torch.set_num_threads(settings.threads())
    store = sft_store(args.home)
    config = TuneConfig(name="demo-grpo", model="demo-lora", method="grpo", steps=args.steps,
                        batch_size=args.batch_size, group_size=args.group_size, learning_rate=args.learning_rate,
                        beta=args.beta, max_new_tokens=args.max_new_tokens, rewards="exact_match",
                        checkpoint_every=10, show_samples=2)
    started = time.perf_counter()
    art = tune(config, store=store, overwrite=True)
    wall = time.perf_counter() - started
    m, info = art.metrics, art.manifest.info
    seconds = info["train_seconds"]
    gain = 100 * (m["accuracy"] - m["accuracy_before"])
    out = {
        "world": {
            "sft": {"accuracy": round(m["accuracy_before"], 4), "n": m["accuracy_n"]},
            "grpo": {"accuracy": round(m["accuracy"], 4), "n": m["accuracy_n"], "steps": info["steps"],
                     "seconds": seconds},
        },
        "gain_points": round(gain, 1),
        "goal": {"points": 5, "minutes": 15, "met": gain >= 5 and seconds <= 15 * 60},
        "run": {"model": "demo-lora (SFT LoRA on demo)", "data": "world:tune", "records": info["prompts"],
                "rewards": info["rewards"], "batch_size": config.batch_size, "group_size": config.group_size,
                "learning_rate": config.lr(), "beta": config.beta, "temperature": config.temperature,
                "max_new_tokens": config.max_new_tokens, "reward_start": m.get("reward_start"),
                "reward_end": m.get("reward_end"), "group_accuracy_start": m.get("group_accuracy_start"),
                "group_accuracy_end": m.get("group_accuracy_end"), "kl_end": m.get("kl_end"),
                "wall_seconds_with_scoring": round(wall, 1)},
        "settings": {
            # the demo model and its adapters train differently on another CPU
            "threads": settings.threads(), "cores": os.cpu_count(), "cpu": cpu_model(), "versions": library_versions(),
            "load_avg": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        },
    }
    previous = Path(args.out)
    if previous.is_file():  # keep the record of what was tried before, and the other scripts' results
        kept = json.loads(previous.read_text())
        out.update({k: kept[k] for k in ("tried", "trl_vs_own", "real", "real_tried") if k in kept})
        if "world" in kept:  # the run this one replaces joins what was tried
            out.setdefault("tried", []).append(_earlier(kept))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
