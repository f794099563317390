"""llmlab's own training loop, shared by the Tune and Distill stations: ``LoopOptions`` (the options every
run of it takes; a station's config extends them and supplies ``lr()``), ``train_loop`` (AdamW, gradient
clipping, warm-up and decay of the learning rate by ``lr_at``, length-grouped batches, validation loss,
checkpoints and resume, progress events, DDP under torchrun) over the trainable parameters of a model.
torch is imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmlab.events import Reporter, emit
from llmlab.scoring import EvalOptions
from llmlab.training.batching import Example, Prepared, collate, loss_tokens, plan_batches
from llmlab.training.checkpoints import Checkpoints
from llmlab.training.distributed import Dist, all_sum
from llmlab.training.losses import LossFn, ResumableLoss, sft_loss, summed_nll



def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bf16 matmuls natively (AVX512-BF16 or AMX): on Linux read from its flags;
    elsewhere assumed, as the user asked for bf16."""
    if not cpuinfo.is_file():
        return True
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _warn_no_bf16() -> None:  # once a process
    logging.getLogger("llmlab").warning(
        "precision bf16 asked for, but this CPU has no AVX512-BF16 or AMX: training runs in fp32 "
        "(emulated bf16 would be far slower). Say precision: fp32 to silence this.")

class LoopOptions(BaseModel):
    """Options of llmlab's own training loop, shared by the Tune and Distill stations."""

    model_config = ConfigDict(extra="forbid")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after the warm-up.")
    warmup: float = Field(0.05, ge=0, lt=1, description="Fraction of steps with a linear warm-up.")
    epochs: float = Field(8.0, gt=0, description="Passes over the training data (ignored when steps is set).")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch (over all processes under torchrun).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_len: int = Field(512, ge=8, description="Longest sequence in tokens; longer ones are truncated (and counted).")
    seed: int = Field(0, description="Seed for the train/validation split, data order, dropout and adapter init.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records held out for validation loss.")
    val_limit: int = Field(64, ge=1, description="Most held-out sequences a validation-loss measurement reads "
                           "(bounded so validation stays quick on a real model).")
    eval_every: int = Field(50, ge=1, description="Steps between validation-loss measurements.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints (for resume).")
    resume: bool = Field(True, description="Continue from the last checkpoint of an interrupted run with the "
                         "same settings.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA (bf16) when torch sees a GPU.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Matmul precision of the forward and backward passes (weights and the optimizer stay "
        "fp32): auto is bf16 on CUDA and fp32 on CPU; bf16 on a CPU with AVX512-BF16 or AMX trains about 1.5x "
        "faster (SmolLM2-135M on 2 cores: 24 s a step against 38 s). A CPU without them would emulate bf16 "
        "some 60x slower, so there bf16 runs as fp32, with a warning.")

    @field_validator("learning_rate", check_fields=False)
    @classmethod
    def _lr(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"learning_rate must be positive, got {v}; try 2e-4 to 2e-3 for LoRA, "
                             "or leave it out for the method's default")
        return v

    def bf16(self, device: str) -> bool:
        """Whether the passes run under bf16 autocast on ``device`` (``precision``)."""
        if self.precision == "bf16" and device == "cpu" and not cpu_has_bf16():
            _warn_no_bf16()
            return False
        return self.precision == "bf16" or (self.precision == "auto" and device == "cuda")

    def lr(self) -> float:
        """The peak learning rate (each station's config says how it is chosen)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: every setting but resume and the evaluation options."""
        import hashlib

        d = self.model_dump(mode="json", exclude={"resume", "evaluate", *EvalOptions.model_fields})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def lr_at(config: LoopOptions, s: int, steps: int) -> float:
    """The learning rate at step ``s`` of ``steps``: a linear warm-up, then ``config.schedule``."""
    peak, warm = config.lr(), int(steps * config.warmup)
    if s < warm:
        return peak * (s + 1) / warm
    frac = (s - warm) / max(1, steps - warm)
    if config.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * frac))
    if config.schedule == "linear":
        return peak * (1 - frac)
    return peak


def val_loss(model: Any, examples: list[Example], pad_id: int, device: str, batch: int,
             progress: Reporter | None = None) -> float | None:
    """Mean loss per answer token over ``examples`` (None without validation data), with progress."""
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    starts = range(0, len(examples), batch)
    with torch.no_grad():
        for i, b in enumerate(starts):
            ids, mask, labels, _ = collate(examples[b:b + batch], pad_id, device)
            nll, n = summed_nll(model, ids, mask, labels)
            total += float(nll)
            count += n
            emit(progress, "progress", task="validation", done=i + 1, total=len(starts))
    model.train()
    return total / max(1, count)


