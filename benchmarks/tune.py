"""LoRA tuning speed and quality: llmlab's own loop against trl's SFTTrainer written by hand.

Usage: LLMLAB_THREADS=1 python benchmarks/tune.py [--home /tmp/bench-tune] [--steps 60] [--rounds 2]
Writes benchmarks/results/tune.json:

- ``llmlab_tok_s`` / ``baseline_tok_s`` / ``ratio``: real (non-padding) tokens per second of the same
  LoRA (rank 32, all linear layers, lr 2e-3) on the same demo model, data (the world's tune
  questions, chat template, loss on the answer), batch size, sequence length, steps and threads.
  The baseline is what a user writes by hand: ``trl.SFTTrainer`` with its defaults (dynamic padding,
  prompt-completion records) and ``peft.LoraConfig``. The two alternate ``--rounds`` times; the
  medians are reported. ``padding_fraction_*`` is the share of padded positions in their batches.
- ``peak_rss_mb``: the peak resident memory of this process during llmlab's runs.
- ``val_loss_*`` / ``accuracy_*``: the default quickstart tune config (``demo-lora``), base vs tuned,
  held-out world-question accuracy.
- ``settings``: model, threads, versions, and the machine's load average at start and end.

The demo model is built once into --home (``build_demo``, ~4.5 min at 2 threads) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _baseline(model_dir: Path, records: list[dict[str, Any]], steps: int, batch: int, max_len: int,
              seed: int) -> dict[str, float]:
    """trl's SFTTrainer + peft's LoraConfig, defaults otherwise; tokens counted in the collator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from llmlab import world

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = []
    for r in records:
        msgs = world.chat_messages(str(r["question"]), str(r["answer"]))
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-sft-"), max_steps=steps,
                     per_device_train_batch_size=batch, learning_rate=2e-3, max_length=max_len,
                     logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=True, seed=seed, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=LoraConfig(r=32, lora_alpha=64, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.remove_callback(PrinterCallback)
    counts = {"real": 0, "padded": 0}
    inner = trainer.data_collator

    def counting(features: list[Any]) -> Any:
        out = inner(features)
        counts["real"] += int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel()
        counts["padded"] += out["input_ids"].numel()
        return out

    trainer.data_collator = counting
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"tok_s": counts["real"] / seconds, "padding_fraction": 1 - counts["real"] / counts["padded"],
            "seconds": seconds}


def _llmlab(store: Any, steps: int, batch: int, max_len: int, seed: int) -> dict[str, float]:
    from llmlab.scoring import peak_memory
    from llmlab.tune import TuneConfig, tune

    cfg = TuneConfig(name="bench-lora", model="demo", steps=steps, batch_size=batch, max_len=max_len, rank=32,
                     learning_rate=2e-3, seed=seed, evaluate=False, eval_every=10_000, checkpoint_every=10_000,
                     resume=False)
    with peak_memory() as pm:
        art = tune(cfg, store=store, overwrite=True)
    info = art.manifest.info
    return {"tok_s": info["tok_s"], "padding_fraction": info["padding_fraction"], "peak_rss_mb": pm.peak_mb,
            "seconds": info["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/bench-tune", help="store holding (or to hold) the demo model")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune.json"))
    args = parser.parse_args()
    os.environ["LLMLAB_HOME"] = args.home
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")
    load_start = os.getloadavg()

    import torch

    from llmlab import settings
    from llmlab.build import BuildDemoConfig, build_demo
    from llmlab.store import Store, library_versions
    from llmlab.tune import TuneConfig, tune
    from llmlab.tune.records import load_data
    from llmlab.world import find_world

    torch.set_num_threads(settings.threads())
    store = Store(args.home)
    if not store.exists("demo"):
        build_demo(BuildDemoConfig(name="demo", size="small"), store=store)
    demo = store.get("demo")
    records, _ = load_data(TuneConfig(name="x", model="demo"), store)
    assert find_world(store, demo) is not None

    runs: dict[str, list[dict[str, float]]] = {"llmlab": [], "baseline": []}
    for r in range(args.rounds):
        order = ("llmlab", "baseline") if r % 2 == 0 else ("baseline", "llmlab")
        for who in order:
            if who == "llmlab":
                runs[who].append(_llmlab(store, args.steps, args.batch_size, args.max_len, seed=r))
            else:
                runs[who].append(_baseline(demo.path, records, args.steps, args.batch_size, args.max_len, seed=r))
            print(who, {k: round(v, 3) for k, v in runs[who][-1].items()}, flush=True)

    def med(who: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[who])

    # Quality: the quickstart's tune step as it is (every default).
    quick = tune(TuneConfig(name="demo-lora", model="demo"), store=store, overwrite=True)
    m = quick.metrics
    out = {
        "llmlab_tok_s": round(med("llmlab", "tok_s"), 1),
        "baseline_tok_s": round(med("baseline", "tok_s"), 1),
        "ratio": round(med("llmlab", "tok_s") / med("baseline", "tok_s"), 3),
        "padding_fraction_llmlab": round(med("llmlab", "padding_fraction"), 4),
        "padding_fraction_baseline": round(med("baseline", "padding_fraction"), 4),
        "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs["llmlab"]), 1),
        "val_loss_before": m.get("val_loss_before"),
        "val_loss_after": m.get("val_loss_after"),
        "accuracy_before": m.get("accuracy_before"),
        "accuracy_after": m.get("accuracy"),
        "accuracy_gain_points": round(100 * (m["accuracy"] - m["accuracy_before"]), 1),
        "quickstart_tune_seconds": quick.manifest.info.get("train_seconds"),
        "runs": {k: [{kk: round(vv, 4) for kk, vv in x.items()} for x in v] for k, v in runs.items()},
        "settings": {
            "model": {"name": "demo", **{k: demo.manifest.info.get(k) for k in ("architecture", "n_params", "size")}},
            "data": "world:tune", "records": len(records), "steps": args.steps, "batch_size": args.batch_size,
            "max_len": args.max_len, "rounds": args.rounds, "lora": {"rank": 32, "alpha": 64, "targets": "all-linear"},
            "threads": settings.threads(), "versions": library_versions(),
            "load_avg": {"start": [round(x, 2) for x in load_start],
                         "end": [round(x, 2) for x in os.getloadavg()]},
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("runs", "settings")}, indent=2))


if __name__ == "__main__":
    main()
