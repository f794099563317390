"""Leaderboard: every variant in the store on one suite, filters, Pareto charts, downloads, and the winner
sent to Export.

The table is read from the quality cache (``llmlab.evaluate.evaluate(only_cached=True)``: no model is
loaded while the page draws); "Score what is missing" starts a one-step ``evaluate`` recipe as a job,
which scores only variants without a cached result (with speed and memory, fresh, when ticked).
Charts plot a quality metric against size on disk and, when measured, generation speed, with each
Pareto front drawn as a line. "Send to Export" puts the chosen winner in
``st.session_state["export:model"]``, which the Export page reads.

The suite a form stands for, the variants still to score, the scoring job and the chart's Pareto
points come from ``llmlab.evaluate.choices``; the page only lays out widgets and calls the library.
"LLM judges" lists each judge's measured agreement with exact match (``llmlab.evaluate.agreement``)
and warns plainly for every judge whose kappa is below ``TRUST_KAPPA`` (0.4), beside the judge_
columns its scores fill. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from llmlab.errors import LlmlabError
from llmlab.evaluate import EvaluateConfig, Leaderboard, evaluate
from llmlab.evaluate.agreement import agreements
from llmlab.evaluate.choices import pareto_rows, scoring_job, suite_from, unscored
from llmlab.evaluate.judge import TRUST_KAPPA, trust_warning
from llmlab.evaluate.suites import metric_direction
from llmlab.jobs import FINAL
from llmlab.store import Store
from widgets import job_queue, job_status, start_button, task_bar

EXPORT_KEY = "export:model"
X_AXES = {"size_mb": "size on disk (MB)", "gen_tok_s": "generation tokens/s"}
HELP = {name: f.description for name, f in EvaluateConfig.model_fields.items()}


# ----- drawing helpers (no Streamlit calls) -----
def chart_data(board: Leaderboard, x: str, y: str) -> pd.DataFrame:
    """``pareto_rows`` as a frame (name, kind, x, y, pareto), empty when no row has both values."""
    return pd.DataFrame(pareto_rows(board, x, y), columns=["name", "kind", x, y, "pareto"])


def pareto_chart(data: pd.DataFrame, x: str, y: str) -> alt.LayerChart:
    base = alt.Chart(data).encode(x=alt.X(x, title=X_AXES.get(x, x)), y=alt.Y(y, title=y))
    points = base.mark_circle(size=90).encode(color="kind:N", tooltip=["name", "kind", x, y, "pareto"])
    line = base.transform_filter(alt.datum.pareto).mark_line(strokeDash=[4, 3], color="gray")
    return points + line


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
        board = evaluate(config.model_copy(update={"only_cached": True}), store=store)
    except LlmlabError as e:
        st.info(str(e))
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

    f1, f2, f3 = st.columns([2, 2, 1])
    kinds = f1.multiselect("Kinds", sorted({r["kind"] for r in board.rows}), key="board:kinds")
    contains = f2.text_input("Name contains", key="board:contains")
    hide_failed = f3.checkbox("Hide failed", key="board:hide")
    shown = board.filter(kinds=kinds, contains=contains, errors=not hide_failed)
    st.dataframe(pd.DataFrame(shown.table()), hide_index=True, width="stretch")
    st.caption("quality_from: fresh (scored in that run), cached (same content, suite, data and versions), "
               "not scored yet; speed_from: fresh only when measured in this run.")
    d1, d2 = st.columns(2)
    d1.download_button("Download CSV", shown.to_csv(), "leaderboard.csv", "text/csv", key="board:csv")
    d2.download_button("Download Markdown", shown.to_markdown(), "leaderboard.md", "text/markdown", key="board:md")

    metrics = shown.metrics()
    if not metrics:
        st.info("No scores yet: start the job above.")
        return
    metric = st.selectbox("Quality metric", metrics, key="board:metric",
                          help="Lower is better for perplexity and KL divergence, higher for the others.")
    for x in X_AXES:
        data = chart_data(shown, x, metric)
        if len(data):
            st.altair_chart(pareto_chart(data, x, metric), width="stretch")
    winner = shown.best(metric)
    if winner is not None:
        better = "highest" if metric_direction(metric) else "lowest"
        st.markdown(f"Winner on **{metric}** ({better}): **{winner['name']}** ({winner['kind']}).")
        if st.button("Send the winner to Export", key="board:export"):
            st.session_state[EXPORT_KEY] = winner["name"]
        if st.session_state.get(EXPORT_KEY):
            st.success(f"The Export page will open on {st.session_state[EXPORT_KEY]}.")


if __name__ == "__main__":
    main()
