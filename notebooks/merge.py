"""The Merge station: two skill adapters merged into one model, compared with a multi-task adapter.

Run it with `marimo edit notebooks/merge.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small"; micro trains for a
few steps only, for tests) and LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Merging two skills into one model

    A LoRA adapter tuned on one skill changes the model by a small **task vector** (tuned weights
    minus base weights). Merging adds such vectors: **task arithmetic** adds them, **TIES** first
    drops each vector's small entries and the entries whose sign disagrees with the majority,
    **linear** averages the two models. This notebook tunes two specialists on the demo world
    (facts about **people**: home, job, pet, colour; facts about **places**: country, river,
    dish), merges them with several methods, and compares every merge with the specialists and
    with one **multi-task** adapter tuned on both skills, question by question on held-out
    phrasings. The number to watch: how much of each specialist's accuracy on its *own* skill the
    merge keeps (the goal is at least 70%).

    The lesson: how the specialists are **tuned** matters more than how they are merged. Tuned on
    their skill alone, each adapter also changes the answers to the *other* skill's questions (the
    places adapter answers "curry" to "Which animal is Zikoum's pet?"), and every merge inherits
    that. Tuned with an **anchor** (a KL term that keeps the base model's predictions on the other
    skill's questions), each adapter changes only its own skill, and plain task arithmetic merges
    them almost losslessly. The notebook tunes both pairs and merges both. Every cell calls
    `llmlab`: the same calls the `recipes/merge.yaml` steps, `llmlab merge` and the app's Merge page
    make.
    """)
    return


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import pandas as pd

    from llmlab import recipes
    from llmlab.build import open_or_build
    from llmlab.merge.step import MergeConfig, check_compatibility
    from llmlab.settings import notebook_settings
    from llmlab.store import Store
    from llmlab.tune import TuneConfig

    return (
        MergeConfig,
        Store,
        TuneConfig,
        alt,
        open_or_build,
        check_compatibility,
        mo,
        notebook_settings,
        pd,
        recipes,
    )


