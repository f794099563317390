"""What the Leaderboard and Arena show of the Evaluate station's results: the suite a form stands for,
which variants still need scoring, the job that scores them, a board's points against an axis with
their Pareto front, and Arena ratings beside each variant's cached automatic scores.

```python
from llmlab.evaluate.choices import pareto_rows, suite_from, unscored
config = suite_from("heldout", "world", 100)
board = evaluate(config.model_copy(update={"only_cached": True}), store=store)
unscored(board)                         # names without a cached result
pareto_rows(board, "size_mb", "ppl")    # {name, kind, size_mb, ppl, pareto} per row with both values
```

Nothing here scores a model: ``ratings_with_scores`` and the boards it reads come from the cache.
"""

from __future__ import annotations

from typing import Any

from llmlab.evaluate.leaderboard import EvaluateConfig, Leaderboard, evaluate
from llmlab.store import Store

# Automatic scores shown next to the Arena's ratings (from the default suite's cache).
AUTO_COLUMNS = ("ppl", "heldout.accuracy", "kld_mean", "size_mb")
NOT_SCORED = "not scored"


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
    """Each rated variant's row with its cached automatic scores (``AUTO_COLUMNS``) on the default suite
    (None where nothing is cached, or the variant is gone from the store)."""
    names = [r["name"] for r in ratings if store.exists(r["name"])]
    auto: dict[str, dict[str, Any]] = {}
    if names:
        board = evaluate(EvaluateConfig(models=names, only_cached=True, track=False), store=store)
        auto = {r["name"]: r for r in board.rows}
    return [{**r, **{c: auto.get(r["name"], {}).get(c) for c in AUTO_COLUMNS}} for r in ratings]
