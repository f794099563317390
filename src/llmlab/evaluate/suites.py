"""Eval suites: what every variant is scored on, as one typed config over ``llmlab.scoring``.

```python
from llmlab.evaluate.suites import SuiteConfig, TaskSet, run_quality
suite = SuiteConfig(tasks=[TaskSet(source="heldout"), TaskSet(source="my_qa.jsonl", name="mine")])
with load("demo-q4_k_m") as m, load("demo-f16") as ref:
    run_quality(m, suite, texts=["..."], tasks={"heldout": [...]}, reference=ref)
```

A suite names held-out texts for perplexity, the reference for KL divergence and top-1 agreement
(``parent``: the artifact's own parent; an artifact name; or none), task sets (a demo-world
split or the user's JSONL) and the decoding settings. Every kind is asked the same questions
through its own chat template with the same system prompt and greedy decoding, so a number means
the same thing for a base model, an adapter or a GGUF quant. Task metrics: ``accuracy`` (the
answer starts with the gold words, as ``llmlab.scoring`` counts), ``exact_match`` and ``f1``
(SQuAD normalisation, ``llmlab.rag.metrics``), and for records with ``choices`` multiple-choice
accuracy by the log-likelihood of each choice. Speed (prompt/generation tokens/s, time to first
token) and peak memory are measured only on request and never cached (``llmlab.evaluate.leaderboard``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmlab import world
from llmlab.errors import ConfigError, NotFoundError
from llmlab.events import Reporter, emit
from llmlab.scoring import TEXTS_TOKENS

if TYPE_CHECKING:
    from llmlab.runtime import Model, SamplingParams
    from llmlab.store import Artifact, Store

PROMPT_FIELDS = ("question", "prompt")
ANSWER_FIELDS = ("answer", "answers")
# Quality metrics and which way is better (True: higher). Task metrics are "<task>.<metric>".
HIGHER_IS_BETTER = {"ppl": False, "kld_mean": False, "kld_p99": False, "top1": True, "accuracy": True,
                    "exact_match": True, "f1": True, "choice_accuracy": True}


class TaskSet(BaseModel):
    """One set of prompts with gold answers."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field("heldout", description="A demo-world split (tune, heldout, rag, or 'heldout:people') "
                        "or a JSONL file of {question|prompt, answer|answers, context?, choices?}.")
    name: str | None = Field(None, description="Column prefix on the leaderboard (default: the source's stem).")
    limit: int = Field(100, ge=1, description="Most records asked.")

    @property
    def label(self) -> str:
        return self.name or Path(self.source).stem.replace(":", "-")