@app.cell
def _(Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    # The same adapters as recipes/merge.yaml; micro (tests) trains for a few steps only.
    SPECIALISTS = {f"{MODEL_NAME}-people": "people", f"{MODEL_NAME}-places": "places"}  # anchored
    PLAIN = {f"{MODEL_NAME}-people-plain": "people", f"{MODEL_NAME}-places-plain": "places"}
    MULTI = f"{MODEL_NAME}-multi"
    TUNE_STEPS = 4 if SIZE == "micro" else None
    store = Store()
    mo.md(f"The store is `{store.root}`; the base is the **{SIZE}** demo model `{MODEL_NAME}`.")
    return AUTORUN, MODEL_NAME, MULTI, PLAIN, SIZE, SPECIALISTS, TUNE_STEPS, store


@app.cell(hide_code=True)
def _(MODEL_NAME, mo):
    build_button = mo.ui.run_button(label=f"Open or build '{MODEL_NAME}' and tune the adapters", kind="success")
    mo.vstack([
        mo.md(r"""
    ## The base and five adapters

    The base is the demo model (built if the store lacks it). Two LoRA specialists learn one
    relation group each (`data: world:tune:people`, `world:tune:places`) with the other group's
    questions as their `anchor` (`anchor_weight: 0.3`); two more learn the same without an anchor
    (`-plain`), and a fifth learns both groups (multi-task). Each adapter is one `tune` step of a
    recipe, run by `recipes.run_step` as `llmlab run` runs it: a step whose adapter is already in
    the store with the same settings and base is skipped (so `recipes/merge.yaml`'s own adapters are
    reused).
    """),
        build_button,
    ])
    return (build_button,)


@app.cell
def _(
    AUTORUN,
    MODEL_NAME,
    MULTI,
    PLAIN,
    SIZE,
    SPECIALISTS,
    TUNE_STEPS,
    TuneConfig,
    build_button,
    open_or_build,
    mo,
    recipes,
    store,
):
    mo.stop(not (build_button.value or AUTORUN), mo.md("*Press the button above to build and tune.*"))
    open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    _other = {"people": "places", "places": "people"}
    _skills = {**SPECIALISTS, **PLAIN, MULTI: "people,places"}
    _tune_steps = [
        recipes.make_step("tune", TuneConfig(
            name=_name, model=MODEL_NAME, data=f"world:tune:{_skill}", steps=TUNE_STEPS,
            # places has ~3.5x fewer tuning records than people: more epochs for about as many steps
            epochs=30 if _skill == "places" else 8,
            # the specialists keep the base's answers on the other skill's questions
            **({"anchor": f"world:tune:{_other[_skill]}", "anchor_weight": 0.3} if _name in SPECIALISTS else {})))
        for _name, _skill in _skills.items()
    ]
    with mo.status.progress_bar(total=len(_tune_steps), title="Tuning the adapters") as _bar:
        for _step in _tune_steps:
            recipes.run_step(_step, store=store)  # skipped when the adapter is current
            _bar.update(subtitle=_step.output_names()[0])
    adapters = {n: store.get(n) for n in _skills}
    mo.md("Adapters: " + ", ".join(f"**{n}** ({a.manifest.info.get('records')} records, "
                                   f"{a.manifest.info.get('steps')} steps)" for n, a in adapters.items()))
    return (adapters,)


@app.cell
def _(SPECIALISTS, adapters, check_compatibility, mo, store):
    _ = adapters
    report = check_compatibility(list(SPECIALISTS), store=store)
    mo.vstack([
        mo.md("## Can they be merged?\n\nCompared from config and tokenizer files only, before any weight is "
              f"read: **{'yes' if report.ok else 'no: ' + '; '.join(report.problems)}**. Memory needed: about "
              f"{report.memory_bytes / 2**20:,.0f} MB."),
        mo.ui.table(report.rows, selection=None, show_download=False),
    ])
    return


@app.cell(hide_code=True)
def _(mo):
    merge_button = mo.ui.run_button(label="Merge and score", kind="success")
    mo.vstack([
        mo.md(r"""
    ## Merge with several methods

    Each `merge` step (a `MergeConfig`, run like the tune steps above) writes a `merged` artifact
    whose manifest lists the base and both adapters with their weights, plus the `mergekit.yml` it
    ran, then scores the merge and its parents on the same held-out text and questions, per
    relation group. The anchored pair is
    merged by task arithmetic at full weight, TIES and a plain average; the plain pair by task
    arithmetic at full weight and by the best setting found for it (breadcrumbs TIES, places at
    0.7). The multi-task adapter is merged into the base (`unload`) so it is scored the same way.
    """),
        merge_button,
    ])
    return (merge_button,)


@app.cell
def _(
    AUTORUN,
    MODEL_NAME,
    MULTI,
    MergeConfig,
    PLAIN,
    SIZE,
    SPECIALISTS,
    adapters,
    merge_button,
    mo,
    recipes,
    store,
):
    _ = adapters
    mo.stop(not (merge_button.value or AUTORUN), mo.md("*Press the button above to merge.*"))
    _pair, _plain = list(SPECIALISTS), list(PLAIN)
    _qa = 10 if SIZE == "micro" else 200
    _configs = [
        MergeConfig(name=f"{MODEL_NAME}-merge-ta", method="task_arithmetic", models=_pair, weights=[1.0, 1.0],
                    qa_limit=_qa),
        MergeConfig(name=f"{MODEL_NAME}-merge-ties", method="ties", models=_pair, weights=[1.0, 1.0],
                    densities=[0.8, 0.8], qa_limit=_qa),
        MergeConfig(name=f"{MODEL_NAME}-merge-linear", method="linear", models=_pair, weights=[0.5, 0.5],
                    qa_limit=_qa),
        MergeConfig(name=f"{MODEL_NAME}-merge-plain-ta", method="task_arithmetic", models=_plain,
                    weights=[1.0, 1.0], qa_limit=_qa),
        MergeConfig(name=f"{MODEL_NAME}-merge-plain-breadcrumbs", method="breadcrumbs_ties", models=_plain,
                    weights=[1.0, 0.7], densities=[0.8, 0.8], qa_limit=_qa),
        MergeConfig(name=f"{MODEL_NAME}-multi-merged", method="unload", models=[MULTI], qa_limit=_qa),
    ]
    with mo.status.progress_bar(total=len(_configs), title="Merging and scoring") as _bar:
        for _c in _configs:
            recipes.run_step(recipes.make_step("merge", _c), store=store)  # skipped when the merge is current
            _bar.update(subtitle=_c.name)
    merges = [store.get(_c.name) for _c in _configs]
    return (merges,)


@app.cell
def _(PLAIN, SPECIALISTS, merges, mo, pd):
    _groups = ("people", "places", "objects")
    _scores = {}  # every parent as its merges scored it: base, anchored and plain specialists, multi-task
    for _m in merges:
        _scores.update({k: v for k, v in _m.metrics["parents"].items() if k not in _scores})
    _base = next(p.name for p in merges[0].manifest.parents if p.role == "base")
    _roles = {_base: "base", **{n: "specialist" for n in SPECIALISTS}, **{n: "plain specialist" for n in PLAIN}}
    _rows = [{"model": _name, "role": _role, **{g: _scores[_name].get(f"accuracy_{g}") for g in _groups},
              "ppl": _scores[_name].get("ppl")} for _name, _role in _roles.items()]
    for _m in merges:
        _multi = _m.manifest.info["method"] == "unload"
        _row = {"model": _m.name, "role": "multi-task" if _multi else _m.manifest.info["method"],
                **{g: _m.metrics.get(f"accuracy_{g}") for g in _groups}, "ppl": _m.metrics.get("ppl")}
        # what the merge keeps of its own parents' skills (the multi-task model: of the anchored specialists')
        _of = SPECIALISTS if _multi else {p.name: SPECIALISTS.get(p.name) or PLAIN.get(p.name)
                                          for p in _m.manifest.parents if p.role != "base"}
        for _s, _g in _of.items():
            _theirs = _scores[_s].get(f"accuracy_{_g}") or 0
            _row[f"keeps {_g}"] = round(_row[_g] / _theirs, 3) if _theirs else None
        _rows.append(_row)
    table = pd.DataFrame(_rows)
    _merged = table[~table["role"].isin(["base", "specialist", "plain specialist", "multi-task"])]
    _keep = _merged[["keeps people", "keeps places"]].min(axis=1)
    best = _merged.loc[_keep.idxmax(), "model"] if len(_keep.dropna()) else None
    best_keep = float(_keep.max()) if len(_keep.dropna()) else None
    _plain = table[table["role"] == "plain specialist"].set_index("model")
    _vs_plain = ""
    if best is not None:
        _b = table.set_index("model").loc[best]
        _share = [_b[g] / _plain.loc[n, g] for n, g in PLAIN.items() if _plain.loc[n, g]]
        if len(_share) == 2:
            _vs_plain = (f" Against the plain specialists (no anchor), whose scores are higher, it still keeps "
                         f"{_share[0]:.0%} of people and {_share[1]:.0%} of places.")
    mo.vstack([
        mo.md("## The comparison\n\nHeld-out accuracy per relation group (questions phrased differently from "
              "the tuning ones), world-text perplexity, and what share of each specialist's accuracy on its "
              "own skill the merge keeps (of its own parents: anchored or plain):"),
        mo.ui.table(table, selection=None, show_download=False),
        mo.md(f"The best merge is **{best}**: it keeps at least **{best_keep:.0%}** of each specialist's "
              f"score on its own skill (goal: 70%).{_vs_plain}" if best is not None else "No merge was scored."),
    ])
    return best, best_keep, table


@app.cell
def _(alt, mo, pd, table):
    _long = pd.DataFrame([{"model": r["model"], "skill": g, "accuracy": r[g]} for r in table.to_dict("records")
                          for g in ("people", "places") if r.get(g) is not None])
    _chart = alt.Chart(_long).mark_bar().encode(x=alt.X("model:N", title=None, sort=None), y="accuracy:Q",
                                                color="model:N", column="skill:N")
    mo.ui.altair_chart(_chart)
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - `llmlab merge --name x --method ties --models "[a, b]" --densities 0.7,0.7` runs the same from the
      shell, and `llmlab merge --name x --mergekit-yaml my.yml` runs a mergekit YAML you already have.
    - Every merge carries `mergekit.yml`: `mergekit-yaml` reruns it outside llmlab.
    - The app's **Merge** page shows the compatibility report before starting, and chats with the merge.
    - Try the methods this notebook did not: `della` with `epsilon`, `dare_ties` with several seeds,
      per-layer weight gradients (`weights: [[1.0, 0.5], [0.7, 1.0]]`), or `peft_svd` to combine the two
      adapters into one adapter of a chosen rank; `docs/merge.md` lists ~90 settings already measured
      on the plain specialists.
    - Change `anchor_weight`: 1.0 keeps the merge closer still to its parents but weakens the people
      specialist (94.5% -> 80.5%); 0.1 leaves more interference. Anchor a specialist on general text
      (a `.txt` file) to keep it from drifting on everything else too.
    - Quantize the best merge (`llmlab quantize`) and put it on the leaderboard beside its parents.
    """)
    return


if __name__ == "__main__":
    app.run()
