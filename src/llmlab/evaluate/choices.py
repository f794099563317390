"""What the pages show of the Evaluate station's results: one truth for every artifact's scores, the
suite a form stands for, which variants still need scoring, the job that scores them, a board's points
against an axis with their Pareto front, and Arena ratings beside each variant's cached automatic scores.

```python
from llmlab.evaluate.choices import cached_board, leaderboard_winner, pareto_rows, scores, suite_from, unscored
scores(store, ["demo", "demo-lora-gguf"])  # {name: {"perplexity": 2.65, "accuracy (heldout)": 0.74, ...}}
board = cached_board(store)              # read once, then scores_of(board) and winner_of(board)
leaderboard_winner(store, ["demo", "demo-merged"])   # the best of these on the headline metric
config = suite_from("heldout", "world", 100)
board = evaluate(config.model_copy(update={"only_cached": True}), store=store)
unscored(board)                         # names without a cached result
pareto_rows(board, "size_mb", "ppl")    # {name, kind, size_mb, ppl, pareto} per row with both values
```

Every page reads scores through ``scores``: the Leaderboard's cached quality numbers on the suite
it opens on (``default_suite``) and the speed an artifact's ``metrics.json`` recorded, with the time
and machine load of that measurement. Columns have human names with units (``column_name``); one
accuracy figure, named by its task set. Nothing here scores a model: everything comes from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from llmlab.evaluate.leaderboard import EvaluateConfig, Leaderboard, candidates, evaluate
from llmlab.scoring import is_number
from llmlab.store import Store

# Automatic scores shown next to the Arena's ratings (from the default suite's cache).
NOT_SCORED = "not scored"
MISSING = "—"  # how every page shows a value that is missing

# Leaderboard columns as people read them, units in the name; task columns are "<task>.<metric>".
COLUMN_NAMES = {
    "size_mb": "size (MB)", "ppl": "perplexity", "kld_mean": "KLD vs reference", "kld_p99": "KLD p99",
    "top1": "top-1 vs reference", "kld_reference": "reference", "nll": "NLL (nats/token)",
    "ppl_tokens": "perplexity tokens", "prompt_tok_s": "prompt tok/s", "gen_tok_s": "gen tok/s",
    "ttft_ms": "first token (ms)", "peak_mem_mb": "peak memory (MB)", "speed_at": "speed measured",
    "quality_from": "scores from", "scored_at": "scored at", "speed_from": "speed from", "kld_error": "KLD error",
}
TASK_METRIC_NAMES = {"accuracy": "accuracy", "exact_match": "exact match", "f1": "F1", "n": "questions",
                     "choice_accuracy": "choice accuracy"}
# What the other pages show of an artifact's scores, in this order ("ACCURACY": each task set's accuracy).
HEADLINE = ("size_mb", "ppl", "ACCURACY", "kld_mean", "top1", "kld_reference", "gen_tok_s", "speed_at")
# Display formats (printf) of numeric columns; task metrics get 3 decimals, other columns show as they are.
FORMATS = {"size (MB)": "%.2f", "perplexity": "%.4f", "KLD vs reference": "%.3g", "KLD p99": "%.3g",
           "top-1 vs reference": "%.3f", "gen tok/s": "%.0f", "prompt tok/s": "%.0f", "first token (ms)": "%.1f",
           "peak memory (MB)": "%.0f", "NLL (nats/token)": "%.4f"}


def column_name(col: str) -> str:
    """A leaderboard column as people read it: ``ppl`` -> perplexity, ``heldout.accuracy`` -> accuracy (heldout)."""
    if col in COLUMN_NAMES:
        return COLUMN_NAMES[col]
    task, dot, metric = col.rpartition(".")
    return f"{TASK_METRIC_NAMES[metric]} ({task})" if dot and metric in TASK_METRIC_NAMES else col


def default_suite() -> EvaluateConfig:
    """The suite the Leaderboard opens on and every other page reads scores from."""
    return suite_from("heldout", "auto", 100)


def headline_metric(config: EvaluateConfig) -> str:
    """The metric a winner is picked on: the suite's first task accuracy, else perplexity."""
    return f"{config.tasks[0].label}.accuracy" if config.tasks else "ppl"


def cached_board(store: Store, names: Sequence[str] | None = None,
                 config: EvaluateConfig | None = None) -> Leaderboard:
    """The leaderboard of ``names`` (default: every candidate) from the cache only, with each row's recorded
    speed (``with_recorded_speed``); an empty board when there is nothing to show."""
    config = config or default_suite()
    names = [n for n in names if store.exists(n)] if names is not None else None
    if not (names if names is not None else candidates(store)):
        return Leaderboard(config.suite, config.suite_hash())
    board = evaluate(config.model_copy(update={"models": names or [], "only_cached": True, "track": False}),
                     store=store)
    for row in board.rows:
        with_recorded_speed(row, store.get(row["name"]).metrics)
    return board


