"""The demo base model: a byte-level BPE tokenizer and a small Llama trained from scratch.

``build_demo`` generates the seeded world (``llmlab.world``), trains a tokenizer on its text,
trains a ``LlamaForCausalLM`` on the world's texts plus grounded reading examples (in the chat
template) with a plain torch loop, and writes a ``base`` artifact to the store: safetensors
weights, tokenizer files with the chat template, ``training_log.jsonl`` and the world itself
(``world/``), so later stations know which facts the model was taught.

``open_or_build(name, size, store, progress)`` is what a notebook's "open or build" cell calls: the
artifact when the store has it, else a build behind a progress bar.

``build_micro`` makes the same kind of folder in seconds (one layer, a few steps) for tests.

Every size keeps hidden and FFN widths multiples of 256, so every GGUF quant type applies, and
unties the output head from the embeddings (the safest layout for GGUF conversion). With the
same config and thread count a rebuild on CPU gives bit-identical weights and tokenizer; only
the timings in ``training_log.jsonl`` differ. torch is imported inside functions, so importing
this module stays cheap.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmlab import data, settings, world
from llmlab.events import Reporter, bar_updates, emit
from llmlab.noise import no_progress_bars
from llmlab.store import Artifact, StepRecord, Store

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Each turn is "<|role|>\ncontent<|end|>\n"; generation stops at <|end|>, which is the eos token.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class Preset:
    """Model shape and training defaults of one size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    context: int  # max_position_embeddings
    seq_len: int  # training block length
    batch: int
    steps: int
    lr: float


PRESETS: dict[str, Preset] = {
    "micro": Preset(256, 1, 4, 2, 768, 512, 256, 64, 8, 16, 3e-3),
    "small": Preset(256, 4, 4, 2, 768, 2048, 512, 256, 8, 500, 2e-3),
    "large": Preset(512, 8, 8, 4, 1536, 4096, 1024, 512, 16, 6000, 1e-3),
}


class BuildDemoConfig(BaseModel):
    """Options of the Build station (a recipe's ``build`` step)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("demo", description="Artifact name in the store.")
    size: Literal["micro", "small", "large"] = Field(
        "small", description="micro: seconds, for tests; small: the CPU demo (~4 min on 2 cores); "
        "large: wider and deeper, for a GPU or a long CPU run.")
    seed: int = Field(0, description="Seed for weights and data order (same seed, same model).")
    world_seed: int = Field(0, description="Seed of the synthetic world the model learns.")
    world_size: Literal["micro", "small", "large"] | None = Field(
        None, description="Size of the world; None means the same as `size`.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; None means the size's default.")
    batch_size: int | None = Field(
        None, ge=1, description="Sequences per step; None means the size's default.")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; None means the size's default.")
    warmup: float = Field(0.05, ge=0, lt=1, description="Fraction of steps with a linear warm-up.")
    grounded_share: float = Field(
        0.3, ge=0, lt=1, description="Share of training tokens from grounded reading examples "
        "(a context passage and a question, in the chat template).")
    tinystories_chars: int = Field(
        0, ge=0, description="Characters of TinyStories (from LLMLAB_DATA) to mix in; 0 means none.")
    eval_every: int = Field(50, ge=1, description="Steps between validation-loss measurements.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA (with bf16) when torch sees a GPU.")

    def preset(self) -> Preset:
        return PRESETS[self.size]


def build_demo(config: BuildDemoConfig, *, store: Store | None = None, progress: Reporter | None = None,
               overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Build the demo base model and write it to the store as a ``base`` artifact."""
    store = store or Store()
    with store.write(config.name, "base", overwrite=overwrite) as w:
        w.info = _build_into(w.path, config, progress)
        if step is not None:
            w.step = step
    return store.get(config.name)


def open_or_build(name: str = "demo", size: Literal["micro", "small", "large"] = "small",
                  store: Store | None = None, progress: Callable[..., Any] | None = None) -> Artifact:
    """The artifact ``name`` if the store holds it, else a freshly built demo model of ``size``.

    ``progress`` is a progress-bar factory such as marimo's ``mo.status.progress_bar``: called as
    ``progress(total=steps, title=...)`` (a context manager giving a bar) only when a build runs."""
    store = store or Store()
    if store.exists(name):
        return store.get(name)
    config = BuildDemoConfig(name=name, size=size)
    if progress is None:
        return build_demo(config, store=store)
    with progress(total=config.steps or config.preset().steps, title=f"Training {name}") as bar:
        return build_demo(config, store=store, progress=bar_updates(bar, task="train"))


