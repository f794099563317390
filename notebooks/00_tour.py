"""The llmlab tour: the demo world, the demo model, a chat with it and its training curve.

Run it with `marimo edit notebooks/00_tour.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small") and
LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # A tour of llmlab

    This notebook walks through the first station of the lab. You will see the **demo world**, a
    small made-up universe of people, towns and objects generated from a seed, so that nothing a
    model says about it can come from real data; then **build** (or open) the demo model, a tiny
    Llama trained from scratch on that world's text; **chat** with it; and plot its **training
    loss**. Every cell calls the `llmlab` library: what you do here is what a recipe step, the CLI
    and the app do too.
    """)
    return


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import pandas as pd

    from llmlab import scoring, world
    from llmlab.build import open_or_build
    from llmlab.settings import notebook_settings
    from llmlab.store import Store

    return Store, alt, mo, open_or_build, notebook_settings, pd, scoring, world


@app.cell
def _(Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    store = Store()
    mo.md(f"The store is `{store.root}`; this tour uses the **{SIZE}** demo model `{MODEL_NAME}`.")
    return AUTORUN, MODEL_NAME, SIZE, store


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The demo world

    `world.generate(seed, size)` is deterministic. Each fact is stated in several phrasings for
    pretraining; questions come in three splits: `tune` (phrasings a tuning step may train on),
    `heldout` (the same facts asked in phrasings never trained on) and `rag` (entities that appear
    only in documents, for the retrieval agents).
    """)
    return


@app.cell
def _(SIZE, mo, world):
    the_world = world.generate(seed=0, size=SIZE)
    _stats = the_world.stats()
    _facts = [{"entity": e, "relation": r, "answer": a} for e, r, a in the_world.facts(doc_only=False)[:10]]
    mo.vstack([
        mo.md(f"{_stats['facts']} facts about {sum(_stats['entities'].values())} entities "
              f"({', '.join(f'{n} {k}s' for k, n in _stats['entities'].items())}), "
              f"{_stats['texts']} training texts. A few facts:"),
        mo.ui.table(_facts, selection=None, show_download=False),
    ])
    return (the_world,)


@app.cell
def _(mo, the_world):
    _columns = ("question", "answer", "entity", "relation")
    mo.ui.tabs({
        f"{split} ({len(the_world.split(split))})": mo.ui.table(
            [{k: q[k] for k in _columns} for q in the_world.split(split)[:12]], selection=None, show_download=False)
        for split in ("tune", "heldout", "rag")
    } | {
        f"documents ({len(the_world.documents)})": mo.ui.table(
            the_world.documents[:8], selection=None, show_download=False),
    })
    return


@app.cell(hide_code=True)
def _(MODEL_NAME, mo):
    build_button = mo.ui.run_button(label=f"Open or build '{MODEL_NAME}'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## The demo model

    `build_demo` trains a byte-level BPE tokenizer and a small Llama on the world's texts and
    writes a `base` artifact to the store (weights, tokenizer, the world, `training_log.jsonl` and
    a manifest with file hashes). The small size takes a few minutes on two CPU cores; if the store
    already holds the model, it is opened instead.
    """),
        build_button,
    ])
    return (build_button,)


@app.cell
def _(AUTORUN, MODEL_NAME, SIZE, build_button, mo, open_or_build, store):
    mo.stop(not (build_button.value or AUTORUN), mo.md("*Press the button above to open or build the model.*"))
    # build_demo reports {"type": "progress", "done": i, "total": n} as it trains; open_or_build
    # turns those into steps of the progress bar (llmlab.events.bar_updates).
    artifact = open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    _info = artifact.manifest.info
    mo.md(f"""
    **{artifact.name}** ({artifact.kind}): {_info.get('n_params', 0):,} parameters, {_info.get('layers')} layers,
    vocabulary {_info.get('vocab_size')}, trained {_info.get('steps')} steps in {_info.get('train_seconds')} s
    (final loss {_info.get('train_loss')}). Content hash `{artifact.content_hash[:12]}`.
    """)
    return (artifact,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Chat with it

    `llmlab.runtime.load(name)` opens any chat-able artifact (safetensors through transformers,
    GGUF through llama.cpp) behind one interface. Greedy decoding (`SamplingParams.greedy()`)
    gives the model's single likeliest answer. The system prompt is the one it was trained with.
    """)
    return


@app.cell
def _(artifact, store):
    from llmlab.runtime import SamplingParams, load

    model = load(artifact.name, store=store)  # kept open for the cells below
    return SamplingParams, model


@app.cell
def _(mo, the_world):
    question = mo.ui.text(value=the_world.split("tune")[0]["question"], label="Ask the model", full_width=True)
    question
    return (question,)


@app.cell
def _(SamplingParams, mo, model, question, the_world, world):
    answer = model.chat(world.chat_messages(question.value), SamplingParams.greedy(max_tokens=16))
    _gold = next((q["answer"] for q in the_world.qa if q["question"] == question.value), None)
    mo.md(f"**Answer:** {answer or '(nothing)'}" + (f" (the world says: *{_gold}*)" if _gold else ""))
    return


@app.cell
def _(SamplingParams, mo, model, scoring, the_world, world):
    _rows = []
    for _split in ("tune", "heldout"):
        for _q in the_world.split(_split)[:4]:
            _got = model.chat(world.chat_messages(_q["question"]), SamplingParams.greedy(max_tokens=8))
            _rows.append({"split": _split, "question": _q["question"], "gold": _q["answer"], "model": _got,
                          "right": scoring.answer_matches(_got, _q["answer"])})
    mo.vstack([mo.md("A few questions from two splits (the model has not been tuned yet):"),
               mo.ui.table(_rows, selection=None, show_download=False)])
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## How it learned

    The build wrote its training log next to the weights: training loss every few steps and the
    loss on held-out statements (`val_loss`) at each evaluation.
    """)
    return


@app.cell
def _(alt, artifact, mo, pd):
    loss_frame = pd.read_json(artifact.path / "training_log.jsonl", lines=True)
    _long = loss_frame.melt(id_vars="step", value_vars=["loss", "val_loss"], var_name="series").dropna()
    mo.ui.altair_chart(
        alt.Chart(_long).mark_line(point=True).encode(
            x=alt.X("step:Q", title="optimizer step"), y=alt.Y("value:Q", title="cross-entropy"),
            color=alt.Color("series:N", title=None), tooltip=["step", "series", "value"],
        ).properties(height=280)
    )
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - Open the app (`streamlit run app/streamlit_app.py`): the **Models** page shows this artifact's
      manifest, lineage and metrics and lets you chat with other sampling settings; **Jobs** runs
      recipes in the background.
    - Score it: `llmlab run recipes/quickstart.yaml` builds and scores the demo model (perplexity,
      accuracy by split, speed), and the scores appear beside the artifact.
    - Change `LLMLAB_NOTEBOOK_SIZE` (micro, small, large) or the world seed and compare the curves.
    - Read `recipes/` and run one from the Jobs page: each step there is one library call, and
      `llmlab export-script` turns a recipe into a plain Python script you can edit.
    """)
    return


if __name__ == "__main__":
    app.run()