def with_recorded_speed(row: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the speed its artifact's ``metrics.json`` recorded (when the row has none) and when it
    was measured: ``speed_at`` like '2026-12-02 20:40 UTC · load 1.93' (time and 1-minute load average of
    that measurement, as far as they were recorded)."""
    if not is_number(row.get("gen_tok_s")) and is_number(recorded.get("gen_tok_s")):
        row.update({k: recorded[k] for k in ("gen_tok_s", "prompt_tok_s", "ttft_ms") if is_number(recorded.get(k))})
        row["speed_from"] = "recorded"
        row["speed_at"] = when(recorded.get("measured_at") or recorded.get("scored_at"), recorded.get("load_avg"))
    return row


def when(timestamp: Any, load: Any = None) -> str | None:
    """'2026-12-02 20:40 UTC · load 1.93' from an ISO timestamp and a load average (a number or the
    1/5/15-minute triple); None without a timestamp."""
    if not timestamp:
        return None
    try:
        text = datetime.fromisoformat(str(timestamp)).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        text = str(timestamp)
    load = load[0] if isinstance(load, (list, tuple)) and load else load
    return f"{text} · load {load:.2f}" if is_number(load) else text


def scores(store: Store, names: Sequence[str] | None = None,
           config: EvaluateConfig | None = None) -> dict[str, dict[str, Any]]:
    """Each artifact's scores as every page shows them: ``{name: {column name: value}}`` with the
    ``HEADLINE`` columns (None where missing) from ``cached_board``; default: every artifact in the store."""
    names = [a.name for a in store.list()] if names is None else names
    return scores_of(cached_board(store, names, config), config)


def scores_of(board: Leaderboard, config: EvaluateConfig | None = None) -> dict[str, dict[str, Any]]:
    """``scores`` of a board already read (``cached_board`` on ``config``'s suite)."""
    accuracies = [f"{t.label}.accuracy" for t in (config or default_suite()).tasks]
    cols = [c for h in HEADLINE for c in (accuracies if h == "ACCURACY" else [h])]
    return {r["name"]: {column_name(c): r.get(c) for c in cols} for r in board.rows}


def leaderboard_winner(store: Store, names: Sequence[str], config: EvaluateConfig | None = None) -> str | None:
    """The best of ``names`` on the leaderboard's headline metric, from cached scores only; None when none
    of them is scored."""
    return winner_of(cached_board(store, names, config), config)


def winner_of(board: Leaderboard, config: EvaluateConfig | None = None) -> str | None:
    """``leaderboard_winner`` of a board already read: its best row on ``headline_metric``."""
    best = board.best(headline_metric(config or default_suite()))
    return best["name"] if best else None


def number_format(column: str) -> str | None:
    """The printf format of a column's numbers (``FORMATS``; task metrics with 3 decimals), None for others."""
    task_metric = column.partition(" (")[0] in set(TASK_METRIC_NAMES.values()) - {"questions"}
    return FORMATS.get(column) or ("%.3f" if task_metric else None)


def number_formats(columns: Sequence[str]) -> dict[str, str]:
    """``number_format`` of each of ``columns`` that has one: what a page's table formats its numbers with."""
    return {c: f for c in columns if (f := number_format(c))}


def shown(column: str, value: Any) -> str:
    """One value as every page shows it: in its column's format, '—' when missing."""
    if value is None or value == "":
        return MISSING
    fmt = number_format(column)
    return fmt % value if fmt and is_number(value) else str(value)


def suite_from(tasks: str, texts: str, limit: int) -> EvaluateConfig:
    """The suite of a form: task sources (comma separated), perplexity texts and a per-task question limit."""
    return EvaluateConfig(tasks=[{"source": s.strip(), "limit": limit} for s in tasks.split(",") if s.strip()],
                          texts=texts or None, track=False)


def unscored(board: Leaderboard) -> list[str]:
    """The variants of a cached-only board that have no cached result for its suite."""
    return [r["name"] for r in board.rows if r.get("quality_from") == NOT_SCORED]


def scoring_job(config: EvaluateConfig, board: Leaderboard, *, speed: bool) -> EvaluateConfig:
    """The ``evaluate`` step that scores ``board``'s variants on ``config``'s suite, tracked; its models
    are listed so that the recipe's step cache sees a new variant as a new config."""
    return config.model_copy(update={"speed": speed, "track": True, "models": [r["name"] for r in board.rows]})


def pareto_rows(board: Leaderboard, x: str, y: str) -> list[dict[str, Any]]:
    """The rows with numbers for both ``x`` and ``y`` as {name, kind, x, y, pareto}: ``pareto`` is
    True on the front of ``y`` against ``x`` (``Leaderboard.pareto``: each axis's better direction)."""
    front = {r["name"] for r in board.pareto(x, y)}
    return [{"name": r["name"], "kind": r["kind"], x: r[x], y: r[y], "pareto": r["name"] in front}
            for r in board.rows if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]


def ratings_with_scores(store: Store, ratings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each rated variant's row with its scores as every page shows them (``scores``: the leaderboard's
    cache on the default suite, human column names; None where nothing is cached or the variant is gone)."""
    # a served adapter ("bundle:adapter", rated in the Arena) is not an artifact: no cached scores
    names = [r["name"] for r in ratings if ":" not in r["name"] and store.exists(r["name"])]
    auto = scores(store, names) if names else {}
    columns = next(iter(auto.values()), {}).keys()
    return [{**r, **{c: auto.get(r["name"], {}).get(c) for c in columns}} for r in ratings]