def build_micro(out_dir: Path, seed: int = 0) -> Path:
    """A tiny trained Llama + tokenizer Hugging Face folder in a few seconds (for test fixtures)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _build_into(out_dir, BuildDemoConfig(name="micro", size="micro", seed=seed, world_seed=seed), None)
    return out_dir


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 pre-tokenizer) with special tokens and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD, *ROLE_TOKENS]
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False + the GPT-2 regex: llama.cpp's converter recognises it as "gpt-2".
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=list(ROLE_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def chat_text(tokenizer: PreTrainedTokenizerFast, messages: list[dict[str, str]], *,
              add_generation_prompt: bool = False) -> str:
    """The chat template applied to ``messages`` (a string starting with the bos token)."""
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


# ----- the build itself -----

def _build_into(out: Path, config: BuildDemoConfig, progress: Reporter | None) -> dict[str, Any]:
    """Generate the world, train tokenizer and model, save everything under ``out``; return info."""
    import torch

    no_progress_bars()  # our own progress events say what is happening
    p = config.preset()
    started = time.perf_counter()
    torch.set_num_threads(settings.threads())
    the_world = world.generate(config.world_seed, config.world_size or config.size)
    facts, texts = the_world.stats()["facts"], len(the_world.texts)
    emit(progress, "log", message=f"world: {facts} facts, {texts} texts")
    stories = _tinystories(config.tinystories_chars)
    tokenizer = build_tokenizer(_tokenizer_corpus(the_world) + stories, p.vocab)
    tokenizer.model_max_length = p.context
    model, device = new_model(config, tokenizer)
    train_docs, grounded_docs = _encode_corpus(tokenizer, the_world, stories)
    val_blocks = _val_blocks(tokenizer, the_world.eval_text, p.seq_len)
    log = _train(model, device, config, train_docs, grounded_docs, val_blocks, progress)

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    the_world.save(out / "world")
    # Only deterministic fields go into the hashed file, so a rebuild has the same content hash;
    # speeds and times go to the manifest's info.
    with open(out / "training_log.jsonl", "w") as f:
        f.writelines(json.dumps({k: row[k] for k in ("step", "loss", "val_loss")}) + "\n" for row in log)
    return {
        "architecture": "LlamaForCausalLM", "size": config.size,
        "n_params": sum(t.numel() for t in model.parameters()),
        "hidden_size": p.hidden, "layers": p.layers, "context_length": p.context,
        "vocab_size": len(tokenizer), "world_seed": config.world_seed,
        "world_size": the_world.size, "steps": log[-1]["step"], "train_loss": log[-1]["loss"],
        "val_loss": log[-1]["val_loss"], "device": str(device),
        "train_tok_s": round(sum(r["tok_s"] for r in log) / len(log), 1),
        "train_seconds": round(time.perf_counter() - started, 1), "threads": settings.threads(),
    }


def _tokenizer_corpus(w: world.World) -> list[str]:
    """World texts, grounded examples and the questions the Tune station will ask."""
    questions = [q["question"] for q in w.split("tune")]
    grounded = [f"{g['context']} {g['question']} {g['answer']}" for g in w.grounded]
    return w.texts + w.stories + questions + grounded


def _tinystories(chars: int) -> list[str]:
    """Paragraphs from the start of TinyStories (public data) adding up to about ``chars``."""
    out: list[str] = []
    if chars == 0:
        return out
    for paragraph in data.load_texts(data.public_path("tinystories")):
        if sum(map(len, out)) >= chars:
            break
        out.append(paragraph)
    return out


def _encode_corpus(tokenizer: Any, w: world.World,
                   stories: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each plain text (bos ... eos) and of each grounded chat example."""
    eos = tokenizer.eos_token_id
    plain = [tokenizer(t)["input_ids"] + [eos] for t in w.texts + w.stories + stories]
    grounded = []
    for g in w.grounded:
        msgs = world.chat_messages(g["question"], g["answer"], context=g["context"])
        grounded.append(tokenizer(chat_text(tokenizer, msgs), add_special_tokens=False)["input_ids"])
    return plain, grounded


