"""The scoring core: every station reports its numbers through these functions.

All of them run on ``llmlab.runtime`` models, so a number means the same thing whichever engine
or station produced the artifact:

- ``perplexity``: token-level, over the texts concatenated (each BOS-prefixed) with a sliding
  window (``max_len`` tokens, advancing ``stride``; every token after the first is scored once,
  with up to ``max_len - stride`` tokens of extra context);
- ``compare``: KL(reference || model) and top-1 agreement of next-token distributions on the
  same windows (refused when the tokenizers differ);
- ``accuracy``: greedy answers to questions asked through the chat template, judged by
  ``answer_matches``: case, punctuation and surrounding space are ignored, and the generated
  text must begin with the gold answer's words (a model that says "Dunmere, I think" for gold
  "Dunmere" is right; "Dun" is not);
- ``speed``: prompt and generation tokens/s and time to first token;
- ``peak_memory``: the peak resident memory of a block of code;
- ``score`` / ``score_step``: run what applies and write it to the artifact's ``metrics.json``;
- ``stored_table`` / ``log_quality_table``: a quantized model's quality table read back from the
  store without scoring, and logged to MLflow;
- ``ScoreCache`` / ``score_key``: scores kept under a key of everything they depend on (the
  artifact's and its reference's content hashes, the texts and questions, the token budget, the
  runtime libraries' versions), so an unchanged artifact is not scored twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import statistics
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.runtime import Model, SamplingParams
    from llmlab.store import Artifact, StepRecord, Store
    from llmlab.world import World

_WORD = re.compile(r"[a-z0-9]+")
PROBE_TEXT = "The quick brown fox jumps over 13 lazy dogs. It's café time: naïve résumé 🚀!"
# Most tokens of the held-out texts scored by default: a 135M model scores in well under a minute.
TEXTS_TOKENS = 8192
SPEED_TEXT = ("Once upon a time, in a small town by the sea, there lived a baker who made bread every "
              "morning before the sun came up. ")


def normalize_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text``."""
    return _WORD.findall(text.lower())


def answer_matches(generated: str, gold: str) -> bool:
    """True when ``generated`` starts with the words of ``gold`` (see module doc)."""
    want = normalize_words(gold)
    got = normalize_words(generated)
    return bool(want) and got[: len(want)] == want


# ----- token streams and windows -----
def _token_stream(model: Model, texts: Sequence[str], max_tokens: int | None = None) -> list[int]:
    bos = model.bos_id
    ids: list[int] = []
    for text in texts:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        if bos is not None:
            ids.append(bos)
        ids += model.tokenize(text, add_special=False)
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ConfigError("The texts give fewer than 2 tokens: there is nothing to score.")
    return ids


def _windows(n: int, max_len: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored position) windows covering positions 1..n-1 once each."""
    scored_to = 1  # position 0 has no prediction
    begin = 0
    while scored_to < n:
        end = min(begin + max_len, n)
        yield begin, end, scored_to
        scored_to = end
        begin = max(0, min(begin + stride, end - 1))


def _window_args(model: Model, max_len: int | None, stride: int | None) -> tuple[int, int]:
    max_len = max_len or min(model.n_ctx, 512)
    if max_len > model.n_ctx:
        raise ConfigError(f"max_len {max_len} is longer than the model's context ({model.n_ctx}).")
    stride = stride or max(1, max_len // 2)
    if not 0 < stride <= max_len:
        raise ConfigError(f"stride must be between 1 and max_len ({max_len}), got {stride}.")
    return max_len, stride


def _gathered(lp: np.ndarray, ids: Sequence[int], begin: int, first: int, end: int) -> np.ndarray:
    """Log-probabilities of the actual tokens at positions first..end-1 from window logprobs ``lp``."""
    rows = np.arange(first - 1 - begin, end - 1 - begin)
    return lp[rows, np.asarray(ids[first:end])]


def perplexity(model: Model, texts: Sequence[str], max_len: int | None = None, stride: int | None = None,
               progress: Reporter | None = None, max_tokens: int | None = None) -> dict[str, float]:
    """Token-level perplexity of ``model`` on ``texts`` (see module doc), over at most ``max_tokens``
    tokens of them: ``{"ppl", "nll", "tokens"}``."""
    ids = _token_stream(model, texts, max_tokens)
    max_len, stride = _window_args(model, max_len, stride)
    wins = list(_windows(len(ids), max_len, stride))
    nll, count = 0.0, 0
    for i, (begin, end, first) in enumerate(wins):
        lp = model.logprobs(ids[begin:end])
        picked = _gathered(lp, ids, begin, first, end)
        nll -= float(picked.astype(np.float64).sum())
        count += len(picked)
        emit(progress, "progress", task="perplexity", done=i + 1, total=len(wins))
    mean = nll / count
    return {"ppl": float(np.exp(mean)), "nll": mean, "tokens": count}


def same_tokenizer(model: Model, reference: Model) -> str | None:
    """Why the two models' tokenizers differ, or None when they agree."""
    if model.vocab_size != reference.vocab_size:
        return f"vocabulary sizes differ ({model.vocab_size} vs {reference.vocab_size})"
    if model.tokenize(PROBE_TEXT) != reference.tokenize(PROBE_TEXT):
        return "they tokenize the same probe text differently"
    return None


