"""The Tune station: LoRA, DoRA, QLoRA, full fine-tuning, DPO and ORPO on a model in the store.

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

Supervised methods run llmlab's own loop over a peft (or plain transformers) model: batches are
grouped by length so dynamic padding wastes little, and a checkpoint is written every
``checkpoint_every`` steps (and when the run is interrupted) under
``<store>/.cache/tune/<name>/``, so ``resume`` continues a crashed or cancelled run. DPO and ORPO
run trl's trainers on ``{prompt, chosen, rejected}`` pairs.

QLoRA (bitsandbytes) and the unsloth backend need an NVIDIA GPU; ``select_backend`` says what
runs instead and why. (``llmlab.runtime.adapters.merged_folder`` is how the runtime loads an adapter
artifact to score or chat with it.) torch, transformers, peft and trl are
imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmlab import settings
from llmlab.errors import ConfigError, NotFoundError, ResourceError, StoreError
from llmlab.events import Reporter, emit
from llmlab.noise import quiet_peft
from llmlab.runtime.adapters import merge_adapter
from llmlab.store import MODEL_KINDS, Artifact, Parent, StepRecord, Store

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmlab.world import World

log = logging.getLogger(__name__)

Method = Literal["lora", "dora", "full", "qlora", "dpo", "orpo"]
ADAPTER_METHODS = ("lora", "dora", "qlora", "dpo", "orpo")
PREFERENCE_METHODS = ("dpo", "orpo")
# Artifact kinds that are complete Hugging Face model folders (what can be tuned).
QLORA_EXTRA = "pip install 'llmlab[qlora]'"
UNSLOTH_EXTRA = "pip install 'llmlab[unsloth]'"
# unsloth takes explicit module names; these are every linear layer of Llama-style blocks.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT = "checkpoint.pt"
MASK_OPEN, MASK_CLOSE = "«", "»"  # how ``preview`` marks the tokens that carry no loss


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
    eval_every: int = Field(50, ge=1, description="Steps between validation-loss measurements.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints (for resume).")
    resume: bool = Field(True, description="Continue from the last checkpoint of an interrupted run with the "
                         "same settings.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA (bf16) when torch sees a GPU.")

    @field_validator("learning_rate", check_fields=False)
    @classmethod
    def _lr(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"learning_rate must be positive, got {v}; try 2e-4 to 2e-3 for LoRA, "
                             "or leave it out for the method's default")
        return v

    def lr(self) -> float:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: every setting but resume and the evaluation options."""
        import hashlib

        d = self.model_dump(mode="json", exclude={"resume", "evaluate", "qa_limit"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class TuneConfig(LoopOptions):
    """Options of the Tune station (``llmlab tune`` and a recipe's ``tune`` step)."""

    name: str = Field(..., description="Name of the artifact to write (an adapter, or a full model for 'full').")
    model: str = Field(..., description="Model to tune: an artifact in the store or a local Hugging Face folder.")
    data: str = Field("world:tune", description="Training data: 'world:tune' (the demo world's tuning questions, "
                      "from the model's world), a local .jsonl/.json/.txt/.parquet file or folder, or a Hugging "
                      "Face data set name. Records: messages, instruction/input/output, prompt/completion, "
                      "question/answer, text; for dpo/orpo: prompt/chosen/rejected (or 'world:tune' again: "
                      "pairs built from the world, a wrong answer of the same relation as 'rejected').")
    data_limit: int | None = Field(None, ge=1, description="Most records read from data (None: all).")
    anchor: str | None = Field(
        None, description="Data on which the tuned model must keep the base model's predictions (the same "
        "forms as data, e.g. 'world:tune:people' for a places specialist): a KL term to the base (the adapter "
        "switched off) on its answer tokens is added to the loss. It stops an adapter from changing what it "
        "was not tuned for, so adapters of one base merge with less interference. LoRA-type methods only.")
    anchor_weight: float = Field(1.0, gt=0, description="Strength of the anchor's KL term against the training loss.")
    method: Method = Field("lora", description="lora, dora (weight-decomposed LoRA), full (every weight), "
                           "qlora (4-bit base, needs an NVIDIA GPU), dpo or orpo (preference pairs, LoRA).")
    backend: Literal["auto", "peft", "unsloth"] = Field(
        "auto", description="auto: unsloth when it is installed and a CUDA GPU is present, else peft.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Layers that get adapters: 'all-linear', a list of module names "
        "(q_proj, v_proj, ...; a comma-separated string works too) or a regex.")
    # rank 32 x 8 epochs: on the small demo, held-out accuracy 3% -> 84% in ~45 s of training on
    # one thread with little forgetting (world-text perplexity 2.58 -> 2.66); rank 64 x 12 epochs
    # reaches 87% but doubles the time and the perplexity.
    rank: int = Field(32, description="LoRA rank (size of the low-rank update).")
    alpha: float | None = Field(None, description="LoRA scaling alpha; None means 2 x rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    learning_rate: float | None = Field(
        None, description="Peak learning rate; None means 2e-3 for adapters, 1e-3 for full tuning, 5e-5 for dpo/orpo.")
    answer_only: bool = Field(True, description="Loss on the answer tokens only (the prompt is masked).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory (slower).")
    beta: float = Field(0.1, gt=0, description="dpo/orpo: strength of the preference term.")
    evaluate: bool = Field(True, description="After training, score base and tuned on the world's held-out "
                           "questions and text (when the model has a world).")
    qa_limit: int = Field(200, ge=1, description="Most held-out questions asked when evaluating.")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str) -> list[str] | str:
        # peft reads a string as a regex; "q_proj,v_proj" (a CLI flag) means a list of names.
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) and "," in v else v

    @model_validator(mode="after")
    def _anchor_needs_adapter(self) -> TuneConfig:
        if self.anchor and self.method not in ("lora", "dora", "qlora"):
            raise ValueError(f"anchor needs a LoRA-type method (lora, dora, qlora), not '{self.method}': the base's "
                             "predictions come from switching the adapter off")
        return self

    @field_validator("rank")
    @classmethod
    def _rank(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"rank must be at least 1, got {v}; typical LoRA ranks are 8 to 64")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"alpha must be positive, got {v}; 2 x rank is a good start")
        return v

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return {"full": 1e-3, "dpo": 5e-5, "orpo": 5e-5}.get(self.method, 2e-3)

    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


