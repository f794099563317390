"""Preference tuning for the Tune station: ``train_preference`` runs trl's DPO or ORPO trainer on a LoRA
adapter over ``{prompt, chosen, rejected}`` pairs, reports trl's logs as llmlab progress events and
resumes from trl's own checkpoints (kept in the run's checkpoint folder). torch, datasets, peft,
transformers and trl are imported inside the function.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from llmlab.events import Reporter, emit
from llmlab.noise import quiet_peft
from llmlab.training.checkpoints import Checkpoints
from llmlab.tune.config import Plan, TuneConfig
from llmlab.tune.records import record_to_pair


def train_preference(base: Path, records: list[dict[str, Any]], config: TuneConfig, plan: Plan,
                     ckpt: Checkpoints, progress: Reporter | None) -> tuple[Any, Any, list[dict[str, Any]],
                                                                            dict[str, Any]]:
    """DPO or ORPO with trl on a LoRA adapter; trl's own checkpoints give resume."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    quiet_peft()
    if plan.method == "dpo":
        from trl import DPOConfig as ArgsClass
        from trl import DPOTrainer as TrainerClass
    else:
        from trl.experimental.orpo import ORPOConfig as ArgsClass
        from trl.experimental.orpo import ORPOTrainer as TrainerClass

    pairs = [record_to_pair(i, r) for i, r in enumerate(records, 1)]
    torch.manual_seed(config.seed)
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, local_files_only=True).to(plan.device)
    per_epoch = math.ceil(len(pairs) / (config.batch_size * config.grad_accum))
    steps = config.steps or max(1, math.ceil(config.epochs * per_epoch))
    train_log: list[dict[str, Any]] = []

    class Events(TrainerCallback):  # trl logs -> llmlab progress events and the training log
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                row = {"step": state.global_step, "loss": round(float(logs["loss"]), 4), "val_loss": None}
                train_log.append(row)
                emit(progress, "metric", task="tune", **row)
            emit(progress, "progress", task="tune", done=state.global_step, total=steps)

    fp = ckpt.dir / "fingerprint"
    if fp.is_file() and fp.read_text() != ckpt.fingerprint:
        ckpt.clear()
    ckpt.dir.mkdir(parents=True, exist_ok=True)
    fp.write_text(ckpt.fingerprint)
    args = ArgsClass(
        output_dir=str(ckpt.dir), max_steps=steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr(),
        lr_scheduler_type=config.schedule, warmup_steps=int(steps * config.warmup), beta=config.beta,
        max_length=config.max_len, logging_steps=1, save_strategy="steps", save_steps=config.checkpoint_every,
        report_to="none", disable_tqdm=True, seed=config.seed, use_cpu=plan.device == "cpu",
        bf16=config.bf16(plan.device), gradient_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=0)
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha(), lora_dropout=config.dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    trainer = TrainerClass(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok,
                           peft_config=lora, callbacks=[Events()])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; our events carry them
    last = get_last_checkpoint(str(ckpt.dir)) if config.resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - t0
    facts = {"steps": steps, "train_seconds": round(seconds, 1), "pairs": len(pairs),
             "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else None}
    return trainer.model, tok, train_log, facts