def compare(model: Model, reference: Model, texts: Sequence[str], max_len: int | None = None,
            stride: int | None = None, progress: Reporter | None = None,
            max_tokens: int | None = None) -> dict[str, Any]:
    """KL(reference || model) per token (mean and 99th percentile) and top-1 agreement, over at
    most ``max_tokens`` tokens of ``texts``."""
    why = same_tokenizer(model, reference)
    if why:
        raise ConfigError(f"Cannot compare {model.path.name} with {reference.path.name}: {why}.",
                          "KL divergence needs the same tokenizer: compare a model with its own parent.")
    ids = _token_stream(reference, texts, max_tokens)
    max_len, stride = _window_args(model, max_len or min(model.n_ctx, reference.n_ctx, 512), stride)
    wins = list(_windows(len(ids), max_len, stride))
    klds, agree = [], 0
    for i, (begin, end, first) in enumerate(wins):
        rows = slice(first - 1 - begin, end - 1 - begin)
        ref = reference.logprobs(ids[begin:end])[rows].astype(np.float64)
        got = model.logprobs(ids[begin:end])[rows].astype(np.float64)
        klds.append(np.maximum((np.exp(ref) * (ref - got)).sum(axis=-1), 0.0))  # clip float noise below 0
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        emit(progress, "progress", task="compare", done=i + 1, total=len(wins))
    kld = np.concatenate(klds)
    return {"kld_mean": float(kld.mean()), "kld_p99": float(np.percentile(kld, 99)),
            "top1": agree / len(kld), "tokens": int(len(kld)), "reference": _label(reference)}


def accuracy(model: Model, qa_records: Sequence[Mapping[str, Any]], params: SamplingParams | None = None, *,
             show: int = 5, progress: Reporter | None = None) -> dict[str, Any]:
    """Share of ``qa_records`` (``question``, ``answer``, optional ``context``) answered right.

    Questions go through the model's chat template with the demo world's system prompt;
    answers are greedy, 8 tokens, unless ``params`` (SamplingParams) says otherwise."""
    from llmlab import world
    from llmlab.runtime import SamplingParams
    from llmlab.runtime.batched import chat_many

    if not qa_records:
        raise ConfigError("No questions to score.")
    params = params or SamplingParams.greedy(max_tokens=8)
    for i, rec in enumerate(qa_records):
        if "question" not in rec or "answer" not in rec:
            raise ConfigError(f"QA record {i} needs 'question' and 'answer' fields, has {sorted(rec)}.")
    # decoded several at a time on llama.cpp (runtime.batched), one by one elsewhere: the same answers
    answers = chat_many(model, [world.chat_messages(r["question"], context=r.get("context")) for r in qa_records],
                        params, progress=lambda n: emit(progress, "progress", task="accuracy", done=n,
                                                        total=len(qa_records)))
    right, examples = 0, []
    for rec, got in zip(qa_records, answers):
        ok = answer_matches(got, str(rec["answer"]))
        right += ok
        if len(examples) < show:
            examples.append({"question": rec["question"], "gold": rec["answer"], "got": got, "ok": ok})
    return {"accuracy": right / len(qa_records), "n": len(qa_records), "examples": examples}


