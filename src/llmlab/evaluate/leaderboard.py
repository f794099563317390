"""The leaderboard: every variant in the store scored on one suite, with lineage, filters and Pareto fronts.

```python
from llmlab.evaluate import EvaluateConfig, evaluate
board = evaluate(EvaluateConfig(models=["demo", "demo-lora", "demo-q4_k_m"]), store=store)
board.rows[0]["ppl"], board.rows[0]["quality_from"]     # "fresh" or "cached"
board.pareto("size_mb", "heldout.accuracy")               # quality vs size
print(board.to_markdown()); board.to_csv("board.csv")
```

Each row is one artifact: its kind, parents (read from manifests), size on disk, the suite's
quality numbers (perplexity, KL divergence and top-1 against the reference, task metrics), and
the agent / retrieval metrics other stations recorded in its ``metrics.json``. Quality numbers
come from the cache (``llmlab.evaluate.cache``) when nothing they depend on changed, so adding
one variant scores only that one; ``quality_from`` says ``cached`` or ``fresh``. Speed and peak
memory are measured only when asked (``speed=True``), always fresh (``speed_from: fresh``), never
from the cache; the speed is also recorded in the artifact's ``metrics.json`` with ``measured_at`` and
``load_avg``, so pages show it later with its time and machine load. A variant that fails to load gets
a row whose ``error`` says why; the others still run. Which kinds can run is read from ``llmlab.runtime.KIND_ENGINES`` at call time, so kinds that
gain an engine (gptq, awq, rtn) are scored without a change here.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from llmlab.errors import ConfigError, LlmlabError
from llmlab.evaluate.cache import EvalCache, cache_key
from llmlab.evaluate.suites import SuiteConfig, data_digest, metric_direction, resolve_task, resolve_texts, run_quality
from llmlab.events import Reporter, emit
from llmlab.scoring import is_number, pareto_front

if TYPE_CHECKING:
    from llmlab.runtime import Model
    from llmlab.store import Artifact, StepRecord, Store

# Metrics other stations record (agents, retrieval) that the leaderboard shows as they are.
RECORDED_PREFIXES = ("answers_", "retrieval_", "ndcg", "recall", "mrr", "judge_")
REFERENCE_ROLES = ("reference", "source", "base")
SPEED_KEYS = ("prompt_tok_s", "gen_tok_s", "ttft_ms")
MB = 1e6


class EvaluateConfig(SuiteConfig):
    """Options of ``llmlab eval run`` and the recipe step ``evaluate``: the suite plus what to score."""

    models: list[str] = Field(default_factory=list, description="Artifacts to score (default: every one the "
                              "runtime can load, plus agents/indexes with recorded metrics).")
    speed: bool = Field(False, description="Also measure speed (tokens/s, time to first token) and peak memory, "
                        "fresh (never cached).")
    cache: bool = Field(True, description="Reuse cached quality results (same content, suite, data, versions).")
    csv: str | None = Field(None, description="Write the leaderboard as CSV to this path (relative: under the store).")
    markdown: str | None = Field(None, description="Write the leaderboard as Markdown to this path (relative: under "
                                 "the store).")
    track: bool = Field(True, description="Log the leaderboard to MLflow (when tracking is on).")
    only_cached: bool = Field(False, description="Show cached results only: load no model, score nothing "
                              "(rows without a cached result say 'not scored').")

    @field_validator("models", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    def suite_config(self) -> SuiteConfig:
        return SuiteConfig.model_validate({k: getattr(self, k) for k in SuiteConfig.model_fields})


# ----- the table -----
@dataclass
class Leaderboard:
    """Rows (one per artifact) of one suite."""

    suite: str
    suite_hash: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols and not k.endswith(".examples")]
        return sorted(cols, key=_column_rank)

    def metrics(self) -> list[str]:
        """The numeric quality columns (those with a known better direction)."""
        return [c for c in self.columns if metric_direction(c) is not None]

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise ConfigError(f"'{name}' is not on this leaderboard.", f"Rows: {', '.join(r['name'] for r in self.rows)}.")

    def filter(self, *, kinds: Sequence[str] | None = None, contains: str | None = None,
               errors: bool = True) -> Leaderboard:
        """The rows of the given kinds, whose name contains ``contains``, with or without failed rows."""
        keep = [r for r in self.rows if (not kinds or r["kind"] in kinds)
                and (not contains or contains.lower() in r["name"].lower()) and (errors or not r.get("error"))]
        return Leaderboard(self.suite, self.suite_hash, keep)

    def pareto(self, x: str, y: str) -> list[dict[str, Any]]:
        """The Pareto front of ``y`` (a quality metric) against ``x`` (size_mb, gen_tok_s...)."""
        hx = x in SPEED_KEYS and x != "ttft_ms"
        return pareto_front(self.rows, x, y, higher_x=hx, higher_y=bool(metric_direction(y)))

    def best(self, metric: str) -> dict[str, Any] | None:
        """The winner on ``metric`` (direction from the metric's name; on a tie the smaller on disk), or None
        if no row has it."""
        rows = [r for r in self.rows if is_number(r.get(metric))]
        if not rows:
            return None
        sign = -1 if metric_direction(metric) else 1
        return min(rows, key=lambda r: (sign * r[metric], r.get("size_mb") or 0))

    def table(self) -> list[dict[str, Any]]:
        """Rows with every column (missing values as None), examples left out."""
        cols = self.columns
        return [{c: r.get(c) for c in cols} for r in self.rows]

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        for r in self.table():
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        return _maybe_write(buf.getvalue(), path)

    def to_markdown(self, path: str | Path | None = None) -> str:
        cols = self.columns
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.table():
            lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
        return _maybe_write("\n".join(lines) + "\n", path)


LEAD_COLUMNS = ("name", "kind", "parents", "size_mb", "ppl", "kld_mean", "kld_p99", "top1")
TAIL_COLUMNS = ("kld_reference", "kld_error", "quality_from", "scored_at", "speed_from", "error")


def _column_rank(col: str) -> tuple[int, int]:
    """Identity and headline quality first, then task metrics, speed, recorded metrics, provenance."""
    if col in LEAD_COLUMNS:
        return 0, LEAD_COLUMNS.index(col)
    if col in TAIL_COLUMNS:
        return 5, TAIL_COLUMNS.index(col)
    if metric_direction(col) is not None:
        return 1, 0
    if col in SPEED_KEYS or col == "peak_mem_mb":
        return 2, 0
    if col.startswith(RECORDED_PREFIXES):
        return 3, 0
    return 4, 0


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _maybe_write(text: str, path: str | Path | None) -> str:
    if path is not None:
        p = Path(path)
        from llmlab.store import write_text

        p.parent.mkdir(parents=True, exist_ok=True)
        write_text(p, text)
    return text


# ----- building rows -----
def reference_of(artifact: Artifact) -> str | None:
    """The parent a variant is compared with: role reference, else source, else base."""
    by_role = {p.role: p.name for p in artifact.manifest.parents}
    return next((by_role[r] for r in REFERENCE_ROLES if by_role.get(r)), None)


def lineage(artifact: Artifact) -> str:
    """'demo (base)', or 'demo-f16 (reference) + demo (source)': the direct parents and their roles."""
    return " + ".join(f"{p.name} ({p.role})" if p.role else p.name for p in artifact.manifest.parents)


def runnable_kinds() -> set[str]:
    from llmlab.runtime import KIND_ENGINES

    return set(KIND_ENGINES)


def candidates(store: Store) -> list[Artifact]:
    """Every artifact the runtime can load, plus other kinds that carry recorded metrics (agents)."""
    kinds = runnable_kinds()
    found = [a for a in store.list() if a.kind in kinds or _recorded(a)]
    return sorted(found, key=lambda a: (a.manifest.created, a.name))


def _recorded(artifact: Artifact) -> dict[str, Any]:
    return {k: v for k, v in artifact.metrics.items() if k.startswith(RECORDED_PREFIXES) and is_number(v)}


def _base_row(art: Artifact) -> dict[str, Any]:
    return {"name": art.name, "kind": art.kind, "parents": lineage(art), "size_mb": round(art.size_bytes / MB, 3),
            "quality_from": None, "scored_at": None, "speed_from": None, "error": None, **_recorded(art)}


class _References:
    """Reference models loaded once each and shared by the variants compared with them."""

    def __init__(self, store: Store, stack: contextlib.ExitStack):
        self.store, self.stack, self.models = store, stack, {}

    def get(self, name: str) -> Model:
        from llmlab.runtime import load

        if name not in self.models:
            self.models[name] = self.stack.enter_context(load(name, store=self.store))
        return self.models[name]


def evaluate(config: EvaluateConfig | None = None, *, store: Store | None = None,
             progress: Reporter | None = None) -> Leaderboard:
    """Score ``config.models`` (default: every candidate) on the suite; see the module doc."""
    from llmlab.store import Store

    config = config or EvaluateConfig()
    store = store or Store()
    suite = config.suite_config()
    arts = [store.get(n) for n in config.models] if config.models else candidates(store)
    if not arts:
        raise ConfigError(f"There is nothing to evaluate in the store at {store.root}.",
                          "Build or add a model first (`llmlab run recipes/quickstart.yaml`).")
    board = Leaderboard(suite.suite, suite.suite_hash())
    cache = EvalCache(store)
    kinds = runnable_kinds()
    with contextlib.ExitStack() as stack:
        refs = _References(store, stack)
        for i, art in enumerate(arts):
            row = _base_row(art)
            if art.kind not in kinds:
                row["quality_from"] = "recorded"
            else:
                emit(progress, "log", message=f"evaluating {art.name}")
                try:
                    _score_row(row, art, config, suite, store=store, cache=cache, refs=refs, progress=progress)
                except LlmlabError as e:
                    row.update(error=str(e), quality_from="failed")
                except Exception as e:  # an engine's own failure (a corrupt file...): the others still run
                    row.update(error=f"{art.name} could not be evaluated: {type(e).__name__}: {e}",
                               quality_from="failed")
            board.rows.append(row)
            emit(progress, "progress", task="leaderboard", done=i + 1, total=len(arts))
    if config.csv:  # relative paths are under the store, beside the artifacts they describe
        board.to_csv(store.root / config.csv)
    if config.markdown:
        board.to_markdown(store.root / config.markdown)
    if config.track:
        log_to_mlflow(board, store)
    return board


def _score_row(row: dict[str, Any], art: Artifact, config: EvaluateConfig, suite: SuiteConfig, *,
               store: Store, cache: EvalCache, refs: _References, progress: Reporter | None) -> None:
    from llmlab.runtime import KIND_ENGINES

    texts = resolve_texts(suite, store=store, artifact=art)
    tasks = {t.label: recs for t in suite.tasks if (recs := resolve_task(t, store=store, artifact=art))}
    ref_name = reference_of(art) if suite.reference == "parent" else suite.reference
    ref_name = None if ref_name in (None, "none", art.name) or not texts else ref_name
    ref_hash = store.get(ref_name).content_hash if ref_name and store.exists(ref_name) else ref_name
    key = cache_key(art, suite_hash=suite.suite_hash(), data_digest=data_digest(texts, tasks),
                    reference_hash=ref_hash, engine=KIND_ENGINES.get(art.kind, "auto"),
                    decoding=suite.sampling().model_dump(mode="json"))
    cached = cache.get(key) if config.cache or config.only_cached else None
    if cached is None and config.only_cached:
        failed = cache.failure(key)
        row.update(quality_from="failed" if failed else "not scored", error=failed)
        return
    if cached is not None:
        row.update(cached, quality_from="cached", kld_reference=ref_name)
        if not config.speed or config.only_cached:
            return
    try:
        _measure(row, art, config, suite, key=key, cached=cached, texts=texts, tasks=tasks, ref_name=ref_name,
                 store=store, cache=cache, refs=refs, progress=progress)
    except Exception as e:
        why = e.message if isinstance(e, LlmlabError) else f"{type(e).__name__}: {e}"
        cache.put_failure(key, f"{art.name} could not be evaluated: {why}")
        raise


def _measure(row: dict[str, Any], art: Artifact, config: EvaluateConfig, suite: SuiteConfig, *,
             key: dict[str, Any], cached: dict[str, Any] | None, texts: list[str] | None,
             tasks: dict[str, list[dict[str, Any]]], ref_name: str | None, store: Store, cache: EvalCache,
             refs: _References, progress: Reporter | None) -> None:
    """Load the variant; score quality unless cached; measure speed and memory when asked."""
    from llmlab.runtime import load
    from llmlab.scoring import load_average, peak_memory, speed

    with peak_memory() as pm, load(art, store=store) as model:
        if cached is None:
            reference = None
            if ref_name:
                try:
                    reference = refs.get(ref_name)
                except LlmlabError as e:
                    row["kld_error"] = f"reference '{ref_name}' could not be loaded: {e.message}"
            quality = run_quality(model, suite, texts=texts, tasks=tasks, reference=reference, progress=progress)
            if "kld_error" in row:
                quality["kld_error"] = row["kld_error"]
            row.update(cache.put(key, quality), quality_from="fresh", kld_reference=ref_name)
        if config.speed:
            measured = speed(model, suite.prompt_tokens, suite.gen_tokens, suite.repeats, progress=progress)
            row.update({k: v for k, v in measured.items() if k in SPEED_KEYS}, speed_from="fresh")
    if config.speed:
        row["peak_mem_mb"] = round(pm.peak_mb - pm.start_mb, 1)
        # recorded with when (and at what machine load) it was measured, so every page shows this speed
        store.record_metrics(art.name, {**{k: v for k, v in measured.items() if k in SPEED_KEYS},
                                        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                        "load_avg": load_average()})


def log_to_mlflow(board: Leaderboard, store: Store) -> str | None:
    """One MLflow run per leaderboard: ``<variant>.<metric>`` metrics, the CSV and Markdown as
    artifacts; returns the run id (None when tracking is off)."""
    from llmlab import settings

    if settings.tracking_uri() is None:
        return None
    from llmlab.tracking import open_mlflow

    mlflow, experiment_id = open_mlflow(store)
    nested = mlflow.active_run() is not None  # inside a recipe run (the `evaluate` step): a child run
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"leaderboard:{board.suite}", nested=nested) as run:
        mlflow.set_tags({"llmlab.leaderboard": board.suite, "llmlab.suite_hash": board.suite_hash,
                         "llmlab.store": str(store.root)})
        metrics = {f"{r['name']}.{k}": float(v) for r in board.rows for k, v in r.items()
                   if (metric_direction(k) is not None or k in SPEED_KEYS or k in ("size_mb", "peak_mem_mb"))
                   and is_number(v)}
        if metrics:
            mlflow.log_metrics({_mlflow_key(k): v for k, v in metrics.items()})
        mlflow.log_text(board.to_csv(), "leaderboard.csv")
        mlflow.log_text(board.to_markdown(), "leaderboard.md")
        return run.info.run_id


def _mlflow_key(key: str) -> str:
    import re

    return re.sub(r"[^\w./ -]", "_", key)


def evaluate_step(config: EvaluateConfig, *, store: Store | None = None, progress: Reporter | None = None,
                  overwrite: bool = False, step: StepRecord | None = None) -> dict[str, Any]:
    """The recipe step: the leaderboard's numbers as ``<variant>.<metric>`` plus the table itself."""
    board = evaluate(config, store=store, progress=progress)
    flat = {f"{r['name']}.{k}": v for r in board.rows for k, v in r.items()
            if metric_direction(k) is not None and is_number(v)}
    return {**flat, "rows": len(board.rows), "fresh": sum(r["quality_from"] == "fresh" for r in board.rows),
            "failed": sum(bool(r["error"]) for r in board.rows), "table": board.table()}