# ----- backend selection -----
@dataclass
class Plan:
    """What will actually run: backend and method, and why when it differs from what was asked."""

    backend: Literal["peft", "unsloth"]
    method: str
    device: str
    messages: list[str] = field(default_factory=list)


def select_backend(config: TuneConfig) -> Plan:
    """Choose the backend and device; fall back (with a message) or refuse (with the extra to install)."""
    import torch

    cuda = torch.cuda.is_available() and config.device != "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA GPU.",
                          "Use device: auto (or cpu) on this machine.")
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    method, messages = config.method, []
    if method == "qlora" and not (cuda and has_bnb):
        why = "no CUDA GPU is visible" if not cuda else "bitsandbytes is not installed"
        messages.append(f"QLoRA needs an NVIDIA GPU with CUDA and the qlora extra ({QLORA_EXTRA}), but {why}: "
                        "training plain LoRA with peft instead.")
        method = "lora"
    unsloth_ok = cuda and has_unsloth and method in ("lora", "qlora")
    if config.backend == "unsloth" and not unsloth_ok:
        if not (cuda and has_unsloth):
            raise ConfigError("The unsloth backend needs an NVIDIA GPU with CUDA and the unsloth extra "
                              f"({UNSLOTH_EXTRA}); " + ("no CUDA GPU is visible." if not cuda else
                                                        "unsloth is not installed."),
                              "Use backend: auto or peft to train with peft on this machine.")
        raise ConfigError(f"The unsloth backend runs lora and qlora, not {method}.",
                          "Use backend: auto or peft for this method.")
    backend: Literal["peft", "unsloth"] = "unsloth" if unsloth_ok and config.backend != "peft" else "peft"
    return Plan(backend, method, "cuda" if cuda else "cpu", messages)