class SuiteConfig(BaseModel):
    """What the leaderboard scores each variant on (hashed into the quality cache key)."""

    model_config = ConfigDict(extra="forbid")
    suite: str = Field("default", description="A name for this suite (shown on the leaderboard).")
    texts: str | None = Field("auto", description="Held-out texts for perplexity: 'auto' (the variant's demo world "
                              "eval text where it has one, else 'prose'), 'world', 'prose' (public-domain prose "
                              "shipped with llmlab), a data file, a public set name, or none.")
    texts_limit: int = Field(200, ge=1, description="Most records read from texts.")
    texts_tokens: int = Field(TEXTS_TOKENS, ge=2, description="Most tokens of the texts scored (perplexity, KL).")
    max_len: int | None = Field(None, ge=2, description="Perplexity window in tokens (default: min(context, 512)).")
    reference: str | None = Field("parent", description="KL divergence / top-1 reference: 'parent' (each variant's "
                                  "reference, source or base parent), an artifact name, or none.")
    tasks: list[TaskSet] = Field(default_factory=lambda: [TaskSet()],
                                 description="Task sets: a list of {source, name, limit}.")
    system: str | None = Field(world.SYSTEM_PROMPT, description="System prompt for every task question.")
    max_tokens: int = Field(8, ge=1, le=512, description="Greedy tokens generated per answer.")
    prompt_tokens: int = Field(128, ge=1, description="Prompt length of the speed test.")
    gen_tokens: int = Field(64, ge=2, description="Generated tokens of the speed test.")
    repeats: int = Field(2, ge=1, description="Speed runs (median) after one warm-up.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        if isinstance(v, str):  # a CLI flag: "heldout,my.jsonl"
            return [{"source": s.strip()} for s in v.split(",") if s.strip()]
        return v

    def quality_dict(self) -> dict[str, Any]:
        """What determines quality numbers (not speed settings): the suite hash's input."""
        speed_only = {"prompt_tokens", "gen_tokens", "repeats"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k in SuiteConfig.model_fields
                and k not in speed_only}

    def suite_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.quality_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def sampling(self) -> SamplingParams:
        from llmlab.runtime import SamplingParams

        return SamplingParams.greedy(max_tokens=self.max_tokens)


# ----- task files -----
def check_records(records: Sequence[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Normalise task records to {question, answers, context?, choices?}; a missing or empty field is
    named by record number (1-based, the line of a JSONL file) and field."""
    out = []
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, Mapping):
            raise ConfigError(f"{source}: record {i} is not a JSON object.",
                              "Each line is {\"question\": ..., \"answer\": ...}.")
        prompt = next((rec[f] for f in PROMPT_FIELDS if rec.get(f) not in (None, "")), None)
        if prompt is None:
            raise ConfigError(f"{source}: record {i} has no 'question' (or 'prompt') field.",
                              f"Its fields: {', '.join(sorted(rec)) or 'none'}.")
        gold = next((rec[f] for f in ANSWER_FIELDS if rec.get(f) not in (None, "", [])), None)
        if gold is None:
            raise ConfigError(f"{source}: record {i} has no 'answer' (or 'answers') field.",
                              f"Its fields: {', '.join(sorted(rec))}. Every record needs a gold answer.")
        answers = [str(a) for a in gold] if isinstance(gold, list) else [str(gold)]
        item: dict[str, Any] = {"question": str(prompt), "answers": answers}
        if rec.get("context"):
            item["context"] = str(rec["context"])
        if "choices" in rec:
            choices = rec["choices"]
            if not isinstance(choices, list) or len(choices) < 2:
                raise ConfigError(f"{source}: record {i} field 'choices' must be a list of at least 2 strings.")
            choices = [str(c) for c in choices]
            idx = _choice_index(answers[0], choices)
            if idx is None:
                raise ConfigError(f"{source}: record {i} field 'answer' ({answers[0]!r}) is not one of its choices "
                                  "nor an index into them.", f"Choices: {choices}.")
            item.update(choices=choices, gold_index=idx)
        out.append(item)
    if not out:
        raise ConfigError(f"{source}: no task records.", "Give at least one {question, answer} record.")
    return out


def _choice_index(answer: str, choices: list[str]) -> int | None:
    if answer in choices:
        return choices.index(answer)
    if answer.isdigit() and int(answer) < len(choices):
        return int(answer)
    return None


def resolve_task(task: TaskSet, *, store: Store, artifact: Artifact) -> list[dict[str, Any]]:
    """The checked records of one task set for ``artifact`` (world splits come from its world; none
    for a model without a world)."""
    from llmlab import data as datamod
    from llmlab.world import find_world

    head = task.source.partition(":")[0]
    if head in datamod.SPLITS and find_world(store, artifact) is None:
        return []
    if head not in datamod.SPLITS and task.source.endswith(".jsonl") and not Path(task.source).is_file():
        raise NotFoundError(f"Task file '{task.source}' does not exist.", "Give a JSONL file or a world split.")
    records = datamod.resolve_questions(task.source, store=store, artifact=artifact, limit=task.limit) or []
    return check_records(records, task.source)


def resolve_texts(suite: SuiteConfig, *, store: Store, artifact: Artifact) -> list[str] | None:
    from llmlab import data as datamod

    return datamod.resolve_texts(suite.texts, store=store, artifact=artifact, limit=suite.texts_limit)


def data_digest(texts: Sequence[str] | None, tasks: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One hash of the resolved texts and task records (the world's files may differ per variant)."""
    blob = json.dumps({"texts": list(texts or []), "tasks": tasks}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----- scoring -----
def messages_for(suite: SuiteConfig, rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """The same chat messages for every kind: suite system prompt, optional context, question."""
    user = world.context_prompt(rec["context"], rec["question"]) if rec.get("context") else rec["question"]
    return ([{"role": "system", "content": suite.system}] if suite.system else []) + [
        {"role": "user", "content": user}]


def choice_pick(model: Model, prompt: str, choices: Sequence[str]) -> int:
    """The choice with the highest total log-probability after ``prompt`` (template-rendered)."""
    head = model.tokenize(prompt, add_special=False)
    best, best_lp = 0, -np.inf
    for j, choice in enumerate(choices):
        tail = model.tokenize(choice, add_special=False)
        ids = (head + tail)[-model.n_ctx:]
        lp = model.logprobs(ids)
        n = len(tail)
        rows = np.arange(len(ids) - n - 1, len(ids) - 1)
        total = float(lp[rows, np.asarray(ids[-n:])].astype(np.float64).sum())
        if total > best_lp:
            best, best_lp = j, total
    return best


def run_task(model: Model, suite: SuiteConfig, records: Sequence[Mapping[str, Any]], *, label: str,
             show: int = 3, progress: Reporter | None = None) -> dict[str, Any]:
    """accuracy / exact_match / f1 (generated answers) and choice_accuracy (records with choices)."""
    from llmlab.rag.metrics import exact_match, f1
    from llmlab.scoring import answer_matches

    params = suite.sampling()
    sums = {"accuracy": 0.0, "exact_match": 0.0, "f1": 0.0}
    n_gen = n_choice = right_choice = 0
    examples = []
    for i, rec in enumerate(records):
        prompt = model.apply_chat_template(messages_for(suite, rec))
        if "choices" in rec:
            pick = choice_pick(model, prompt, rec["choices"])
            right_choice += pick == rec["gold_index"]
            n_choice += 1
            got = rec["choices"][pick]
        else:
            got = model.complete(prompt, params, add_special=False)
            golds = rec["answers"]
            sums["accuracy"] += any(answer_matches(got, g) for g in golds)
            sums["exact_match"] += exact_match(got, golds)
            sums["f1"] += f1(got, golds)
            n_gen += 1
        if len(examples) < show:
            examples.append({"question": rec["question"], "gold": rec["answers"][0], "got": got})
        emit(progress, "progress", task=f"task {label}", done=i + 1, total=len(records))
    out: dict[str, Any] = {f"{label}.n": len(records), f"{label}.examples": examples}
    if n_gen:
        out.update({f"{label}.{k}": v / n_gen for k, v in sums.items()})
    if n_choice:
        out[f"{label}.choice_accuracy"] = right_choice / n_choice
    return out


def run_quality(model: Model, suite: SuiteConfig, *, texts: Sequence[str] | None,
                tasks: Mapping[str, Sequence[Mapping[str, Any]]], reference: Model | None = None,
                progress: Reporter | None = None) -> dict[str, Any]:
    """Every quality number of ``suite`` for one loaded model. A reference with another tokenizer is
    refused for KL (``kld_error`` says why) and the rest still runs."""
    from llmlab.scoring import compare, perplexity

    out: dict[str, Any] = {}
    if texts:
        r = perplexity(model, texts, max_len=suite.max_len, progress=progress, max_tokens=suite.texts_tokens)
        out.update(ppl=r["ppl"], nll=r["nll"], ppl_tokens=r["tokens"])
        if reference is not None:
            try:
                r = compare(model, reference, texts, max_len=suite.max_len, progress=progress,
                            max_tokens=suite.texts_tokens)
                out.update(kld_mean=r["kld_mean"], kld_p99=r["kld_p99"], top1=r["top1"])
            except ConfigError as e:
                out["kld_error"] = e.message
    for label, records in tasks.items():
        out.update(run_task(model, suite, records, label=label, progress=progress))
    return out


def metric_direction(metric: str) -> bool | None:
    """True when higher is better, False when lower is, None for a column that is not a quality metric."""
    return HIGHER_IS_BETTER.get(metric.rpartition(".")[2])
