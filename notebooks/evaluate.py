"""The Evaluate station: every variant in the store on one leaderboard, its Pareto fronts, and how far to
trust an LLM judge.

Run it with `marimo edit notebooks/evaluate.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store; run recipes/quickstart.yaml first), LLMLAB_NOTEBOOK_LIMIT (questions per
variant, default 100) and LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Which variant wins?

    The quickstart leaves several variants of the demo model in the store: the base model, a LoRA
    adapter, and GGUF quants. This notebook scores all of them on **the same suite**: perplexity
    on held-out text, KL divergence and top-1 agreement against each variant's own parent, and
    accuracy / exact match / F1 on held-out questions asked through each model's chat template
    with the same system prompt and greedy decoding. Results are cached by content hash, suite,
    data and library versions, so running it again costs almost nothing, and a new variant is the
    only one scored. Every cell calls `llmlab.evaluate`: the same calls `llmlab eval run`, the
    `evaluate` recipe step and the app's Leaderboard page make.
    """)
    return


@app.cell
def _():
    import os

    import altair as alt
    import marimo as mo
    import pandas as pd

    from llmlab.evaluate import EvaluateConfig, evaluate
    from llmlab.evaluate.choices import pareto_rows
    from llmlab.events import bar_updates
    from llmlab.store import Store

    AUTORUN = os.environ.get("LLMLAB_NOTEBOOK_AUTORUN") == "1"
    LIMIT = int(os.environ.get("LLMLAB_NOTEBOOK_LIMIT", "100"))
    store = Store()
    mo.md(f"The store is `{store.root}`: {len(store.list())} artifacts.")
    return AUTORUN, EvaluateConfig, LIMIT, alt, bar_updates, evaluate, mo, pareto_rows, pd, store


@app.cell(hide_code=True)
def _(mo):
    score_button = mo.ui.run_button(label="Score every variant", kind="success")
    mo.vstack([mo.md("## The leaderboard\n\nVariants already scored on this suite come from the cache "
                     "(`quality_from: cached`); the others are scored now (`fresh`)."), score_button])
    return (score_button,)


@app.cell
def _(AUTORUN, EvaluateConfig, LIMIT, bar_updates, evaluate, mo, score_button, store):
    mo.stop(not (score_button.value or AUTORUN), mo.md("*Press the button above to score the variants.*"))
    config = EvaluateConfig(tasks=[{"source": "heldout", "limit": LIMIT}])
    # evaluate reports its "leaderboard" task once per variant: one step of the bar each
    with mo.status.progress_bar(total=len(store.list()), title="Evaluating", show_eta=False) as _bar:
        board = evaluate(config, store=store, progress=bar_updates(_bar, task="leaderboard"))
    mo.ui.table(board.table(), selection=None)
    return (board,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Quality against size

    A variant is on the **Pareto front** when no other is both smaller and better. Pick the
    metric: lower is better for perplexity and KL divergence, higher for accuracy and top-1.
    """)
    return


@app.cell
def _(board, mo):
    metric = mo.ui.dropdown(board.metrics(), value="heldout.accuracy" if "heldout.accuracy" in board.metrics()
                            else board.metrics()[0], label="Quality metric")
    metric
    return (metric,)


@app.cell
def _(alt, board, metric, mo, pareto_rows, pd):
    # one row per variant with both numbers; "pareto" marks the front (nothing else smaller and better)
    _data = pd.DataFrame(pareto_rows(board, "size_mb", metric.value))
    mo.stop(_data.empty, mo.md("*No variant has this metric.*"))
    _base = alt.Chart(_data).encode(x=alt.X("size_mb:Q", title="size on disk (MB)"), y=f"{metric.value}:Q")
    _chart = _base.mark_circle(size=100).encode(color="kind:N", tooltip=list(_data.columns)) + \
        _base.transform_filter(alt.datum.pareto).mark_line(strokeDash=[4, 3], color="gray")
    _best = board.best(metric.value)
    mo.vstack([mo.ui.altair_chart(_chart.properties(height=300)),
               mo.md(f"Best on **{metric.value}**: **{_best['name']}** ({_best['kind']}).")])
    return


@app.cell(hide_code=True)
def _(mo):
    judge_button = mo.ui.run_button(label="Judge the best variant's answers", kind="success")
    mo.vstack([mo.md(r"""
    ## How far can an LLM judge be trusted?

    An LLM judge grades answers with a rubric (1 to 5). Where there are gold answers we can check
    it: Cohen's kappa between "the judge passes it" (score ≥ 4) and exact match. Plain agreement
    is misleading when most answers are wrong (a judge that fails everything agrees often);
    kappa removes the agreement expected by chance. Here the judge is a model from the store; with
    a tiny demo model expect a kappa near 0 and many missing scores: it rarely writes
    `score: N`, and a missing score is never guessed.
    """), judge_button])
    return (judge_button,)


@app.cell
def _(AUTORUN, board, judge_button, metric, mo, store):
    mo.stop(not (judge_button.value or AUTORUN), mo.md("*Press the button above to run the judge.*"))
    from llmlab.evaluate.judge import ModelJudge, judge_set
    from llmlab.runtime import load

    _best = board.best(metric.value)
    _examples = _best.get("heldout.examples") or []
    with load(_best["name"], store=store) as _m:
        report = judge_set(ModelJudge(_m), [{"question": e["question"], "answer": e["got"], "gold": e["gold"]}
                                            for e in _examples], retries=1)
    mo.md(f"Judge **{report['judge']}**: {report['n_scored']} of {report['n']} answers scored, kappa vs exact "
          f"match **{report['kappa_vs_exact_match']}**, plain agreement {report['agreement_vs_exact_match']}.")
    return (report,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - `llmlab eval gate --candidate demo-q4_k_m --baseline demo --metrics heldout.accuracy --margin 0.02`
      exits 1 when the quant loses more than 2 points: put it in CI.
    - `EvaluateConfig(speed=True)` adds tokens/s, time to first token and peak memory, measured fresh.
    - The app's **Arena** page: ask two variants the same question, vote, and watch Elo and
      Bradley-Terry ratings form next to these scores.
    """)
    return


if __name__ == "__main__":
    app.run()
