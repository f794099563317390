"""Leaderboard: every variant in the store on one suite, filters, Pareto charts, downloads, and the winner
sent to Export.

The table is read from the quality cache (``llmlab.evaluate.choices.cached_board``: no model is
loaded while the page draws), with human column names, '—' for what is missing, the name pinned and
each variant's last recorded speed with when (and at what load) it was measured. "Score what is
missing" starts a one-step ``evaluate`` recipe as a job, which scores only variants without a
cached result (with speed and memory, fresh, when ticked). Charts plot a quality metric (by default
the suite's task accuracy, the one every page's winner is picked on) against size on disk (log
scale) and, when measured, generation speed: axes fitted to the data, every point labelled with its
name, each Pareto front drawn as a line. "Send to Export" puts the chosen winner in
``st.session_state["export:model"]``, which the Export page reads.

The suite a form stands for, the variants still to score, the scoring job and the chart's Pareto
points come from ``llmlab.evaluate.choices``; the page only lays out widgets and calls the library.
"LLM judges" lists each judge's measured agreement with exact match (``llmlab.evaluate.agreement``)
and warns plainly for every judge whose kappa is below ``TRUST_KAPPA`` (0.4), beside the judge_
columns its scores fill. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd
import streamlit as st

from llmlab.errors import LlmlabError
from llmlab.evaluate import EvaluateConfig, Leaderboard
from llmlab.evaluate.agreement import agreements
from llmlab.evaluate.choices import (MISSING, cached_board, column_name, headline_metric, number_formats, pareto_rows,
                                     scoring_job, suite_from, unscored)
from llmlab.evaluate.judge import TRUST_KAPPA, trust_warning
from llmlab.evaluate.suites import metric_direction
from llmlab.jobs import FINAL
from llmlab.store import Store
from widgets import job_queue, job_status, start_button, task_bar

EXPORT_KEY = "export:model"
X_AXES = ("size_mb", "gen_tok_s")  # size on a log scale: variants span orders of magnitude
HELP = {name: f.description for name, f in EvaluateConfig.model_fields.items()}
# The table's columns unless "All columns" is ticked ("ACCURACY": each task set's accuracy): few enough to
# fit the page.
SHOWN = ("name", "kind", "size_mb", "ppl", "ACCURACY", "kld_mean", "kld_reference", "gen_tok_s", "speed_at",
         "quality_from", "error")
NEAR = 0.06  # labels of points closer than this share of the x range alternate above and below


# ----- drawing helpers (no Streamlit calls) -----
def table_rows(board: Leaderboard, every: bool) -> list[dict[str, object]]:
    """The board's rows with human column names: the ``SHOWN`` columns (those any row has), or every one."""
    cols = board.columns
    if not every:
        accuracies = [c for c in cols if c.endswith(".accuracy")]
        wanted = [c for s in SHOWN for c in (accuracies if s == "ACCURACY" else [s])]
        # provenance only where it says something: an error, a variant not (or not yet) scored
        telling = {"error": bool, "quality_from": lambda v: v != "cached"}
        cols = [c for c in wanted if c in cols and any(telling.get(c, lambda v: True)(r.get(c)) for r in board.rows)]
    return [{column_name(c): r.get(c) for c in cols} for r in board.rows]