def speed(model: Model, prompt_tokens: int = 128, gen_tokens: int = 64, repeats: int = 3,
          progress: Reporter | None = None) -> dict[str, float]:
    """Prompt processing and generation speed (tokens/s) and time to first token (ms), medians of
    ``repeats`` runs after one warm-up; generation ignores EOS so every run makes ``gen_tokens``."""
    from llmlab.runtime import SamplingParams

    prompt_tokens = min(prompt_tokens, model.n_ctx - gen_tokens - 1)
    if prompt_tokens < 1:
        raise ConfigError(f"The model's context ({model.n_ctx}) is too short for {gen_tokens} generated tokens.")
    ids = model.tokenize(SPEED_TEXT)
    ids = (ids * (prompt_tokens // max(len(ids), 1) + 1))[:prompt_tokens]
    params = SamplingParams.greedy(max_tokens=gen_tokens)
    runs = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        t_first = None
        n = 0
        for _ in model.generate_ids(ids, params, ignore_eos=True):
            n += 1
            if t_first is None:
                t_first = time.perf_counter()
        t_end = time.perf_counter()
        if r:  # the first run warms caches and allocations
            assert t_first is not None
            runs.append((t_first - t0, (n - 1) / (t_end - t_first) if n > 1 else 0.0))
        emit(progress, "progress", task="speed", done=r + 1, total=repeats + 1)
    ttft = statistics.median(t for t, _ in runs)
    return {"prompt_tok_s": len(ids) / ttft, "gen_tok_s": statistics.median(g for _, g in runs),
            "ttft_ms": ttft * 1000, "prompt_tokens": len(ids), "gen_tokens": gen_tokens}


class PeakMemory:
    """Peak resident memory (MB) of this process while a ``with`` block runs, sampled by a thread."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start_mb = self.peak_mb = self._proc.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)


def peak_memory(interval: float = 0.01) -> PeakMemory:
    """``with peak_memory() as pm: ...`` then ``pm.peak_mb`` (and ``pm.start_mb``)."""
    return PeakMemory(interval)


# ----- score: everything that applies, written to the store -----
def _label(model: Model) -> str:
    return model.artifact.name if model.artifact is not None else str(model.path)


def _digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def digest(items: Sequence[str | Mapping[str, Any]] | None) -> str | None:
    """A short sha256 of texts or records (questions) in order; None for none."""
    if items is None:
        return None
    return _digest([t if isinstance(t, str) else json.dumps(t, sort_keys=True, default=str) for t in items])


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system has none): what speed figures ran beside."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def score(name_or_model: str | Path | Model, *, store: Store | None = None, data: Sequence[str] | None = None,
          qa: Sequence[Mapping[str, Any]] | None = None, reference: str | Path | Model | None = None,
          engine: str | None = None, data_label: str | None = None, max_len: int | None = None,
          speed_test: bool = True, prompt_tokens: int = 128, gen_tokens: int = 64, repeats: int = 2,
          progress: Reporter | None = None, max_tokens: int | None = TEXTS_TOKENS) -> dict[str, Any]:
    """Score a model with what applies (perplexity on ``data``, KL/top-1 against ``reference`` on
    ``data``, both over at most ``max_tokens`` tokens; accuracy on ``qa``, speed, size, peak memory)
    and record it in its ``metrics.json`` when it is a store artifact. Returns the metrics written."""
    from llmlab.runtime import Model, load

    own = not isinstance(name_or_model, Model)
    metrics: dict[str, Any] = {}
    with contextlib.ExitStack() as stack, peak_memory() as pm:
        model = stack.enter_context(load(name_or_model, store=store, engine=engine)) if own else name_or_model
        info = model.info
        metrics.update(engine=info["engine"], size_bytes=info["size_bytes"], n_params=info["n_params"])
        if data:
            r = perplexity(model, data, max_len=max_len, progress=progress, max_tokens=max_tokens)
            metrics.update(ppl=r["ppl"], nll=r["nll"], ppl_tokens=r["tokens"],
                           ppl_data={"label": data_label, "texts": len(data), "sha256": _digest(data)})
        if reference is not None:
            if not data:
                raise ConfigError("Comparing with a reference needs texts (data) to compare on.")
            ref_own = not isinstance(reference, Model)
            ref = stack.enter_context(load(reference, store=store)) if ref_own else reference
            r = compare(model, ref, data, max_len=max_len, progress=progress, max_tokens=max_tokens)
            metrics.update(kld_mean=r["kld_mean"], kld_p99=r["kld_p99"], top1=r["top1"],
                           kld_reference=r["reference"], kld_tokens=r["tokens"])
        if qa:
            r = accuracy(model, qa, progress=progress)
            metrics.update(accuracy=r["accuracy"], accuracy_n=r["n"], accuracy_examples=r["examples"])
        if speed_test:  # speed depends on what else runs: record when, and beside what load
            metrics.update(measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           load_avg=load_average())
            metrics.update(speed(model, prompt_tokens, gen_tokens, repeats, progress=progress))
    metrics["peak_rss_mb"] = round(pm.peak_mb, 1)
    metrics["scored_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    artifact = model.artifact
    if artifact is not None:
        from llmlab.store import Store

        (store or Store(artifact.path.parent)).record_metrics(artifact.name, metrics)
    return metrics


# ----- scores kept by what they depend on -----
# Libraries whose versions can change a score (each installed one goes into a cache key).
RUNTIME_LIBRARIES = ("llmlab", "torch", "transformers", "tokenizers", "peft", "llama_cpp_python", "gptqmodel",
                     "optimum")
# Raised when the runtime computes the same model's numbers differently (2: llama.cpp's flash attention on).
RUNTIME_REVISION = 2


def score_key(artifact: Artifact, *, reference: Artifact | None, texts: Sequence[str] | None,
              qa: Sequence[Mapping[str, Any]] | None, max_tokens: int | None, speed_test: bool) -> dict[str, Any]:
    """Everything ``score``'s numbers for ``artifact`` depend on: its content (and its parents', which
    an adapter is loaded onto), the reference's content, the texts and questions, the token budget,
    whether speed is measured, and the runtime libraries' versions."""
    from llmlab.store import library_versions

    return {"content_hash": artifact.content_hash,
            "parents": sorted(p.content_hash for p in artifact.manifest.parents),
            "reference": reference.content_hash if reference is not None else None,
            "texts": digest(texts), "qa": digest(qa), "texts_tokens": max_tokens, "speed": speed_test,
            "versions": library_versions(RUNTIME_LIBRARIES), "runtime": RUNTIME_REVISION}


class ScoreCache:
    """Scores as JSON files under ``<store>/.cache/<folder>/``, one per key (its sha256 is the file
    name; the key is stored too and must match). A try that failed leaves ``<name>.failed.json``."""

    def __init__(self, store: Store, folder: str = "scores"):
        self.root: Path = store.root / ".cache" / folder

    def _path(self, key: dict[str, Any]) -> Path:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{name}.json"

    def _read(self, path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        entry = self._read(self._path(key), key)
        return entry.get("quality") if entry else None

    def put(self, key: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
        """Store ``quality`` with the time it was stored (``scored_at``) and return it."""
        from llmlab.store import write_json

        self.root.mkdir(parents=True, exist_ok=True)
        quality = {**quality, "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(self._path(key), {"key": key, "quality": quality})
        return quality

    def failure(self, key: dict[str, Any]) -> str | None:
        """Why the last try with this key failed (shown by cached-only views; a real run tries again)."""
        entry = self._read(self._path(key).with_suffix(".failed.json"), key)
        return entry.get("error") if entry else None

    def put_failure(self, key: dict[str, Any], error: str) -> None:
        from llmlab.store import write_json

        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self._path(key).with_suffix(".failed.json"), {"key": key, "error": error})


class EvalOptions(BaseModel):
    """What a station scores its result on: the one set of evaluation options that the score step,
    Tune, Distill, Merge and Quantize share (the leaderboard's ``SuiteConfig`` names its texts alike).
    ``eval_inputs`` turns them into texts and questions for a model."""

    model_config = ConfigDict(extra="forbid")
    texts: str | None = Field("auto", description="Held-out texts for perplexity and KL divergence: 'auto' (the "
                              "demo world's held-out text for a model trained on one, else 'prose'), 'world', "
                              "'prose' (public-domain prose shipped with llmlab), a data file, a public set "
                              "name, or none.")
    texts_limit: int = Field(200, ge=1, description="Most records read from texts.")
    texts_tokens: int = Field(TEXTS_TOKENS, ge=2, description="Most tokens of the texts scored (perplexity, KL): "
                              "bounds the time scoring takes on a real model.")
    qa: str | None = Field("heldout", description="Questions for accuracy: a world split (tune, heldout, rag; "
                           "heldout:people for one relation group), a .jsonl file of {question, answer}, or none.")
    qa_limit: int = Field(200, ge=1, description="Most questions asked per model.")

    def texts_name(self, world: World | None) -> str | None:
        """What ``texts`` names for a model with (or without) a demo ``world``: 'auto' decided."""
        from llmlab import data as datamod

        return datamod.auto_source(world is not None) if self.texts == datamod.AUTO else self.texts

    def eval_inputs(self, *, store: Store, artifact: Artifact | None, world: World | None = None,
                    progress: Reporter | None = None) -> tuple[list[str] | None, list[dict[str, Any]] | None]:
        """The texts and questions these options name (None where an option is none). The world's
        sources come from ``world`` (default: the world ``artifact`` was trained on); for a model
        without one they are skipped, with a log line."""
        from llmlab import data as datamod
        from llmlab.world import find_world

        if world is None and artifact is not None:
            world = find_world(store, artifact)
        texts, qa = self.texts_name(world), self.qa
        split = (qa or "").partition(":")[0] in datamod.SPLITS
        if world is None and (texts == "world" or split):
            who = artifact.name if artifact is not None else "the model"
            emit(progress, "log", message=f"{who} has no demo world: world texts and questions are skipped")
            texts, qa = (None if texts == "world" else texts), (None if split else qa)
        # what is left of the world's sources has a world: take them from it (it may not be the artifact's)
        if texts == "world":
            out_texts: list[str] | None = [world.eval_text]
        else:
            out_texts = datamod.resolve_texts(texts, store=store, artifact=artifact, limit=self.texts_limit)
        if split and qa:
            return out_texts, world.split(qa)[: self.qa_limit]
        return out_texts, datamod.resolve_questions(qa, store=store, artifact=artifact, limit=self.qa_limit)


class ScoreConfig(EvalOptions):
    """Options of the Score step (``llmlab score NAME`` and a recipe's ``score`` step)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="Artifact to score.")
    # "data" and "data_limit", the names these had before the options were shared, still work.
    texts: str | None = Field("auto", validation_alias=AliasChoices("texts", "data"),
                              description=EvalOptions.model_fields["texts"].description)
    texts_limit: int = Field(200, ge=1, validation_alias=AliasChoices("texts_limit", "data_limit"),
                             description=EvalOptions.model_fields["texts_limit"].description)
    engine: str | None = Field(
        None, description="Force an engine (transformers, llama.cpp); default: by artifact kind.")
    reference: str | None = Field(
        None, description="Artifact to compare with (KL divergence, top-1 agreement), e.g. the parent.")
    max_len: int | None = Field(None, ge=2, description="Perplexity window in tokens (default: min(context, 512)).")
    speed: bool = Field(True, description="Measure prompt/generation speed.")
    prompt_tokens: int = Field(128, ge=1, description="Prompt length for the speed test.")
    gen_tokens: int = Field(64, ge=2, description="Generated tokens for the speed test.")


def score_step(config: ScoreConfig, *, store: Store | None = None, progress: Reporter | None = None,
               overwrite: bool = False, step: StepRecord | None = None) -> dict[str, Any]:
    """The recipe step: resolve ``texts`` and ``qa`` to texts and questions (``eval_inputs``), then ``score``."""
    from llmlab.store import Store
    from llmlab.world import find_world

    store = store or Store()
    artifact = store.get(config.model)
    world = find_world(store, artifact)
    texts, questions = config.eval_inputs(store=store, artifact=artifact, world=world, progress=progress)
    return score(artifact, store=store, data=texts, qa=questions, reference=config.reference, engine=config.engine,
                 data_label=config.texts_name(world), max_len=config.max_len, speed_test=config.speed,
                 max_tokens=config.texts_tokens,
                 prompt_tokens=config.prompt_tokens, gen_tokens=config.gen_tokens, progress=progress)


# ----- tables of scores -----
def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, None or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(rows: Sequence[dict[str, Any]], x: str, y: str, *, higher_x: bool = False,
                 higher_y: bool = False) -> list[dict[str, Any]]:
    """Rows no other row beats on both ``x`` and ``y`` (each lower-better unless ``higher_*``), best ``x`` first.

    A row is dominated when another is no worse on both and strictly better on one; rows missing
    either value (None, NaN) are left out; equal points are all kept."""
    sx, sy = (-1 if higher_x else 1), (-1 if higher_y else 1)
    pts = [(sx * r[x], sy * r[y], r) for r in rows if is_number(r.get(x)) and is_number(r.get(y))]
    front = [p for p in pts if not any(o[0] <= p[0] and o[1] <= p[1] and (o[0] < p[0] or o[1] < p[1]) for o in pts)]
    return [r for _, _, r in sorted(front, key=lambda p: (p[0], p[1]))]


# ----- a quantized model's quality table, read back and logged -----
# Row fields logged to MLflow as ``<variant>.<field>`` metrics.
METRIC_FIELDS = ("ppl", "kld_mean", "kld_p99", "top1", "accuracy", "size_bytes", "bpw", "gen_tok_s",
                 "prompt_tok_s", "peak_rss_mb")


def _accuracy(value: Any) -> float | None:
    """A stored accuracy: a number, or a per-split dict (heldout preferred, else the only split)."""
    if is_number(value):
        return float(value)
    if isinstance(value, dict):
        pick = value.get("heldout", next(iter(value.values())) if len(value) == 1 else None)
        return float(pick) if is_number(pick) else None
    return None


def stored_row(art: Artifact) -> dict[str, Any]:
    """One quality-table row (the columns of ``llmlab.quantize.step.quality_table`` plus ``size_mb``, in
    decimal megabytes, and ``imatrix``) read from an artifact's manifest and metrics.json, without scoring
    anything."""
    info, m = art.manifest.info, art.metrics
    size = info.get("size_bytes") or m.get("size_bytes") or art.size_bytes
    bpw = info.get("bpw") or m.get("bpw")
    if bpw is None and is_number(m.get("n_params")) and m["n_params"]:
        bpw = 8 * size / m["n_params"]
    return {
        "name": art.name, "kind": art.kind, "type": info.get("type") or m.get("quant_type") or art.kind,
        "reference": m.get("kld_reference") or info.get("reference"), "imatrix": info.get("imatrix"),
        "size_bytes": size, "size_mb": round(size / 1e6, 3),  # decimal MB, as the page and notebook show
        "bpw": round(float(bpw), 3) if is_number(bpw) else None,
        "ppl": m.get("ppl"), "kld_mean": m.get("kld_mean"), "kld_p99": m.get("kld_p99"),
        "top1": m.get("top1"),
        "accuracy": _accuracy(m.get("accuracy")), "gen_tok_s": m.get("gen_tok_s"),
        "prompt_tok_s": m.get("prompt_tok_s"), "peak_rss_mb": m.get("peak_rss_mb"),
        "fallback": dict(info.get("fallback") or {}),  # tensors llama.cpp stored in another type
        "scored_at": m.get("scored_at"), "measured_at": m.get("measured_at"), "load_avg": m.get("load_avg"),
    }


def stored_table(store: Store, model: str) -> list[dict[str, Any]]:
    """The stored quality table of ``model``: a row per quantized child (``gguf``, ``gptq``, ``awq``,
    ``rtn`` artifacts whose parents include it: the f16 reference and every variant), largest
    first, after the model's own row when the model was scored on the same text as its variants
    (so its perplexity compares)."""
    from llmlab.store import VARIANT_KINDS

    children = [a for a in store.children(model) if a.kind in VARIANT_KINDS]
    rows = sorted((stored_row(a) for a in children), key=lambda r: -r["size_bytes"])
    if rows and store.exists(model):
        source = store.get(model)
        texts = {(a.metrics.get("ppl_data") or {}).get("sha256") for a in children} - {None}
        if (source.metrics.get("ppl_data") or {}).get("sha256") in texts:
            rows.insert(0, stored_row(source))
    return rows


def log_quality_table(rows: Sequence[dict[str, Any]], *, store: Store, title: str = "quantize",
                      new_run: bool = True) -> bool:
    """Log the table to MLflow when tracking is on: each row's numbers as ``<name>.<field>`` metrics
    and the whole table as ``quality_table.json`` (``mlflow.log_table``), into the active run (a
    recipe run: ``quantize`` logs there) or else, with ``new_run``, a new run named ``title``.
    Returns whether anything was logged."""
    import sys

    from llmlab import settings

    if not rows or settings.tracking_uri() is None:
        return False
    active = "mlflow" in sys.modules and sys.modules["mlflow"].active_run() is not None
    if not (active or new_run):
        return False  # e.g. a recipe run with --no-track, or a direct call: no run to log into
    from llmlab.tracking import open_mlflow

    mlflow, experiment_id = open_mlflow(store)
    metrics = {f"{r['name']}.{k}": float(r[k]) for r in rows for k in METRIC_FIELDS if is_number(r.get(k))}
    columns = sorted({k for r in rows for k in r})
    table = {k: [r.get(k) for r in rows] for k in columns}
    with contextlib.ExitStack() as stack:
        if mlflow.active_run() is None:
            stack.enter_context(mlflow.start_run(experiment_id=experiment_id, run_name=title))
        mlflow.log_metrics(metrics)
        mlflow.log_table(data=table, artifact_file="quality_table.json")
    return True
