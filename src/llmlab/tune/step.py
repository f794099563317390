"""The Tune station: LoRA, DoRA, QLoRA, full fine-tuning, DPO, ORPO and GRPO on a model in the store.

``tune(TuneConfig(name="demo-lora", model="demo"))`` reads the data (by default the demo world's
``tune`` questions, found beside the model or an ancestor), applies the model's chat template,
masks everything but the answer tokens, trains, and writes one artifact:

- ``adapter`` (LoRA, DoRA, QLoRA, DPO, ORPO): peft's ``adapter_model.safetensors`` and
  ``adapter_config.json`` plus the base's tokenizer files, with ``Parent(base, role="base")``;
- ``full`` (full fine-tuning): a complete Hugging Face folder.

Both carry ``training_log.jsonl`` (step, loss, val_loss: deterministic, so hashed) and their
timings in the manifest's info. Afterwards the scoring core compares base and tuned (held-out
world-question accuracy, perplexity on the world's held-out text, validation loss) and the
numbers go to the artifact's ``metrics.json``.

Supervised methods run llmlab's own loop (``llmlab.training.loop.train_loop``) over a peft (or plain
transformers) model: batches are grouped by length so dynamic padding wastes little, and a checkpoint is
written every ``checkpoint_every`` steps (and when the run is interrupted) under
``<store>/.cache/tune/<name>/``, so ``resume`` continues a crashed or cancelled run. DPO and ORPO
run trl's trainers on ``{prompt, chosen, rejected}`` pairs (``llmlab.tune.preference``). GRPO samples
answers, rewards them and trains on the rewards (``llmlab.tune.grpo``, rewards in ``llmlab.tune.rewards``);
it may start from an adapter artifact (an SFT LoRA), which it continues, and its training log holds
reward, KL, group accuracy and answer length per step, with sampled answers at checkpoints.

This module holds ``tune`` (the recipe step) and the scoring of base against tuned; the options are in
``llmlab.tune.config``, the data in ``llmlab.tune.records``, the model in ``llmlab.tune.model`` and the
anchored loss in ``llmlab.tune.anchor``.

QLoRA (bitsandbytes) and the unsloth backend need an NVIDIA GPU; ``select_backend`` says what
runs instead and why. (``llmlab.runtime.adapters.merged_folder`` is how the runtime loads an adapter
artifact to score or chat with it.) torch, transformers, peft and trl are
imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from llmlab import settings
from llmlab.errors import ConfigError, ResourceError, StoreError
from llmlab.events import Reporter, emit
from llmlab.noise import no_progress_bars
from llmlab.runtime.adapters import merge_adapter
from llmlab.store import Artifact, Parent, StepRecord, Store
from llmlab.training.checkpoints import Checkpoints
from llmlab.training.distributed import distributed, wait_for_main
from llmlab.training.loop import train_loop, trainable_params
from llmlab.training.losses import LossFn, sft_loss
from llmlab.tune.anchor import AnchoredLoss
from llmlab.tune.config import OWN_TRAINER_METHODS, PREFERENCE_METHODS, TuneConfig, select_backend
from llmlab.tune.grpo import load_prompts, resolve_policy, train_grpo
from llmlab.tune.model import load_model, model_world, resolve_model, save_tokenizer
from llmlab.tune.preference import train_preference
from llmlab.tune.records import load_data, prepare, prepare_anchor
from llmlab.tune.rewards import load_rewards, needs_gold

log = logging.getLogger(__name__)
# grpo's measures (the first and last tenth of training) kept in metrics.json, so MLflow logs them with the step
GRPO_METRICS = ("reward_start", "reward_end", "group_accuracy_start", "group_accuracy_end", "kl_end")


# ----- evaluation -----
def _evaluate(base: Path, tuned: Path, texts: list[str] | None, qa: list[dict[str, Any]] | None,
              progress: Reporter | None) -> dict[str, Any]:
    """Held-out accuracy and perplexity of base (``_before``) and tuned, through the scoring core."""
    from llmlab.scoring import score

    if not texts and not qa:
        return {}
    out: dict[str, Any] = {}
    for suffix, folder in (("_before", base), ("", tuned)):
        emit(progress, "log", message=f"scoring the {'base' if suffix else 'tuned'} model on held-out questions")
        m = score(folder, data=texts, qa=qa, speed_test=False, progress=progress)
        out.update({key + suffix: m[key] for key in ("accuracy", "ppl") if key in m})
        if not suffix and "accuracy" in m:
            out["accuracy_n"], out["accuracy_examples"] = m["accuracy_n"], m["accuracy_examples"]
    return out


# ----- the station -----
def tune(config: TuneConfig, *, store: Store | None = None, progress: Reporter | None = None,
         overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Train ``config.model`` on ``config.data`` with ``config.method`` and write the artifact.

    Under ``torchrun --nproc_per_node N -m llmlab tune ...`` every process trains its share of each
    batch (supervised methods); rank 0 writes the artifact and the others wait for it."""
    import torch

    no_progress_bars()  # our own progress events say what is happening
    store = store or Store()
    policy = resolve_policy(config.model, store) if config.method == "grpo" else None
    base, base_art = (policy.base, policy.base_art) if policy else resolve_model(config.model, store)
    # a user's reward file is imported now, so a missing file or function stops the run before any loading
    rewards = load_rewards(config.reward_weights()) if policy else []
    if store.exists(config.name) and not overwrite:
        raise StoreError(f"An artifact named '{config.name}' already exists.",
                         "Choose another name, or pass --force / overwrite=True.")
    plan = select_backend(config)
    dist = distributed(plan.device)
    if dist.world > 1 and plan.method in OWN_TRAINER_METHODS:
        raise ConfigError(f"{plan.method} runs its own trainer, not llmlab's supervised loop, so it does not run "
                          "under torchrun here.", "Start it as one process.")
    progress = progress if dist.main else None
    for m in plan.messages:
        log.warning(m)
        emit(progress, "log", level="warning", message=m)
    emit(progress, "log", message=f"tuning '{config.model}' with {plan.method} on {plan.backend} ({plan.device})")
    if policy and policy.adapter:
        emit(progress, "log", message=f"grpo starts from the adapter '{policy.adapter.name}' on its base "
             f"'{base_art.name if base_art else base}'")
    if plan.device == "cpu":
        torch.set_num_threads(settings.threads())
    records, is_world = load_prompts(config, policy, store) if policy else load_data(config, store)
    ckpt = Checkpoints(store, config.name, config.fingerprint())
    kind = "full" if plan.method == "full" or (policy and config.grpo_weights == "full") else "adapter"
    info: dict[str, Any] = {"method": plan.method, "backend": plan.backend, "device": plan.device,
                            "threads": settings.threads(), "records": len(records)}
    try:
        if plan.method in PREFERENCE_METHODS:
            model, tok, train_log, facts = train_preference(base, records, config, plan, ckpt, progress)
        elif policy is not None:
            needs_gold(rewards, records)
            model, tok, train_log, facts = train_grpo(policy, records, is_world, rewards, config, plan, ckpt,
                                                      progress)
        else:
            model, tok = load_model(base, config, plan)
            data = prepare(config, tok, records, is_world, progress)
            info.update(train_examples=len(data.train), val_examples=min(len(data.val), config.val_limit),
                        truncated=data.truncated, dropped=data.dropped)
            loss_fn: LossFn = sft_loss
            if config.anchor:
                if dist.world > 1:
                    raise ConfigError("anchor is not supported under torchrun (two forward passes per batch "
                                      "through DDP).", "Tune with an anchor in one process.")
                anchor = prepare_anchor(config, tok, store)
                pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
                loss_fn = AnchoredLoss(anchor, config.anchor_weight, config.batch_size, config.grad_accum, pad_id,
                                       plan.device, config.seed)
                emit(progress, "log", message=f"anchored on {len(anchor)} records of '{config.anchor}'")
            train_log, facts = train_loop(model, tok, data, config, plan.device, ckpt, progress,
                                          loss_fn=loss_fn, dist=dist)
            if isinstance(loss_fn, AnchoredLoss):
                info["anchor"] = loss_fn.summary()
    except torch.OutOfMemoryError:
        raise ResourceError("Training ran out of GPU memory.",
                            "Use a smaller batch_size (with grad_accum to keep the effective batch), a shorter "
                            "max_len, or gradient_checkpointing: true.") from None
    except MemoryError:
        raise ResourceError("Training ran out of memory.",
                            "Use a smaller batch_size or max_len, or gradient_checkpointing: true.") from None
    info.update(facts)
    info["trainable_params"] = sum(p.numel() for p in trainable_params(model).values())
    info["total_params"] = sum(p.numel() for p in model.parameters())
    if not dist.main:
        return wait_for_main(config.name, store)
    with store.write(config.name, kind, overwrite=overwrite) as w:
        if kind == "adapter":
            model.save_pretrained(w.path, safe_serialization=True)
            (w.path / "README.md").unlink(missing_ok=True)  # peft's model card: a template, not facts
            # Name the base as the store knows it, not by the folder it was read from.
            cfg_path = w.path / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = base_art.name if base_art else str(base)
            if isinstance(adapter_cfg.get("target_modules"), list):  # peft writes a set, in hash-seed order:
                adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])  # same run, same bytes
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
        else:
            model.save_pretrained(w.path, safe_serialization=True)
        save_tokenizer(base, w.path, tok)  # the base's files, byte for byte
        with open(w.path / "training_log.jsonl", "w") as f:
            # grpo's rows hold its own measures (reward, kl, ...) and sampled answers at checkpoints
            f.writelines(json.dumps(r if policy else {k: r[k] for k in ("step", "loss", "val_loss")}) + "\n"
                         for r in train_log)
        if base_art is not None:
            w.parents = [Parent(name=base_art.name, content_hash=base_art.content_hash, role="base")]
        else:
            info["base_path"] = str(base)
        if policy and policy.adapter:
            w.parents.append(Parent(name=policy.adapter.name, content_hash=policy.adapter.content_hash, role="start"))
        w.info = info
        w.step = step
        w.metrics = {k: facts[k] for k in ("val_loss_before", "val_loss_after", *GRPO_METRICS)
                     if facts.get(k) is not None}
        if config.evaluate:
            del model  # free the training copy before two more models load
            tuned = w.path if kind == "full" else merge_adapter(base, w.path, ckpt.dir / "merged")
            # GRPO from an adapter is measured against that adapter: what the RL added
            before = merge_adapter(base, policy.adapter.path, ckpt.dir / "start") if policy and policy.adapter else base
            texts, qa = config.eval_inputs(store=store, artifact=base_art, world=model_world(store, base, base_art),
                                           progress=progress)
            w.metrics.update(_evaluate(before, tuned, texts, qa, progress))
            for folder in (tuned, before):
                if folder not in (w.path, base):
                    shutil.rmtree(folder, ignore_errors=True)
    ckpt.clear()
    return wait_for_main(config.name, store)