# ----- data -----
@dataclass
class Example:
    """One tokenized training sequence; ``labels`` is -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class Prepared:
    train: list[Example]
    val: list[Example]
    truncated: int
    dropped: int  # examples left with no answer token after truncation


def resolve_model(model: str, store: Store) -> tuple[Path, Artifact | None]:
    """The folder of the model to tune and its artifact (None for a local folder)."""
    looks_like_path = "/" in model or model.startswith(("~", "."))
    if not looks_like_path and store.exists(model):
        art = store.get(model)
        if art.kind not in MODEL_KINDS:
            raise ConfigError(f"'{model}' is a {art.kind} artifact; the Tune station tunes full models "
                              f"({', '.join(MODEL_KINDS)}).",
                              "Merge an adapter into its base first (the Merge station), then tune the result.")
        return art.path, art
    path = Path(model).expanduser()
    if not path.is_dir():
        raise NotFoundError(f"No artifact named '{model}' in the store at {store.root}, and no folder of that name.",
                            "List the artifacts with `llmlab models ls`, or give a Hugging Face model folder.")
    from llmlab.formats.hf import check_hf_folder

    check_hf_folder(path)
    return path, None


def _world(store: Store, path: Path, artifact: Artifact | None) -> World | None:
    """The demo world the model was trained on (beside it or an ancestor), if any."""
    from llmlab.world import World, find_world

    if artifact is not None:
        return find_world(store, artifact)
    return World.load(path / "world") if (path / "world" / "meta.json").is_file() else None


def load_data(config: TuneConfig, store: Store) -> tuple[list[dict[str, Any]], bool]:
    """The training records, and whether they are demo-world questions (asked the world's way)."""
    records, is_world = _records(config.data, config, store)
    if is_world and config.method in PREFERENCE_METHODS:
        records, is_world = world_pairs(records, config.seed), False
    return (records[: config.data_limit] if config.data_limit else records), is_world


def _records(spec: str, config: TuneConfig, store: Store) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``spec`` (``data`` or ``anchor``), and whether they are demo-world questions."""
    from llmlab import data as datamod

    if spec.startswith("world:"):
        split = spec.partition(":")[2]  # "tune", or "tune:people" for one skill (world.RELATION_GROUP)
        if split.partition(":")[0] not in ("tune", "heldout", "rag"):
            raise ConfigError(f"Unknown world split '{split}'.", "Use world:tune (or world:heldout, world:rag; "
                              "world:tune:people keeps one relation group).")
        the_world = _world(store, *resolve_model(config.model, store))
        if the_world is None:
            raise NotFoundError(f"'{config.model}' has no demo world (no world/ folder on it or its ancestors).",
                                f"Give your own data file ({spec} needs the world).")
        records, is_world = the_world.split(split), True
    else:
        records, is_world = datamod.load_records(spec), False
    if not records:
        raise ConfigError(f"The data '{spec}' holds no records: there is nothing to train on.",
                          "Check the file or split, or point data at another source.")
    return records, is_world


_PAIRS = (("instruction", "output"), ("prompt", "completion"), ("question", "answer"))
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def record_to_sft(i: int, rec: dict[str, Any], is_world: bool) -> list[dict[str, str]] | str:
    """Chat messages (ending with the answer) or plain text for record ``i`` (counted from 1);
    errors name the record and the field."""
    where = f"Record {i}"
    if is_world:
        from llmlab import world

        return world.chat_messages(str(rec["question"]), str(rec["answer"]))
    for key in ("messages", "conversations"):
        if key in rec:
            turns = rec[key]
            if not isinstance(turns, list) or not turns:
                raise ConfigError(f"{where}: field '{key}' must be a non-empty list of turns.")
            msgs = []
            for j, t in enumerate(turns, 1):
                if not isinstance(t, dict):
                    raise ConfigError(f"{where}: turn {j} of '{key}' is not an object.")
                role = t.get("role", _SHAREGPT_ROLES.get(str(t.get("from")), t.get("from")))
                content = t.get("content", t.get("value"))
                if role not in ("system", "user", "assistant") or content is None:
                    raise ConfigError(f"{where}: turn {j} of '{key}' needs 'role' (system, user, assistant) "
                                      f"and 'content' (or ShareGPT 'from'/'value'); it has {sorted(t)}.")
                msgs.append({"role": role, "content": str(content)})
            if msgs[-1]["role"] != "assistant":
                raise ConfigError(f"{where}: the last turn of '{key}' must be the assistant's answer to train on.")
            return msgs
    for ask, reply in _PAIRS:
        if ask in rec or reply in rec:
            missing = reply if ask in rec else ask
            if missing not in rec:
                raise ConfigError(f"{where} has '{ask if ask in rec else reply}' but no '{missing}' field.",
                                  f"Records of this format need both '{ask}' and '{reply}'.")
            user = str(rec[ask]) + (f"\n\n{rec['input']}" if rec.get("input") else "")
            return [{"role": "user", "content": user}, {"role": "assistant", "content": str(rec[reply])}]
    if isinstance(rec.get("text"), str):
        return rec["text"]
    raise ConfigError(f"{where} has fields {sorted(rec) or 'none'}, none of which holds training data.",
                      "Use messages, conversations, instruction/output, prompt/completion, question/answer "
                      "or text.")


def world_pairs(records: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Preference pairs from world questions: the question (as the world asks it) with the right
    answer as ``chosen`` and, as ``rejected``, the answer of another entity for the same relation
    (a plausible wrong answer; seeded). Questions whose relation has a single answer are left out."""
    from llmlab import world

    answers: dict[str, set[str]] = {}
    for r in records:
        answers.setdefault(str(r["relation"]), set()).add(str(r["answer"]))
    rng = random.Random(seed)
    out = []
    for r in records:
        wrong = sorted(answers[str(r["relation"])] - {str(r["answer"])})
        if wrong:
            out.append({"prompt": world.chat_messages(str(r["question"])), "chosen": str(r["answer"]),
                        "rejected": rng.choice(wrong)})
    return out


def record_to_pair(i: int, rec: dict[str, Any]) -> dict[str, Any]:
    """A preference record in trl's conversational format; errors name the record and field."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in rec:
            raise ConfigError(f"Record {i} has no '{key}' field.",
                              "dpo and orpo train on preference pairs {prompt, chosen, rejected}.")
    prompt = rec["prompt"]
    prompt = [{"role": "user", "content": str(prompt)}] if isinstance(prompt, str) else prompt

    def reply(v: Any) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": str(v)}] if isinstance(v, str) else v

    return {"prompt": prompt, "chosen": reply(rec["chosen"]), "rejected": reply(rec["rejected"])}


def _segments(tok: PreTrainedTokenizerBase, item: list[dict[str, str]] | str,
              answer_only: bool) -> list[tuple[str, bool]]:
    """The text of one example cut into (text, trained) pieces: the prompt, then the answer."""
    if isinstance(item, str):
        return [(item, True)]
    if not tok.chat_template:
        raise ConfigError("The model has no chat template, so chat records cannot be formatted.",
                          "Give plain text records ({text: ...}) or tune a model whose tokenizer has a chat template.")
    prompt = tok.apply_chat_template(item[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(item, tokenize=False)
    if not full.startswith(prompt):
        raise ConfigError("The model's chat template does not put the answer right after the prompt, "
                          "so the prompt cannot be masked.", "Set answer_only: false to train on every token.")
    return [(prompt, not answer_only), (full[len(prompt):], True)]


def tokenize(tok: PreTrainedTokenizerBase, item: list[dict[str, str]] | str, answer_only: bool) -> Example:
    """Token ids and labels of one example (each segment tokenized on its own, so the boundary
    between prompt and answer is exact)."""
    ids: list[int] = []
    labels: list[int] = []
    if isinstance(item, str):  # plain text: bos ... eos, loss everywhere
        ids = list(tok(item, add_special_tokens=True)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        return Example(ids, list(ids))
    for text, trained in _segments(tok, item, answer_only):
        part = list(tok(text, add_special_tokens=False)["input_ids"])
        ids += part
        labels += part if trained else [-100] * len(part)
    return Example(ids, labels)


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, round(n * fraction)) if fraction > 0 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def prepare(config: TuneConfig, tok: PreTrainedTokenizerBase, records: list[dict[str, Any]], is_world: bool,
            progress: Reporter | None = None) -> Prepared:
    """Tokenize, truncate to ``max_len`` (with a warning and a count) and split train/validation."""
    limit = min(config.max_len, getattr(tok, "model_max_length", config.max_len) or config.max_len)
    examples, truncated, dropped = [], 0, 0
    for i, rec in enumerate(records, 1):
        ex = tokenize(tok, record_to_sft(i, rec, is_world), config.answer_only)
        if len(ex.input_ids) > limit:
            truncated += 1
            ex = Example(ex.input_ids[:limit], ex.labels[:limit])
        if all(x == -100 for x in ex.labels[1:]):
            dropped += 1
            continue
        examples.append(ex)
    if truncated:
        msg = (f"{truncated} of {len(records)} sequences were longer than {limit} tokens and were truncated"
               + (f"; {dropped} lost their whole answer and were left out" if dropped else "") + ".")
        log.warning(msg)
        emit(progress, "log", level="warning", message=msg)
    if not examples:
        raise ConfigError(f"No record of '{config.data}' keeps an answer token within max_len {limit}.",
                          "Raise max_len or shorten the prompts.")
    train_idx, val_idx = _split(len(examples), config.val_fraction, config.seed)
    return Prepared([examples[i] for i in train_idx], [examples[i] for i in val_idx], truncated, dropped)


def prepare_anchor(config: TuneConfig, tok: PreTrainedTokenizerBase, store: Store) -> list[Example]:
    """The anchor's records tokenized like training examples (their labels mark where the KL is taken)."""
    assert config.anchor
    records, is_world = _records(config.anchor, config, store)
    limit = min(config.max_len, getattr(tok, "model_max_length", config.max_len) or config.max_len)
    examples = []
    for i, rec in enumerate(records, 1):
        ex = tokenize(tok, record_to_sft(i, rec, is_world), config.answer_only)
        ex = Example(ex.input_ids[:limit], ex.labels[:limit])
        if any(x != -100 for x in ex.labels[1:]):
            examples.append(ex)
    if not examples:
        raise ConfigError(f"No record of the anchor '{config.anchor}' keeps an answer token within max_len {limit}.",
                          "Raise max_len or give shorter anchor records.")
    return examples


def preview(config: TuneConfig, n: int = 3, *, store: Store | None = None) -> list[dict[str, Any]]:
    """What the model will see for the first ``n`` records: the formatted text, its pieces
    (``segments``: [{text, trained}]), and ``marked``, the text with the masked (no-loss) part
    between « and »."""
    from transformers import AutoTokenizer

    store = store or Store()
    path, _ = resolve_model(config.model, store)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    records, is_world = load_data(config, store)
    out = []
    if config.method in PREFERENCE_METHODS:
        for i, rec in enumerate(records[:n], 1):
            pair = record_to_pair(i, rec)
            prompt = tok.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
            out.append({"prompt": prompt, "chosen": pair["chosen"][-1]["content"],
                        "rejected": pair["rejected"][-1]["content"]})
        return out
    for i, rec in enumerate(records[:n], 1):
        segs = _segments(tok, record_to_sft(i, rec, is_world), config.answer_only)
        ex = tokenize(tok, record_to_sft(i, rec, is_world), config.answer_only)
        out.append({
            "text": "".join(t for t, _ in segs),
            "segments": [{"text": t, "trained": tr} for t, tr in segs],
            "marked": "".join(t if tr else f"{MASK_OPEN}{t}{MASK_CLOSE}" for t, tr in segs),
            "tokens": len(ex.input_ids), "trained_tokens": sum(x != -100 for x in ex.labels),
            "truncated": len(ex.input_ids) > config.max_len,
        })
    return out


# ----- batches -----
def plan_batches(n: int, lengths: list[int], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Micro-batches of example indices for ``epochs`` passes, grouped by length: each pass shuffles,
    sorts chunks of 32 batches by length and shuffles the resulting batches, so dynamic padding
    pads little while the order stays random. Deterministic in ``seed`` (resume relies on it)."""
    out: list[list[int]] = []
    chunk = batch_size * 32
    for epoch in range(epochs):
        rng = random.Random(f"{seed}-{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        batches = []
        for c in range(0, n, chunk):
            part = sorted(order[c:c + chunk], key=lambda i: lengths[i])
            batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        out += batches
    return out


def _collate(examples: list[Example], pad_id: int, device: Any) -> tuple[Any, Any, Any, int]:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [-100] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    real = sum(len(e.input_ids) for e in examples)
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return t(ids), t(mask), t(labels), real


# ----- the model -----
def _load_model(base: Path, config: TuneConfig, plan: Plan) -> tuple[Any, Any]:
    """The model to train (peft-wrapped unless full tuning) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    targets = config.target_modules
    if plan.backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(str(base), max_seq_length=config.max_len,
                                                       load_in_4bit=plan.method == "qlora", dtype=None)
        model = FastLanguageModel.get_peft_model(
            model, r=config.rank, lora_alpha=config.lora_alpha(), lora_dropout=config.dropout,
            target_modules=list(LLAMA_LINEAR) if targets == "all-linear" else targets,
            use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
            random_state=config.seed)
        return model, tok
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "local_files_only": True}
    if plan.device == "cuda":
        kwargs["dtype"] = torch.bfloat16 if plan.method == "qlora" else torch.float32
    if plan.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if plan.method != "qlora":
        model = model.to(plan.device)
    if plan.method == "full":
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model, tok
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quiet_peft()  # peft imports GPTQModel when wrapping layers: keep its banner out of our output
    if plan.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen embeddings: let checkpointed blocks see a grad path
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha(), lora_dropout=config.dropout,
                      target_modules=targets, use_dora=plan.method == "dora", task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tok


def _lr_at(config: TuneConfig, s: int, steps: int) -> float:
    peak, warm = config.lr(), int(steps * config.warmup)
    if s < warm:
        return peak * (s + 1) / warm
    frac = (s - warm) / max(1, steps - warm)
    if config.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * frac))
    if config.schedule == "linear":
        return peak * (1 - frac)
    return peak


