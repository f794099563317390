"""GRPO for the Tune station (``method: grpo``): reinforcement learning from rewards of sampled answers.

Each step takes ``batch_size`` prompts, samples ``group_size`` answers to each (``temperature``, at most
``max_new_tokens``), rewards every answer (``llmlab.tune.rewards``) and normalises the rewards within each
group (advantage = (reward - group mean) / group std), so an answer is pushed up or down only against its
siblings. The loss is the clipped policy-gradient objective (the ratio to the policy that sampled, kept within
1 +- ``clip`` over ``policy_updates`` updates per batch) plus ``beta`` x KL to the reference, averaged over
the answer tokens. The reference is the policy as it started: for LoRA the adapter as it was loaded (a new
adapter: the base itself; an SFT adapter given as ``model``: that adapter), for full tuning the starting
weights; its log-probabilities come from swapping the starting weights in under ``no_grad``, so no second
model is kept for LoRA.

Why llmlab's own loop rather than trl's ``GRPOTrainer``: on the demo model every answer is a word or two, so a
step is a few milliseconds of generation and one batched forward and backward; the loop adds the failure
handling GRPO needs here (a user's reward that raises or hangs stops the run with the step named, and the
last checkpoint is kept, in llmlab's own resume format) and starts from an adapter artifact directly.
``benchmarks/grpo_trl.py`` times both at the same settings (``trl_vs_own`` in benchmarks/results/grpo.json).

``train_grpo`` returns the trained model, its tokenizer, the training log (one row a step: loss, reward,
kl, group_accuracy, completion_len; sampled answers with their rewards at checkpoints) and the run's facts.
Every step sends a ``metric`` event (task ``tune``); each checkpoint sends a ``log`` event with ``samples``.
torch, transformers and peft are imported inside functions.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit
from llmlab.noise import quiet_peft
from llmlab.scoring import answer_matches
from llmlab.store import Artifact, Store
from llmlab.training.checkpoints import Checkpoints
from llmlab.training.loop import lr_at, trainable_params
from llmlab.tune.config import Plan, TuneConfig
from llmlab.tune.model import load_model, resolve_model
from llmlab.tune.records import load_data
from llmlab.tune.rewards import Reward, gold_answers, score_completions

ANSWERS_SHOWN = 4  # sampled answers shown per prompt at a checkpoint


@dataclass
class Policy:
    """What GRPO starts from: a base model folder and, optionally, an adapter artifact on it."""

    base: Path
    base_art: Artifact | None
    adapter: Artifact | None = None


def resolve_policy(model: str, store: Store) -> Policy:
    """The base (and starting adapter) of ``model``: an adapter artifact, a model artifact or a local folder."""
    if "/" not in model and store.exists(model) and store.get(model).kind == "adapter":
        from llmlab.runtime.adapters import base_of

        adapter = store.get(model)
        base = base_of(adapter, store)  # refuses an adapter whose base changed since it was trained
        parents = [p for p in adapter.manifest.parents if p.role == "base"]
        return Policy(base, store.get(parents[0].name) if parents else None, adapter)
    base, art = resolve_model(model, store)
    return Policy(base, art)


def load_prompts(config: TuneConfig, policy: Policy, store: Store) -> tuple[list[dict[str, Any]], bool]:
    """The records GRPO asks (``config.data``; ``world:...`` reads the world of the policy's base), and
    whether they are demo-world questions."""
    if policy.adapter is not None:  # the adapter's world is its base's
        config = config.model_copy(update={"model": policy.base_art.name if policy.base_art else str(policy.base)})
    return load_data(config, store)


def preview(config: TuneConfig, n: int = 3, *, store: Store | None = None) -> list[dict[str, Any]]:
    """The first ``n`` prompts as the model will see them (chat template applied), with their gold answers."""
    from transformers import AutoTokenizer

    store = store or Store()
    policy = resolve_policy(config.model, store)
    tok = AutoTokenizer.from_pretrained(policy.base, local_files_only=True)
    records, is_world = load_prompts(config, policy, store)
    return [{"prompt": tok.apply_chat_template(prompt_messages(i, r, is_world), tokenize=False,
                                               add_generation_prompt=True), "gold": gold_answers(r)}
            for i, r in enumerate(records[:n], 1)]


def prompt_messages(i: int, rec: dict[str, Any], is_world: bool) -> list[dict[str, str]]:
    """The chat messages that ask record ``i`` (counted from 1): a question as the world and the scoring core
    ask it (with its context passage, if any), or the record's turns without the answer."""
    from llmlab import world

    if is_world or "question" in rec:
        return world.chat_messages(str(rec["question"]), context=rec.get("context"))
    if isinstance(rec.get("messages"), list) and rec["messages"]:
        turns = [{"role": str(t.get("role")), "content": str(t.get("content"))} for t in rec["messages"]
                 if isinstance(t, dict)]
        return turns[:-1] if turns and turns[-1]["role"] == "assistant" else turns
    for key in ("prompt", "instruction"):
        if isinstance(rec.get(key), str):
            extra = f"\n\n{rec['input']}" if key == "instruction" and rec.get("input") else ""
            return [{"role": "user", "content": rec[key] + extra}]
        if key == "prompt" and isinstance(rec.get(key), list):
            return [{"role": str(t["role"]), "content": str(t["content"])} for t in rec[key]]
    raise ConfigError(f"Record {i} has fields {sorted(rec) or 'none'}, none of which is a prompt.",
                      "grpo needs question (with answer/answers for exact_match and f1), prompt, instruction "
                      "or messages.")


def load_policy(policy: Policy, config: TuneConfig, plan: Plan) -> tuple[Any, Any]:
    """The model GRPO trains (an adapter's own weights, a new LoRA, or every weight) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_peft()
    if policy.adapter is None and config.grpo_weights == "lora":
        return load_model(policy.base, config, plan)
    torch.manual_seed(config.seed)
    tok = AutoTokenizer.from_pretrained(policy.base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(policy.base, use_safetensors=True, local_files_only=True,
                                                 dtype=torch.float32).to(plan.device)
    if policy.adapter is not None:
        from peft import PeftModel

        trainable = config.grpo_weights == "lora"
        model = PeftModel.from_pretrained(model, policy.adapter.path, is_trainable=trainable)
        if not trainable:
            model = model.merge_and_unload()
    if config.grpo_weights == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    return model, tok


@contextlib.contextmanager
def swapped(params: dict[str, Any], values: dict[str, Any]) -> Iterator[None]:
    """``params`` hold ``values`` inside the block (no gradients), their own again after it."""
    import torch

    saved = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(values[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


@dataclass
class Prompts:
    """A step's prompts, left-padded: token ids, attention mask and positions (counting real tokens only)."""

    ids: Any  # (B, P)
    mask: Any
    positions: Any

    @classmethod
    def of(cls, prompts: list[list[int]], pad: int, device: str) -> Prompts:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        return cls(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))

    def rows(self, c: slice) -> Prompts:
        return Prompts(self.ids[c], self.mask[c], self.positions[c])