def label_below(xs: list[float]) -> list[bool]:
    """For points at ``xs``: whether each one's label goes below it, alternating along x where points
    crowd (closer than ``NEAR`` of the range), so that neighbours' names do not overprint."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    span = (max(xs) - min(xs)) or 1.0
    below, prev = [False] * len(xs), None
    for i in order:
        if prev is not None and (xs[i] - xs[prev]) / span < NEAR:
            below[i] = not below[prev]
        prev = i
    return below


def chart_data(board: Leaderboard, x: str, y: str) -> pd.DataFrame:
    """``pareto_rows`` as a frame with human column names (name, kind, x, y, pareto, below), empty when no
    row has both values (human names also keep Vega-Lite from reading 'heldout.accuracy' as a nested
    field); ``below`` places a label under its point (``label_below``, on the chart's log scale for size)."""
    rows = pareto_rows(board, x, y)
    at = {r["name"]: r.get("speed_at") for r in board.rows}
    frame = pd.DataFrame(rows, columns=["name", "kind", x, y, "pareto"])
    frame["below"] = label_below([math.log(v) if x == "size_mb" else v for v in frame[x]]) if rows else []
    if x == "gen_tok_s":
        frame["speed measured"] = [at.get(n) for n in frame["name"]]
    return frame.rename(columns={x: column_name(x), y: column_name(y)})


def pareto_chart(data: pd.DataFrame, x: str, y: str) -> alt.LayerChart:
    """Every point labelled with its name, axes fitted to the data (log size), the Pareto front dashed."""
    xs, ys = column_name(x), column_name(y)
    x_scale = (alt.Scale(type="log", nice=False, padding=24) if x == "size_mb"
               else alt.Scale(zero=False, nice=False, padding=24))
    base = alt.Chart(data).encode(
        x=alt.X(field=xs, type="quantitative", title=xs, scale=x_scale,
                axis=alt.Axis(format="~g" if x == "size_mb" else ",.0f")),
        y=alt.Y(field=ys, type="quantitative", title=ys, axis=alt.Axis(format="~g"),
                scale=alt.Scale(zero=False, nice=False, padding=24)))
    tooltip = [c for c in data.columns if c not in ("pareto", "below")]
    points = base.mark_circle(size=90).encode(
        color=alt.Color(field="kind", type="nominal", legend=alt.Legend(orient="bottom")), tooltip=tooltip)
    above = base.transform_filter(~alt.datum.below).mark_text(align="left", dx=7, dy=-8, fontSize=11)
    under = base.transform_filter(alt.datum.below).mark_text(align="left", dx=7, dy=12, fontSize=11)
    line = base.transform_filter(alt.datum.pareto).mark_line(strokeDash=[4, 3], color="gray")
    labels = [layer.encode(text=alt.Text(field="name")) for layer in (above, under)]
    return alt.layer(line, points, *labels).properties(height=360)


JUDGE_COLUMNS = ("model", "judge", "kappa", "n", "agreement", "pass_rate", "kappa_f1", "mode", "trusted",
                 "measured_at")


def judges_block(store: Store) -> None:
    """Each measured judge's kappa against exact match, with a warning for each one too low to trust."""
    found = agreements(store)
    if not found:
        return
    st.subheader("LLM judges")
    st.dataframe(pd.DataFrame([{c: r.get(c) for c in JUDGE_COLUMNS} for r in found.values()]), hide_index=True,
                 width="stretch")
    for name, r in found.items():
        warning = trust_warning(r.get("kappa"), int(r.get("n") or 0))
        if warning:
            st.warning(f"{name}: {warning}.")
    st.caption(f"kappa: Cohen's kappa of the judge's pass/fail against exact match on SQuAD answers (right and "
               f"wrong); a judge's scores (judge_ columns) are trusted from kappa {TRUST_KAPPA}.")


# ----- page -----
def main() -> None:
    store = Store()
    queue = job_queue(str(store.root))
    st.title("Leaderboard")
    st.markdown("Every variant in the store scored on the same suite: perplexity on held-out text, KL divergence "
                "and top-1 agreement against its parent, task accuracy, size, and speed when measured.")
    judges_block(store)
    c1, c2, c3 = st.columns([2, 2, 1])
    tasks = c1.text_input("Task sets", "heldout", key="board:tasks", help=HELP["tasks"])
    texts = c2.text_input("Perplexity texts", "auto", key="board:texts", help=HELP["texts"])
    limit = c3.number_input("Questions per task", 1, 10_000, 100, key="board:limit")
    try:
        config = suite_from(tasks, texts, int(limit))
        board = cached_board(store, None, config)
    except LlmlabError as e:
        st.info(str(e))
        return
    if not board.rows:
        st.info(f"There is nothing to evaluate in the store at {store.root}: build or add a model first "
                "(`llmlab run recipes/quickstart.yaml`).")
        return
    missing = unscored(board)
    speed = st.checkbox("Also measure speed and memory (fresh)", key="board:speed", help=HELP["speed"])
    label = f"Score what is missing ({len(missing)})" if missing else "Score again (speed only)"
    job_config = scoring_job(config, board, speed=speed)
    start_button(queue, "evaluate", job_config, label=label,
                 title="evaluate", session_key="board:job", disabled=not missing and not speed)
    job_id = st.session_state.get("board:job")
    if job_id:
        job = job_status(queue, queue.get(job_id), "board")
        task_bar(queue.progress(job.id))
        if job.status not in FINAL:
            st.caption("The table fills in when the job ends (rerun the page).")

    f1, f2, f3, f4 = st.columns([2, 2, 1, 1])
    kinds = f1.multiselect("Kinds", sorted({r["kind"] for r in board.rows}), key="board:kinds")
    contains = f2.text_input("Name contains", key="board:contains")
    hide_failed = f3.checkbox("Hide failed", key="board:hide")
    every = f4.checkbox("All columns", key="board:all", help="Also exact match, F1, NLL, KLD p99, parents, "
                        "prompt speed, first-token time, when each was scored...")
    shown = board.filter(kinds=kinds, contains=contains, errors=not hide_failed)
    rows = table_rows(shown, every)
    st.dataframe(rows, hide_index=True, width="stretch", placeholder=MISSING, column_config={
        "name": st.column_config.Column(pinned=True),
        **{c: st.column_config.NumberColumn(format=f) for c, f in number_formats(list(rows[0]) if rows else []).items()}})
    st.caption("— not measured. KLD and top-1 against each variant's reference parent. scores from: cached "
               "(same content, suite, data and versions), not scored yet, failed. Speed as last measured for "
               "each variant, at the time and machine load in 'speed measured': compare speeds taken alike.")
    d1, d2 = st.columns(2)
    d1.download_button("Download CSV", shown.to_csv(), "leaderboard.csv", "text/csv", key="board:csv")
    d2.download_button("Download Markdown", shown.to_markdown(), "leaderboard.md", "text/markdown", key="board:md")

    metrics = shown.metrics()
    if not metrics:
        st.info("No scores yet: start the job above.")
        return
    headline = headline_metric(config)
    metric = st.selectbox("Quality metric", metrics, index=metrics.index(headline) if headline in metrics else 0,
                          key="board:metric", format_func=column_name,
                          help="Lower is better for perplexity and KL divergence, higher for the others.")
    for x in X_AXES:
        data = chart_data(shown, x, metric)
        if len(data):
            st.altair_chart(pareto_chart(data, x, metric), width="stretch")
    winner = shown.best(metric)
    if winner is not None:
        better = "highest" if metric_direction(metric) else "lowest"
        st.markdown(f"Winner on **{column_name(metric)}** ({better}): **{winner['name']}** ({winner['kind']}).")
        if st.button("Send the winner to Export", key="board:export"):
            st.session_state[EXPORT_KEY] = winner["name"]
        if st.session_state.get(EXPORT_KEY):
            st.success(f"The Export page will open on {st.session_state[EXPORT_KEY]}.")


if __name__ == "__main__":
    main()