def _val_loss(model: Any, examples: list[Example], pad_id: int, device: str, batch: int) -> float | None:
    """Mean loss per answer token over ``examples`` (None without validation data)."""
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(examples), batch):
            ids, mask, labels, _ = _collate(examples[b:b + batch], pad_id, device)
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
            count += n
    model.train()
    return total / max(1, count)


def _trainable(model: Any) -> dict[str, Any]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


class _Checkpoints:
    """llmlab's own resume files under ``<store>/.cache/tune/<name>/`` (trusted: written here)."""

    def __init__(self, store: Store, config: TuneConfig):
        self.dir = store.root / ".cache" / "tune" / config.name
        self.fingerprint = config.fingerprint()

    def load(self) -> dict[str, Any] | None:
        import torch

        path = self.dir / CHECKPOINT
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state if state.get("fingerprint") == self.fingerprint else None

    def save(self, state: dict[str, Any]) -> None:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{CHECKPOINT}.tmp"
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        tmp.replace(self.dir / CHECKPOINT)  # atomic: a kill mid-save keeps the previous checkpoint

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ----- processes (torchrun) -----
@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed(device: str) -> Dist:
    """Join the process group when torchrun started this process (WORLD_SIZE > 1): gloo on CPU,
    nccl on CUDA (one GPU per LOCAL_RANK). Without torchrun, rank 0 of 1 and nothing is joined."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def _all_sum(value: float, dist: Dist) -> float:
    if dist.world == 1:
        return value
    import torch
    import torch.distributed as td

    # gloo reduces CPU tensors, nccl only GPU ones
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if td.get_backend() == "nccl" else "cpu")
    td.all_reduce(t)
    return float(t.item())


# A loss hook: (model, input_ids, attention_mask, labels, n_items) -> the summed per-token loss
# of this micro-batch divided by n_items, the count of loss tokens in the whole optimizer step.
LossFn = Callable[[Any, Any, Any, Any, int], Any]


def sft_loss(model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
    """Next-token cross-entropy on the labelled tokens (the default loss of ``train_loop``)."""
    return model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items).loss


def _loss_tokens(e: Example) -> int:
    return sum(x != -100 for x in e.labels[1:])


class AnchoredLoss:
    """The training loss plus ``weight`` x KL(base || tuned) on the answer tokens of a batch of anchor
    examples (the next one in a fixed shuffled order at each call). The base is the same model with
    its adapter switched off, so it costs one more forward pass and no second copy of the weights."""

    def __init__(self, anchor: list[Example], weight: float, batch_size: int, grad_accum: int, pad_id: int,
                 device: str, seed: int):
        self.anchor, self.weight, self.batch_size, self.grad_accum = anchor, weight, batch_size, grad_accum
        self.pad_id, self.device = pad_id, device
        self.order = list(range(len(anchor)))
        random.Random(f"anchor-{seed}").shuffle(self.order)
        self.calls = 0
        self.kl: list[float] = []  # per call, for the artifact's info

    def __call__(self, model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
        import torch
        import torch.nn.functional as F

        first = self.calls * self.batch_size
        self.calls += 1
        batch = [self.anchor[self.order[(first + j) % len(self.order)]]
                 for j in range(min(self.batch_size, len(self.order)))]
        a_ids, a_mask, a_labels, _ = _collate(batch, self.pad_id, self.device)
        keep = a_labels[:, 1:] != -100
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=a_ids, attention_mask=a_mask).logits[:, :-1][keep].float()
        tuned = model(input_ids=a_ids, attention_mask=a_mask).logits[:, :-1][keep].float()
        kl = F.kl_div(F.log_softmax(tuned, -1), F.log_softmax(base, -1), log_target=True,
                      reduction="sum") / keep.sum()
        self.kl.append(float(kl.detach()))
        return sft_loss(model, ids, mask, labels, n_items) + self.weight * kl / self.grad_accum

    def summary(self) -> dict[str, Any]:
        tail = self.kl[-max(1, len(self.kl) // 10):]  # the last tenth of training (of this run, if resumed)
        return {"records": len(self.anchor), "weight": self.weight,
                "kl_end": round(sum(tail) / len(tail), 5) if tail else None}


def train_loop(model: Any, tok: Any, data: Prepared, config: LoopOptions, device: str, ckpt: _Checkpoints,
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
    params = list(_trainable(model).values())
    opt = torch.optim.AdamW(params, lr=config.lr(), betas=(0.9, 0.95), weight_decay=0.0,
                            foreach=device == "cuda")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else torch.autocast("cpu", enabled=False))
    bs = config.batch_size
    train_log: list[dict[str, Any]] = []
    start, elapsed_before = 0, 0.0
    state = ckpt.load() if config.resume else None
    if state is None:
        val_before = _val_loss(model, data.val, pad_id, device, bs) if dist.main else None
    else:
        named = _trainable(model)
        with torch.no_grad():
            for k, v in state["weights"].items():
                named[k].copy_(v)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, train_log, elapsed_before = state["step"], state["log"], state["elapsed"]
        val_before = state["val_before"]
        if isinstance(loss_fn, AnchoredLoss):  # the anchor batches follow on where they stopped
            loss_fn.calls = start * config.grad_accum
        emit(progress, "log", message=f"resumed from the checkpoint at step {start} of {steps}")
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Built after a resume's weights are loaded: DDP starts every rank from rank 0's copy.
        net = DistributedDataParallel(model)

    def snapshot(done: int) -> dict[str, Any]:
        return {"step": done, "weights": {k: p.detach().cpu() for k, p in _trainable(model).items()},
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
                group["lr"] = _lr_at(config, s, steps)
            step_loss = 0.0
            micro = batches[s * config.grad_accum:(s + 1) * config.grad_accum]
            n_items = max(1, sum(_loss_tokens(data.train[i]) for mb in micro for i in mb))
            for mb in micro:
                # Every rank runs a forward and backward (DDP's gradient all-reduce needs all of
                # them); a rank left without an example repeats one and weighs its loss by 0.
                shard = mb[dist.rank::dist.world]
                ids, mask, labels, real = _collate([data.train[i] for i in shard or mb[:1]], pad_id, device)
                with autocast:
                    # DDP averages gradients over ranks: scale by world to get the sum over all tokens.
                    loss = loss_fn(net, ids, mask, labels, n_items) * (dist.world if shard else 0.0)
                loss.backward()
                step_loss += float(loss.detach()) / dist.world
                if shard:
                    window_tokens += real
                    tokens += real
                    examples_seen += len(shard)
            step_loss = _all_sum(step_loss, dist)
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
                       "val_loss": _round(_val_loss(model, data.val, pad_id, device, bs))}
                eval_seconds += time.perf_counter() - now
                train_log.append(row)
                emit(progress, "metric", task=task, **row, lr=_lr_at(config, s, steps),
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
    run_tokens = _all_sum(tokens, dist)
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


def _train_preference(base: Path, records: list[dict[str, Any]], config: TuneConfig, plan: Plan,
                      ckpt: _Checkpoints, progress: Reporter | None) -> tuple[Any, Any, list[dict[str, Any]],
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
        bf16=plan.device == "cuda", gradient_checkpointing=config.gradient_checkpointing,
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


# ----- evaluation -----
def _evaluate(base: Path, tuned: Path, w: World | None, config: TuneConfig,
              progress: Reporter | None) -> dict[str, Any]:
    """Held-out world-question accuracy and world-text perplexity of base and tuned."""
    from llmlab.runtime import load
    from llmlab.scoring import accuracy, perplexity

    if w is None:
        return {}
    qa = w.split("heldout")[: config.qa_limit]
    out: dict[str, Any] = {}
    for suffix, folder in (("_before", base), ("", tuned)):
        emit(progress, "log", message=f"scoring the {'base' if suffix else 'tuned'} model on held-out questions")
        with load(folder) as m:
            acc = accuracy(m, qa, progress=progress)
            out["accuracy" + suffix] = acc["accuracy"]
            out["ppl" + suffix] = perplexity(m, [w.eval_text])["ppl"]
            if not suffix:
                out["accuracy_n"], out["accuracy_examples"] = acc["n"], acc["examples"]
    return out


# ----- the station -----
def tune(config: TuneConfig, *, store: Store | None = None, progress: Reporter | None = None,
         overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Train ``config.model`` on ``config.data`` with ``config.method`` and write the artifact.

    Under ``torchrun --nproc_per_node N -m llmlab tune ...`` every process trains its share of each
    batch (supervised methods); rank 0 writes the artifact and the others wait for it."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress events say what is happening
    store = store or Store()
    base, base_art = resolve_model(config.model, store)
    if store.exists(config.name) and not overwrite:
        raise StoreError(f"An artifact named '{config.name}' already exists.",
                         "Choose another name, or pass --force / overwrite=True.")
    plan = select_backend(config)
    dist = distributed(plan.device)
    if dist.world > 1 and plan.method in PREFERENCE_METHODS:
        raise ConfigError(f"{plan.method} runs through trl, not llmlab's own loop, so it does not run under "
                          "torchrun here.", "Start it as one process, or with `accelerate launch` and trl.")
    progress = progress if dist.main else None
    for m in plan.messages:
        log.warning(m)
        emit(progress, "log", level="warning", message=m)
    emit(progress, "log", message=f"tuning '{config.model}' with {plan.method} on {plan.backend} ({plan.device})")
    if plan.device == "cpu":
        torch.set_num_threads(settings.threads())
    records, is_world = load_data(config, store)
    ckpt = _Checkpoints(store, config)
    kind = "full" if plan.method == "full" else "adapter"
    info: dict[str, Any] = {"method": plan.method, "backend": plan.backend, "device": plan.device,
                            "threads": settings.threads(), "records": len(records)}
    try:
        if plan.method in PREFERENCE_METHODS:
            model, tok, train_log, facts = _train_preference(base, records, config, plan, ckpt, progress)
        else:
            model, tok = _load_model(base, config, plan)
            data = prepare(config, tok, records, is_world, progress)
            info.update(train_examples=len(data.train), val_examples=len(data.val), truncated=data.truncated,
                        dropped=data.dropped)
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
    info["trainable_params"] = sum(p.numel() for p in _trainable(model).values())
    info["total_params"] = sum(p.numel() for p in model.parameters())
    if not dist.main:
        return _wait_for_main(config.name, store)
    with store.write(config.name, kind, overwrite=overwrite) as w:
        if kind == "adapter":
            model.save_pretrained(w.path, safe_serialization=True)
            (w.path / "README.md").unlink(missing_ok=True)  # peft's model card: a template, not facts
            # Name the base as the store knows it, not by the folder it was read from.
            cfg_path = w.path / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = base_art.name if base_art else str(base)
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
        else:
            model.save_pretrained(w.path, safe_serialization=True)
        tok.save_pretrained(w.path)
        with open(w.path / "training_log.jsonl", "w") as f:
            f.writelines(json.dumps({k: r[k] for k in ("step", "loss", "val_loss")}) + "\n" for r in train_log)
        if base_art is not None:
            w.parents = [Parent(name=base_art.name, content_hash=base_art.content_hash, role="base")]
        else:
            info["base_path"] = str(base)
        w.info = info
        w.step = step
        w.metrics = {k: facts[k] for k in ("val_loss_before", "val_loss_after") if facts.get(k) is not None}
        if config.evaluate:
            del model  # free the training copy before two more models load
            tuned = w.path if kind == "full" else merge_adapter(base, w.path, ckpt.dir / "merged")
            w.metrics.update(_evaluate(base, tuned, _world(store, base, base_art), config, progress))
            if tuned != w.path:
                shutil.rmtree(tuned, ignore_errors=True)
    ckpt.clear()
    return _wait_for_main(config.name, store)


def _wait_for_main(name: str, store: Store) -> Artifact:
    """Under torchrun: every rank leaves once rank 0 has written the artifact (one barrier)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.barrier()
    return store.get(name)
