"""TRL's GRPOTrainer against llmlab's own GRPO loop: seconds per step and held-out accuracy, same settings.

Usage: nice -n 10 python benchmarks/grpo_trl.py [--home /tmp/bench-grpo] [--steps 40] [--batch-size 8]
       [--group-size 8] [--only own|trl]
Both start from the SFT adapter ``demo-lora`` on ``demo`` (made in --home as benchmarks/grpo.py makes them) and
train its own LoRA weights on the demo world's tune questions with the exact_match reward: the same prompts
per step, answers per prompt, max new tokens, temperature, learning rate and schedule (cosine, 5 % warm-up),
AdamW betas, gradient clipping, beta (KL to the starting adapter, k3 estimate), clip 0.2, one policy update
per batch, token-level loss normalisation (TRL's ``dapo``, which is llmlab's), float32 on the CPU, no vLLM.
The TRL model is the one llmlab's loop loads (``load_policy``), so both start from the same weights.

Writes ``trl_vs_own`` into benchmarks/results/grpo.json (its other keys kept): the shared settings; for each
trainer its training seconds, seconds per step, reward over the first and last tenth of the steps and the
held-out accuracy after (the scoring core on the world's held-out phrasings, greedy, as benchmarks/grpo.py
scores); the SFT adapter's own accuracy; the machine's load average. A trainer that fails is recorded with
its error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tenths(values: list[float]) -> dict[str, float]:
    """Mean of the first and last tenth of ``values`` (as llmlab's facts report them)."""
    n = max(1, len(values) // 10)
    return {"reward_start": round(statistics.fmean(values[:n]), 4),
            "reward_end": round(statistics.fmean(values[-n:]), 4)}


def accuracy(folder: Path, qa: list[dict[str, Any]]) -> float:
    from llmlab.scoring import score

    return round(score(folder, qa=qa, speed_test=False)["accuracy"], 4)


def run_own(config: Any, store: Any, qa: list[dict[str, Any]]) -> dict[str, Any]:
    """llmlab's own loop (``tune``), then its adapter scored."""
    from llmlab.runtime.adapters import merged_folder
    from llmlab.tune import tune

    art = tune(config.model_copy(update={"name": "bench-grpo-own"}), store=store, overwrite=True)
    rows = [json.loads(x) for x in (art.path / "training_log.jsonl").read_text().splitlines()]
    seconds = art.manifest.info["train_seconds"]
    return {"train_seconds": seconds, "seconds_per_step": round(seconds / len(rows), 3),
            **tenths([r["reward"] for r in rows]), "accuracy": accuracy(merged_folder(art, store), qa)}


def trl_reward(fn: Any) -> Any:
    """llmlab's reward ``fn(completion, record)`` as a TRL reward function (dataset column ``record``)."""

    def exact_match(completions: list[Any], record: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [fn(t.strip(), json.loads(r)) for t, r in zip(texts, record)]

    return exact_match


def trl_args(config: Any, out: str) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out, max_steps=config.steps, per_device_train_batch_size=config.batch_size * config.group_size,
        gradient_accumulation_steps=1, num_generations=config.group_size, max_completion_length=config.max_new_tokens,
        temperature=config.temperature, top_p=1.0, top_k=0, learning_rate=config.lr(), lr_scheduler_type="cosine",
        warmup_steps=config.warmup, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
        beta=config.beta, epsilon=config.clip, num_iterations=config.policy_updates, loss_type="dapo",
        scale_rewards="group", seed=config.seed, use_cpu=True, bf16=False, fp16=False, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)


def run_trl(config: Any, store: Any, qa: list[dict[str, Any]]) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same model, prompts and settings, then its adapter scored."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from llmlab.runtime.adapters import merge_adapter
    from llmlab.tune.config import select_backend
    from llmlab.tune.grpo import load_policy, load_prompts, prompt_messages, resolve_policy
    from llmlab.tune.model import save_tokenizer
    from llmlab.tune.rewards import load_rewards

    policy = resolve_policy(config.model, store)
    records, is_world = load_prompts(config, policy, store)
    model, tok = load_policy(policy, config, select_backend(config))
    data = Dataset.from_list([{"prompt": prompt_messages(i, r, is_world), "record": json.dumps(r)}
                              for i, r in enumerate(records, 1)])
    [reward] = load_rewards(config.reward_weights())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(model=model, reward_funcs=[trl_reward(reward.fn)], args=trl_args(config, tmp),
                              train_dataset=data, processing_class=tok)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        adapter = Path(tmp) / "adapter"
        trainer.model.save_pretrained(adapter, selected_adapters=["default"])
        save_tokenizer(policy.base, adapter, tok)  # as an llmlab adapter artifact holds them
        merged = merge_adapter(policy.base, adapter, Path(tmp) / "merged")
        score = accuracy(merged, qa)
    return {"train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / config.steps, 3),
            **tenths(rewards), "accuracy": score, "steps_logged": len(rewards)}


def guarded(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)``'s result, or the error it raised (a trainer that cannot run here is a result too)."""
    try:
        return {**fn(*args), "load_avg_end": load()}
    except Exception as e:  # recorded in the results, with the traceback on stderr
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:1000], "load_avg_end": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/bench-grpo", help="store holding (or to hold) demo and demo-lora")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="answers sampled per prompt")
    parser.add_argument("--only", choices=["own", "trl"], help="run one trainer (the other's entry is kept)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo.json"))
    args = parser.parse_args()
    os.environ["LLMLAB_HOME"] = args.home
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")

    import torch

    from llmlab import settings
    from grpo import sft_store  # benchmarks/grpo.py, beside this script
    from llmlab.runtime.adapters import merged_folder
    from llmlab.store import library_versions
    from llmlab.tune import TuneConfig
    from llmlab.tune.model import model_world

    torch.set_num_threads(settings.threads())
    store = sft_store(args.home)
    config = TuneConfig(name="bench-grpo", model="demo-lora", method="grpo", steps=args.steps,
                        batch_size=args.batch_size, group_size=args.group_size, max_new_tokens=8, beta=0.1,
                        rewards="exact_match", evaluate=False, resume=False, show_samples=0,
                        checkpoint_every=args.steps + 1)
    base, base_art = store.get("demo").path, store.get("demo")
    _, qa = config.eval_inputs(store=store, artifact=base_art, world=model_world(store, base, base_art))
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.is_file() else {}
    entry = results.setdefault("trl_vs_own", {})
    entry["settings"] = {
        "model": "demo-lora (SFT LoRA on demo), its own LoRA weights trained", "data": "world:tune",
        "steps": config.steps, "batch_size": config.batch_size, "group_size": config.group_size,
        "max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "learning_rate": config.lr(),
        "schedule": "cosine", "warmup": config.warmup, "beta": config.beta, "clip": config.clip,
        "reward": "exact_match", "dtype": "float32", "device": "cpu", "threads": settings.threads(),
        "cores": os.cpu_count(),
        "versions": {k: v for k, v in library_versions().items() if k in ("torch", "transformers", "peft", "trl")}}

    def save() -> None:  # after each part: a long run that is stopped keeps what it measured
        own, trl = entry.get("own", {}), entry.get("trl", {})
        if "seconds_per_step" in own and "seconds_per_step" in trl:
            entry["trl_over_own_seconds"] = round(trl["seconds_per_step"] / own["seconds_per_step"], 2)
        path.write_text(json.dumps(results, indent=2) + "\n")

    for name, fn in (("own", run_own), ("trl", run_trl)):
        if args.only in (None, name):
            entry[name] = {"load_avg_start": load(), **guarded(fn, config, store, qa)}
            save()
    entry.update(sft_accuracy=accuracy(merged_folder(store.get("demo-lora"), store), qa), n=len(qa))
    save()
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