def _val_blocks(tokenizer: Any, text: str, seq_len: int) -> list[list[int]]:
    """The held-out text (stories never trained on), packed like the training data."""
    ids: list[int] = []
    for line in filter(str.strip, text.splitlines()):
        ids += tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
    return [b for b in blocks if len(b) > 1]


def new_model(config: BuildDemoConfig, tokenizer: Any) -> tuple[Any, Any]:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    p = config.preset()
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=p.hidden, intermediate_size=p.ffn,
        num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
        max_position_embeddings=p.context, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return model.to(device), device


def _batches(config: BuildDemoConfig, plain: list[list[int]],
             grounded: list[list[int]]) -> Iterator[list[list[int]]]:
    """Endless packed batches: each pass shuffles the texts plus a rotating slice of grounded
    examples (sized to ``grounded_share`` of the tokens) and cuts the stream into blocks."""
    p = config.preset()
    rng = random.Random(config.seed)
    plain_tokens = sum(map(len, plain))
    mean_grounded = sum(map(len, grounded)) / max(1, len(grounded))
    per_pass = 0
    if grounded and config.grounded_share > 0:
        share = config.grounded_share
        per_pass = max(1, round(plain_tokens * share / (1 - share) / mean_grounded))
    batch = config.batch_size or p.batch
    buffer: list[int] = []
    cursor = 0
    while True:
        docs = list(plain)
        for _ in range(per_pass):
            docs.append(grounded[cursor % len(grounded)])
            cursor += 1
        rng.shuffle(docs)
        buffer.extend(i for d in docs for i in d)
        while len(buffer) >= batch * p.seq_len:
            rows = [buffer[k * p.seq_len:(k + 1) * p.seq_len] for k in range(batch)]
            del buffer[:batch * p.seq_len]
            yield rows


def _train(model: Any, device: Any, config: BuildDemoConfig, plain: list[list[int]],
           grounded: list[list[int]], val_blocks: list[list[int]],
           progress: Reporter | None) -> list[dict[str, Any]]:
    """AdamW with warm-up and cosine decay over packed blocks; returns the training log."""
    import torch

    p = config.preset()
    steps = config.steps or p.steps
    peak = config.learning_rate or p.lr
    warm = max(1, int(steps * config.warmup))
    opt = torch.optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.95), weight_decay=0.01,
                            foreach=False)

    def lr_at(s: int) -> float:  # linear warm-up, then cosine down to 10% of the peak
        if s < warm:
            return peak * (s + 1) / warm
        return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    log: list[dict[str, Any]] = []
    started = time.perf_counter()
    window_loss, window_tokens, window_start = 0.0, 0, started
    report_every = max(1, min(config.eval_every, steps // 20 or 1))
    model.train()
    for s, rows in enumerate(_batches(config, plain, grounded)):
        if s == steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(s)
        ids = torch.tensor(rows, device=device)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window_loss += loss.item()
        window_tokens += ids.numel()
        done = s + 1
        if done % report_every == 0 or done == steps:
            now = time.perf_counter()
            n = done - (log[-1]["step"] if log else 0)
            row = {"step": done, "loss": round(window_loss / n, 4),
                   "tok_s": round(window_tokens / max(now - window_start, 1e-9), 1),
                   "elapsed": round(now - started, 2)}
            evaluate = done % config.eval_every == 0 or done == steps
            row["val_loss"] = round(_val_loss(model, device, val_blocks, autocast), 4) if evaluate else None
            log.append(row)
            emit(progress, "progress", task="train", done=done, total=steps)
            emit(progress, "metric", task="train", **row)
            window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    model.eval()
    return log


def _val_loss(model: Any, device: Any, blocks: list[list[int]], autocast: Any) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast:
        for b in blocks:
            ids = torch.tensor([b], device=device)
            total += model(input_ids=ids, labels=ids).loss.item() * (len(b) - 1)
            count += len(b) - 1
    model.train()
    return total / max(1, count)


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()