def _prefill(model: Any, prompts: Prompts, group: int) -> tuple[Any, Any]:
    """The prompts' last logits and key/value cache, each prompt's repeated ``group`` times: a prompt is
    computed once for its whole group (and, with gradients, its gradient is the sum over the group)."""
    out = model(input_ids=prompts.ids, attention_mask=prompts.mask, position_ids=prompts.positions,
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(group)
    return out.logits[:, -1].repeat_interleave(group, dim=0), cache


def sample(model: Any, tok: Any, prompts: Prompts, config: TuneConfig) -> tuple[Any, Any, list[str]]:
    """``group_size`` sampled answers to each prompt (a prompt's answers adjacent): answer token ids
    (B*G, C), the answer mask (its tokens up to and including its end token) and the decoded texts."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = model.generation_config.eos_token_id
    ends = torch.tensor(sorted(set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])),
                        device=prompts.ids.device)
    G = config.group_size
    model.eval()
    tokens = []
    with torch.no_grad():
        logits, cache = _prefill(model, prompts, G)
        mask = prompts.mask.repeat_interleave(G, dim=0)
        pos = prompts.positions[:, -1:].repeat_interleave(G, dim=0)
        done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        for _ in range(config.max_new_tokens):
            nxt = torch.multinomial((logits.float() / config.temperature).softmax(-1), 1).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            tokens.append(nxt)
            done |= torch.isin(nxt, ends)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=True).logits[:, -1]
    model.train()
    answers = torch.stack(tokens, dim=1)
    is_end = torch.isin(answers, ends).int()
    answer_mask = ((torch.cumsum(is_end, dim=1) - is_end) == 0).long()  # up to and including the first end
    texts = [tok.decode(a[m.bool()], skip_special_tokens=True).strip() for a, m in zip(answers, answer_mask)]
    return answers, answer_mask, texts


def answer_logprobs(model: Any, prompts: Prompts, answers: Any, group: int, temperature: float) -> Any:
    """Log-probabilities (B*G, C) of the answer tokens at the sampling temperature; each prompt is run once
    for its group (``_prefill``), then the answers on its cache."""
    import torch

    first, cache = _prefill(model, prompts, group)
    logits = first[:, None]
    if answers.shape[1] > 1:
        mask = torch.cat([prompts.mask.repeat_interleave(group, dim=0), torch.ones_like(answers)], dim=1)
        pos = prompts.positions[:, -1:].repeat_interleave(group, dim=0) + torch.arange(
            1, answers.shape[1], device=answers.device)
        rest = model(input_ids=answers[:, :-1], attention_mask=mask[:, :-1], position_ids=pos,
                     past_key_values=cache, use_cache=True).logits
        logits = torch.cat([logits, rest], dim=1)
    logp = (logits.float() / temperature).log_softmax(-1)
    return logp.gather(-1, answers.unsqueeze(-1)).squeeze(-1)


def advantages(rewards: list[float], group: int) -> tuple[list[float], int]:
    """Rewards normalised within each group of ``group`` answers, and how many groups had no spread (all
    answers rewarded alike, so nothing to learn from them)."""
    out, flat = [], 0
    for g in range(0, len(rewards), group):
        r = rewards[g:g + group]
        mean, std = statistics.fmean(r), statistics.pstdev(r)
        flat += std < 1e-6
        out += [(x - mean) / (std + 1e-4) for x in r]
    return out, flat


def _order(n: int, steps: int, batch: int, seed: int) -> list[int]:
    """Record indices for ``steps`` steps of ``batch`` prompts: seeded passes over the data."""
    out: list[int] = []
    epoch = 0
    while len(out) < steps * batch:
        part = list(range(n))
        random.Random(f"grpo-{seed}-{epoch}").shuffle(part)
        out += part
        epoch += 1
    return out


def _samples(records: list[dict[str, Any]], texts: list[str], totals: list[float], group: int,
             n: int) -> list[dict[str, Any]]:
    """The first ``n`` prompts of a step with some of their sampled answers and rewards."""
    out = []
    for k in range(min(n, len(records))):
        rec = records[k]
        users = [t.get("content") for t in rec.get("messages") or [] if isinstance(t, dict) and t.get("role") == "user"]
        question = rec.get("question") or rec.get("prompt") or rec.get("instruction") or (users[-1] if users else "")
        gold = gold_answers(rec)
        out.append({"prompt": str(question)[:200], "gold": gold[0] if gold else None,
                    "answers": [{"text": texts[k * group + j], "reward": round(totals[k * group + j], 4)}
                                for j in range(min(group, ANSWERS_SHOWN))]})
    return out


def _sample_line(samples: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s['prompt'][:50]!r} -> " + ", ".join(f"{a['text'][:24]!r} ({a['reward']:g})"
                                                             for a in s["answers"]) for s in samples)


def train_grpo(policy: Policy, records: list[dict[str, Any]], is_world: bool, rewards: list[Reward],
               config: TuneConfig, plan: Plan, ckpt: Checkpoints,
               progress: Reporter | None) -> tuple[Any, Any, list[dict[str, Any]], dict[str, Any]]:
    """GRPO on ``records`` (see module doc): the trained model, its tokenizer, the training log and facts."""
    import torch

    model, tok = load_policy(policy, config, plan)
    limit = max(8, config.max_len - config.max_new_tokens)
    prompts = []
    for i, rec in enumerate(records, 1):
        text = tok.apply_chat_template(prompt_messages(i, rec, is_world), tokenize=False, add_generation_prompt=True)
        prompts.append(list(tok(text, add_special_tokens=False)["input_ids"])[-limit:])  # keep the question's end
    B, G = min(config.batch_size, len(records)), config.group_size
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    steps = config.steps or max(1, math.ceil(config.epochs * len(records) / B))
    order = _order(len(records), steps, B, config.seed)
    params = trainable_params(model)
    reference = {k: p.detach().clone() for k, p in params.items()} if config.beta > 0 else None
    opt = torch.optim.AdamW(list(params.values()), lr=config.lr(), betas=(0.9, 0.99), weight_decay=0.0)
    autocast = torch.autocast(plan.device, dtype=torch.bfloat16, enabled=config.bf16(plan.device))
    train_log: list[dict[str, Any]] = []
    start, elapsed_before = 0, 0.0
    state = ckpt.load() if config.resume else None
    if state is not None:
        with torch.no_grad():
            for k, v in state["weights"].items():
                params[k].copy_(v)
        opt.load_state_dict(state["optimizer"])
        start, train_log, elapsed_before = state["step"], state["log"], state["elapsed"]
        emit(progress, "log", message=f"resumed from the checkpoint at step {start} of {steps}")
    emit(progress, "log", message=f"grpo: {steps} steps of {B} prompts x {G} answers; rewards "
         + ", ".join(f"{r.name} x {r.weight:g}" for r in rewards))
    t0 = time.perf_counter()

    def snapshot(done: int) -> dict[str, Any]:
        return {"step": done, "weights": {k: p.detach().cpu() for k, p in params.items()},
                "optimizer": opt.state_dict(), "log": train_log,
                "elapsed": elapsed_before + time.perf_counter() - t0}

    done = saved = start
    try:
        for s in range(start, steps):
            torch.manual_seed(config.seed * 1_000_003 + s)  # the same answers whether resumed or not
            batch_records = [records[i] for i in order[s * B:(s + 1) * B]]
            step_prompts = Prompts.of([prompts[i] for i in order[s * B:(s + 1) * B]], pad, plan.device)
            answers, answer_mask, texts = sample(model, tok, step_prompts, config)
            per_answer = [r for r in batch_records for _ in range(G)]
            totals, terms = score_completions(rewards, texts, per_answer, step=s + 1, timeout=config.reward_timeout)
            adv_list, flat = advantages(totals, G)
            adv = torch.tensor(adv_list, device=plan.device).unsqueeze(1)
            n_tokens = max(1, int(answer_mask.sum()))
            size = math.ceil(B / config.grad_accum)  # prompts per micro-batch
            chunks = [slice(c, min(c + size, B)) for c in range(0, B, size)]

            def logprobs(c: slice) -> Any:
                return answer_logprobs(model, step_prompts.rows(c), answers[c.start * G:c.stop * G], G,
                                       config.temperature)

            with torch.no_grad(), autocast:
                old = [logprobs(c) for c in chunks] if config.policy_updates > 1 else None
                ref = None
                if reference is not None:
                    with swapped(params, reference):
                        ref = [logprobs(c) for c in chunks]
            for group in opt.param_groups:
                group["lr"] = lr_at(config, s, steps)
            loss_sum = kl_sum = clipped = 0.0
            for _ in range(config.policy_updates):
                loss_sum = kl_sum = clipped = 0.0
                for j, c in enumerate(chunks):
                    rows = slice(c.start * G, c.stop * G)
                    m = answer_mask[rows].float()
                    with autocast:
                        logp = logprobs(c)
                    ratio = torch.exp(logp - (old[j] if old is not None else logp.detach()))
                    a = adv[rows]
                    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - config.clip, 1 + config.clip) * a)
                    per_token = -surrogate
                    if ref is not None:
                        d = ref[j] - logp
                        kl = torch.exp(d) - d - 1  # k3: an unbiased, never negative estimate of KL(policy||ref)
                        per_token = per_token + config.beta * kl
                        kl_sum += float((kl.detach() * m).sum())
                    loss = (per_token * m).sum() / n_tokens
                    loss.backward()
                    loss_sum += float(loss.detach())
                    clipped += float((((ratio.detach() - 1).abs() > config.clip).float() * m).sum())
                torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            done = s + 1
            right = [answer_matches(t, g[0]) for t, g in ((t, gold_answers(r)) for t, r in zip(texts, per_answer))
                     if g]
            row: dict[str, Any] = {
                "step": done, "loss": round(loss_sum, 4), "val_loss": None,
                "reward": round(statistics.fmean(totals), 4),
                "kl": round(kl_sum / n_tokens, 5) if ref is not None else None,
                "group_accuracy": round(sum(right) / len(right), 4) if right else None,
                "completion_len": round(n_tokens / len(totals), 2),
                "flat_groups": round(flat / B, 3), "clipped": round(clipped / n_tokens, 4),
                **{f"reward_{name}": round(statistics.fmean(v), 4) for name, v in terms.items() if len(terms) > 1}}
            emit(progress, "progress", task="tune", done=done, total=steps)
            emit(progress, "metric", task="tune", **row, lr=lr_at(config, s, steps))
            if config.show_samples and (done % config.checkpoint_every == 0 or done == steps):
                row["samples"] = _samples(batch_records, texts, totals, G, config.show_samples)
                emit(progress, "log", message=f"step {done} samples: {_sample_line(row['samples'])}",
                     task="tune", step=done, samples=row["samples"])
            train_log.append(row)
            if done % config.checkpoint_every == 0 and done < steps:
                ckpt.save(snapshot(done))
                saved = done
    except BaseException:
        # a failing reward, a cancel or a crash between steps: keep the progress for resume
        if done > saved:
            ckpt.save(snapshot(done))
        raise
    seconds = elapsed_before + time.perf_counter() - t0
    tenth = max(1, len(train_log) // 10)

    def mean_of(key: str, rows: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.fmean(vals), 4) if vals else None

    facts = {"steps": steps, "train_seconds": round(seconds, 1), "prompts": len(records), "group_size": G,
             "start_adapter": policy.adapter.name if policy.adapter else None, "resumed_from_step": start or None,
             "rewards": {r.name: r.weight for r in rewards},
             "reward_start": mean_of("reward", train_log[:tenth]), "reward_end": mean_of("reward", train_log[-tenth:]),
             "group_accuracy_start": mean_of("group_accuracy", train_log[:tenth]),
             "group_accuracy_end": mean_of("group_accuracy", train_log[-tenth:]),
             "kl_end": mean_of("kl", train_log[-tenth:]), "val_loss_before": None, "val_loss_after": None}
    return model, tok, train_log, facts