def trainable_params(model: Any) -> dict[str, Any]:
    """The parameters of ``model`` that train, by name."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def train_loop(model: Any, tok: Any, data: Prepared, config: LoopOptions, device: str, ckpt: Checkpoints,
               progress: Reporter | None, *, loss_fn: LossFn = sft_loss, dist: Dist | None = None,
               task: str = "tune") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """llmlab's training loop (AdamW, clipping, warm-up + decay, length-grouped batches, validation
    loss, checkpoints and resume) over the trainable parameters of ``model``; returns the training
    log and timing facts. Under torchrun (``dist.world > 1``) the model is wrapped in DDP and each
    micro-batch is shared out by rank; the loss is divided by the step's global token count, so N
    processes compute the same update as one. Only rank 0 evaluates, checkpoints and reports."""
    import torch

    dist = dist or Dist()
    progress = progress if dist.main else None

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    lengths = [len(e.input_ids) for e in data.train]
    per_epoch = math.ceil(len(data.train) / config.batch_size)
    steps = config.steps or max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))
    epochs_needed = math.ceil(steps * config.grad_accum / per_epoch)
    batches = plan_batches(len(data.train), lengths, config.batch_size, epochs_needed, config.seed)
    params = list(trainable_params(model).values())
    opt = torch.optim.AdamW(params, lr=config.lr(), betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=config.bf16(device))
    bs = config.batch_size
    val = data.val[: config.val_limit]
    train_log: list[dict[str, Any]] = []
    start, elapsed_before = 0, 0.0
    state = ckpt.load() if config.resume else None
    if state is None:
        val_before = val_loss(model, val, pad_id, device, bs, progress) if dist.main else None
    else:
        named = trainable_params(model)
        with torch.no_grad():
            for k, v in state["weights"].items():
                named[k].copy_(v)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, train_log, elapsed_before = state["step"], state["log"], state["elapsed"]
        val_before = state["val_before"]
        if isinstance(loss_fn, ResumableLoss):  # e.g. the anchor batches follow on where they stopped
            loss_fn.resume(start * config.grad_accum)
        emit(progress, "log", message=f"resumed from the checkpoint at step {start} of {steps}")
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Built after a resume's weights are loaded: DDP starts every rank from rank 0's copy.
        net = DistributedDataParallel(model)

    def snapshot(done: int) -> dict[str, Any]:
        return {"step": done, "weights": {k: p.detach().cpu() for k, p in trainable_params(model).items()},
                "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "log": train_log,
                "elapsed": elapsed_before + time.perf_counter() - t0, "val_before": val_before,
                "window_loss": window_loss}

    model.train()
    t0 = time.perf_counter()
    tokens, eval_seconds = 0, 0.0  # real (unpadded) tokens trained in this run; validation time
    examples_seen = 0  # by this process
    window_loss = state["window_loss"] if state else 0.0  # loss summed since the last logged step
    window_tokens, window_start, done, saved = 0, t0, start, start
    try:
        for s in range(start, steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(config, s, steps)
            step_loss = 0.0
            micro = batches[s * config.grad_accum:(s + 1) * config.grad_accum]
            n_items = max(1, sum(loss_tokens(data.train[i]) for mb in micro for i in mb))
            for mb in micro:
                # Every rank runs a forward and backward (DDP's gradient all-reduce needs all of
                # them); a rank left without an example repeats one and weighs its loss by 0.
                shard = mb[dist.rank::dist.world]
                ids, mask, labels, real = collate([data.train[i] for i in shard or mb[:1]], pad_id, device)
                with autocast:
                    # DDP averages gradients over ranks: scale by world to get the sum over all tokens.
                    loss = loss_fn(net, ids, mask, labels, n_items) * (dist.world if shard else 0.0)
                loss.backward()
                step_loss += float(loss.detach()) / dist.world
                if shard:
                    window_tokens += real
                    tokens += real
                    examples_seen += len(shard)
            step_loss = all_sum(step_loss, dist)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = s + 1
            window_loss += step_loss
            emit(progress, "progress", task=task, done=done, total=steps)
            if dist.main and (done % config.eval_every == 0 or done == steps or done == 1):
                now = time.perf_counter()
                n = done - (train_log[-1]["step"] if train_log else 0)
                row = {"step": done, "loss": round(window_loss / n, 4),
                       "val_loss": _round(val_loss(model, val, pad_id, device, bs, progress))}
                eval_seconds += time.perf_counter() - now
                train_log.append(row)
                emit(progress, "metric", task=task, **row, lr=lr_at(config, s, steps),
                     tok_s=round(window_tokens * dist.world / max(now - window_start, 1e-9), 1))
                window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
            if done % config.checkpoint_every == 0 and done < steps:
                if dist.main:
                    ckpt.save(snapshot(done))
                saved = done
    except BaseException:
        # A cancel (SIGTERM raised as an exception) or a crash between steps: keep the progress.
        if done > saved and dist.main:
            ckpt.save(snapshot(done))
        raise
    run_seconds = time.perf_counter() - t0
    seconds = elapsed_before + run_seconds
    real_total = sum(len(data.train[i].input_ids) for mb in batches[:steps * config.grad_accum] for i in mb)
    padded = sum(len(mb) * max(lengths[i] for i in mb) for mb in batches[:steps * config.grad_accum])
    run_tokens = all_sum(tokens, dist)
    facts = {"steps": steps, "epochs": round(steps * config.grad_accum / per_epoch, 2),
             "train_seconds": round(seconds, 1), "eval_seconds": round(eval_seconds, 1),
             "tok_s": round(run_tokens / max(run_seconds - eval_seconds, 1e-9), 1),
             "train_tokens": real_total, "padding_fraction": round(1 - real_total / padded, 4),
             "resumed_from_step": start or None, "val_loss_before": _round(val_before),
             "val_loss_after": train_log[-1]["val_loss"] if train_log else None}
    if dist.world > 1:
        import torch.distributed as td

        ranks: list[Any] = [None] * dist.world
        td.all_gather_object(ranks, {"rank": dist.rank, "examples": examples_seen, "tokens": tokens})
        facts["processes"] = dist.world
        facts["ranks"] = ranks
    return train_log, facts


def _round(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None

