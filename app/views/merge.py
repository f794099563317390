"""Merge: combine models and adapters, see up front whether they fit, compare the merge with its parents.

Pick the inputs (models and adapters from the store), a method (every mergekit method, ``unload``
and peft's adapter combinations, from ``llmlab.merge.methods``), weights and densities with
sliders, and read the compatibility report (``check_compatibility``: architectures, sizes,
vocabularies, tokenizers, chat templates and the memory estimate, from config and tokenizer files
only) before starting a one-step ``merge`` recipe as a job. Below, a merge beside its parents: the
Leaderboard's figures for each (``llmlab.evaluate.choices.scores``, the numbers every page shows) and
the merge evaluation's per-skill accuracies (same questions for all) in a table and a chart; the
merge or any parent can be chatted with. Nothing imports torch until a chat loads a model.

What the form offers for a method and the config it stands for come from ``llmlab.merge.choices``;
the merges, their comparison with their parents, retention and the anchor advice from
``llmlab.merge.lineage`` (read from manifests and metrics). The page only lays out widgets and calls
them. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from llmlab.catalog import default_model_index
from llmlab.errors import LlmlabError
from llmlab.evaluate.choices import (MISSING, column_name, default_suite, headline_metric, leaderboard_winner,
                                     number_formats, scores)
from llmlab.jobs import FINAL, JobInfo, JobQueue
from llmlab.merge.choices import (DEFAULT_DENSITY, config_from_form, default_name, default_weight,
                                  method_parameters, takes_base, takes_densities, takes_t, takes_weights,
                                  writes_adapter_or_model)
from llmlab.merge.lineage import (GROUPS, accuracy_by_skill, comparison_rows, merged_artifacts, parents_in_store,
                                  retention, suggests_anchor)
from llmlab.merge.step import MergeConfig, check_compatibility, methods
from llmlab.store import HF_KINDS, MODEL_KINDS, Store
from widgets import chat_panel, job_panel, job_queue, start_button

HELP = {name: f.description for name, f in MergeConfig.model_fields.items()}
# The Leaderboard's figures shown for a merge and each parent (``llmlab.evaluate.choices.scores``).
SCORE_COLUMNS = ("size (MB)", "perplexity", column_name(headline_metric(default_suite())), "KLD vs reference",
                 "reference")


# ----- the page -----
def merge_form(store: Store, queue: JobQueue) -> None:
    arts = [a for a in store.list() if a.kind in HF_KINDS]
    known = methods()
    c1, c2 = st.columns([2, 1])
    models = c1.multiselect("Models and adapters", [a.name for a in arts], key="merge:models",
                            format_func=lambda n: f"{n} ({store.get(n).kind})", help=HELP["models"])
    method = c2.selectbox("Method", list(known), index=list(known).index("ties"), key="merge:method",
                          format_func=lambda n: f"{n} · {known[n].pretty}", help=HELP["method"])
    info = known[method]
    base: str | None = None
    if takes_base(info):
        choices = ["(the adapters' base)"] + [a.name for a in arts if a.kind in MODEL_KINDS]
        picked = st.selectbox("Base model", choices, key="merge:base", help=HELP["base"])
        base = None if picked == choices[0] else picked
    weights = densities = None
    if models and takes_weights(info):
        cols = st.columns(len(models))
        weights = [cols[i].slider(f"weight · {m}", 0.0, 1.0, default_weight(method, len(models)), 0.05,
                                  key=f"merge:w:{m}") for i, m in enumerate(models)]
    if models and takes_densities(info):
        cols = st.columns(len(models))
        densities = [cols[i].slider(f"density · {m}", 0.05, 1.0, DEFAULT_DENSITY, 0.05, key=f"merge:d:{m}")
                     for i, m in enumerate(models)]
    parameters: dict[str, float | bool] = {}
    if takes_t(info):
        parameters["t"] = st.slider("t (0: base, 1: the other model)", 0.0, 1.0, 0.5, 0.05, key="merge:t")
    extra = method_parameters(info)
    if extra:
        with st.expander(f"{method} parameters"):
            for pname, default in extra.items():
                wkey = f"merge:p:{method}:{pname}"
                if isinstance(default, bool):
                    value = st.checkbox(pname, default, key=wkey)
                elif isinstance(default, int):
                    value = st.number_input(pname, value=default, step=1, key=wkey)
                else:
                    value = st.number_input(pname, value=float(default), format="%g", key=wkey)
                if value != default:
                    parameters[pname] = value
    output = "model"
    if writes_adapter_or_model(info):
        output = st.radio("Write", ["model", "adapter"], horizontal=True, key="merge:output", help=HELP["output"])
    suggested = default_name(models, method)
    # keyed by the default: a keyed widget would keep the first name when other models or a method are picked
    name = st.text_input("Name of the merge", suggested, key=f"merge:name:{suggested}", help=HELP["name"]).strip()

    problems: list[str] = []
    tokenizer_source = None
    if models:
        st.markdown("**Compatibility**")
        try:
            report = check_compatibility(models, base, store=store)
        except LlmlabError as e:
            report = None
            problems.append(str(e))
        if report is not None:
            st.dataframe(report.rows, hide_index=True)
            if report.needs_tokenizer_choice:
                tokenizer_source = st.selectbox("Vocabularies differ: tokenizer source", report.tokenizer_options,
                                                key="merge:tokenizer", help=HELP["tokenizer_source"])
                report = check_compatibility(models, base, store=store, tokenizer_source=tokenizer_source)
            problems += report.problems
            for w in report.warnings:
                st.warning(w)
            st.caption(f"Memory needed (estimate): about {report.memory_bytes / 2**20:,.0f} MB.")
            if report.ok:
                st.success("These inputs can be merged.")
    else:
        problems.append("Pick the models or adapters to merge.")
    try:
        if name and store.exists(name):
            st.caption(f"'{name}' is already in the store (replaced, unless made with the same settings).")
    except LlmlabError as e:  # not a valid artifact name
        problems.append(str(e))
    for p in problems:
        (st.error if models else st.info)(p)
    config = config_from_form(name, method, models, base, weights, densities, parameters, tokenizer_source, output)
    start_button(queue, "merge", config, label="Start merging", title=f"merge {name}", session_key="merge:job",
                 disabled=bool(problems) or not name, where="the Merge form")


def latest_job(queue: JobQueue) -> JobInfo | None:
    job_id = st.session_state.get("merge:job")
    if job_id:
        try:
            return queue.get(job_id)
        except LlmlabError:
            return None
    return None


def results(store: Store) -> None:
    st.subheader("Merges against their parents")
    merges = merged_artifacts(store)
    if not merges:
        st.caption("No merges in the store yet: start one above (or run `llmlab run recipes/merge.yaml`).")
        return
    names = [a.name for a in merges]
    name = st.selectbox("Merge", names, key="merge:result",
                        index=default_model_index(store, names, "merge", winner=leaderboard_winner(store, names)))
    art = store.get(name)
    info = art.manifest.info
    st.caption(f"method **{info.get('method')}** · inputs {', '.join(info.get('inputs') or [])}"
               + (f" · tokenizer source {info['tokenizer_source']}" if info.get("tokenizer_source") else ""))
    rows = comparison_rows(art)
    board = scores(store, [r["model"] for r in rows])
    skills = [g for g in GROUPS if any(r[f"accuracy_{g}"] is not None for r in rows)]
    table = [{"model": r["model"], "role": r["role"], "weight": r["weight"],
              **{c: board.get(r["model"], {}).get(c) for c in SCORE_COLUMNS},
              **{f"{g} accuracy (merge eval)": r[f"accuracy_{g}"] for g in skills}} for r in rows]
    st.dataframe(table, hide_index=True, placeholder=MISSING, column_config={
        "model": st.column_config.Column(pinned=True),
        **{c: st.column_config.NumberColumn(format=f) for c, f in number_formats(list(table[0])).items()},
        **{c: st.column_config.NumberColumn(format="%.3f") for c in table[0] if c.endswith("(merge eval)")}})
    st.caption("Perplexity, accuracy and KLD as on the Leaderboard (— where it has not scored a model yet)"
               + ("; per-skill accuracies from the merge's own evaluation, the same questions for the merge and "
                  "each parent." if skills else "."))
    kept = retention(art)
    if kept:
        st.caption("Retention (merge accuracy / specialist accuracy on the specialist's own skill): " +
                   ", ".join(f"{k} {v:.0%}" if v is not None else f"{k} n/a" for k, v in kept.items()))
        if suggests_anchor(art, store):
            st.info("A specialist lost much of its skill in this merge, and its adapter was tuned without an "
                    "anchor. Tune specialists with `anchor:` set to the other skills' data (a KL term that keeps "
                    "the base's answers there): on the demo, task arithmetic then keeps 87-100% of both skills "
                    "instead of 8-78% (docs/merge.md).")
    data = pd.DataFrame(accuracy_by_skill(rows))
    if data.empty:
        st.caption("No per-skill scores: the merge step did not evaluate this merge (no demo world, or evaluate "
                   "was off).")
    else:
        chart = alt.Chart(data).mark_bar().encode(x=alt.X("model:N", title=None), y=alt.Y("accuracy:Q"),
                                                  color="model:N", column=alt.Column("skill:N"))
        st.altair_chart(chart)
    st.subheader("Chat")
    names = [art.name, *parents_in_store(art, store)]
    who = st.selectbox("Chat with", names, key="merge:chat")
    chat_panel(store, store.get(who), key="merge:chat")


def main() -> None:
    store = Store()
    queue = job_queue(str(store.root))
    st.title("Merge")
    st.markdown("Combine models or adapters into one model (every mergekit method, or peft's adapter "
                "combinations), check first that they fit, and compare the merge with its parents.")
    if not any(a.kind in HF_KINDS for a in store.list()):
        st.info("The store has no models or adapters to merge. Run `llmlab run recipes/merge.yaml` (it tunes two "
                "skill adapters on the demo model and merges them) or import models with `llmlab models add`.")
        return
    st.subheader("New merge")
    with st.container(border=True):
        merge_form(store, queue)
    job = latest_job(queue)
    if job is not None:
        st.subheader("Job")
        st.fragment(run_every=1 if job.status not in FINAL else None)(job_panel)(queue, job.id, "merge")
    results(store)


if __name__ == "__main__":
    main()
