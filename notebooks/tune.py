"""The Tune station as a story: preview the masked data, tune a LoRA adapter, plot its losses,
compare base and tuned on held-out questions, and chat with both.

Run it with `marimo edit notebooks/tune.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small"; "micro" also
tunes for a single epoch, for CI) and LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Tuning the demo model

    The demo model read every fact of its world during pretraining, but it was never taught to
    *answer questions* about them. This notebook teaches it with **LoRA**: small low-rank matrices
    added beside the frozen weights, trained on the world's `tune` questions. You will see exactly
    what the model is trained on (the chat template applied, with the prompt **masked** so the loss
    only counts the answer), train an adapter, watch the training and validation loss, and measure
    what it learned on **held-out questions**: the same facts asked in phrasings it never saw, so a
    gain means it learned to use its knowledge rather than to repeat the tuning set. Finally you ask
    the base and the tuned model the same question, side by side. Every cell calls `llmlab`; the
    same call is a recipe's `tune` step, `llmlab tune` and the app's Tune page.
    """)
    return


@app.cell
def _():
    import html

    import altair as alt
    import marimo as mo
    import pandas as pd

    from llmlab import world
    from llmlab.build import open_or_build
    from llmlab.tune.distill import DistillConfig, distill
    from llmlab.events import bar_updates
    from llmlab.settings import notebook_settings
    from llmlab.store import Store
    from llmlab.tune import TuneConfig, preview, select_backend, tune
    from llmlab.tune.records import MASK_CLOSE, MASK_OPEN
    from llmlab.tune.report import example_question, student_vs_teacher

    return (
        DistillConfig,
        MASK_CLOSE,
        MASK_OPEN,
        Store,
        TuneConfig,
        alt,
        bar_updates,
        distill,
        example_question,
        html,
        mo,
        open_or_build,
        notebook_settings,
        pd,
        preview,
        select_backend,
        student_vs_teacher,
        tune,
        world,
    )


@app.cell
def _(Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    TUNED_NAME = f"{MODEL_NAME}-lora"
    store = Store()
    mo.md(f"The store is `{store.root}`; this notebook tunes the **{SIZE}** demo model `{MODEL_NAME}` "
          f"into the adapter `{TUNED_NAME}`.")
    return AUTORUN, MODEL_NAME, SIZE, TUNED_NAME, store


@app.cell(hide_code=True)
def _(MODEL_NAME, mo):
    build_button = mo.ui.run_button(label=f"Open or build '{MODEL_NAME}'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## The base model

    The same demo model as in the tour (`notebooks/00_tour.py`): opened from the store if it is
    there, otherwise built from the seeded world (a few minutes for the small size on two cores).
    """),
        build_button,
    ])
    return (build_button,)


@app.cell
def _(AUTORUN, MODEL_NAME, SIZE, build_button, mo, open_or_build, store):
    mo.stop(not (build_button.value or AUTORUN), mo.md("*Press the button above to open or build the model.*"))
    base_artifact = open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    mo.md(f"**{base_artifact.name}** ({base_artifact.kind}), {base_artifact.manifest.info.get('n_params', 0):,} "
          f"parameters, content hash `{base_artifact.content_hash[:12]}`.")
    return (base_artifact,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The settings

    One `TuneConfig` holds every option (the same model validates recipes, CLI flags and the app's
    form). The defaults tune the small demo well: rank 32, 8 epochs, learning rate 2e-3, loss on the
    answer only. `select_backend` says what will actually run on this machine, and why when it
    differs from what was asked (QLoRA and unsloth need an NVIDIA GPU).
    """)
    return


@app.cell
def _(SIZE, TUNED_NAME, TuneConfig, base_artifact, mo, select_backend):
    # micro is the CI size: one epoch and a few held-out questions keep the run short.
    _quick = {"epochs": 1, "qa_limit": 40} if SIZE == "micro" else {}
    config = TuneConfig(name=TUNED_NAME, model=base_artifact.name, data="world:tune", method="lora", **_quick)
    plan = select_backend(config)
    mo.vstack([
        mo.md(f"`{config.method}` with rank {config.rank}, alpha {config.lora_alpha():g}, learning rate "
              f"{config.lr():g}, {config.epochs:g} epochs, batch size {config.batch_size}: runs "
              f"**{plan.method}** with **{plan.backend}** on **{plan.device}**."),
        *[mo.callout(mo.md(_m), kind="warn") for _m in plan.messages],
    ])
    return (config,)


@app.cell(hide_code=True)
def _(MASK_CLOSE, MASK_OPEN, mo):
    mo.md(rf"""
    ## The data, as the model sees it

    `preview` applies the model's chat template to the first records, exactly as training will.
    The **greyed, struck-through** part (between {MASK_OPEN} and {MASK_CLOSE} in the plain text) is
    the prompt: system message and question. It is fed to the model but carries no loss, so the
    adapter learns to produce answers, not to predict questions. The **green** part is trained on.
    """)
    return


@app.cell
def _(config, html, mo, pd, preview, store):
    samples = preview(config, 3, store=store)

    def _render(sample):
        spans = [
            f'<span style="background:#dcfce7">{html.escape(s["text"])}</span>' if s["trained"] else
            f'<span style="color:#9ca3af;text-decoration:line-through">{html.escape(s["text"])}</span>'
            for s in sample["segments"]
        ]
        return mo.Html(f'<pre style="white-space:pre-wrap">{"".join(spans)}</pre>')

    mo.vstack([
        *[_render(_s) for _s in samples],
        mo.ui.table(pd.DataFrame([{"tokens": _s["tokens"], "trained tokens": _s["trained_tokens"],
                                   "marked": _s["marked"]} for _s in samples]),
                    selection=None, show_download=False),
    ])
    return


@app.cell(hide_code=True)
def _(TUNED_NAME, mo):
    tune_button = mo.ui.run_button(label=f"Open or tune '{TUNED_NAME}'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## Tune

    `tune(config)` trains the adapter, then scores base and tuned on the world's held-out
    questions and writes one `adapter` artifact (peft's weights, the tokenizer, the training log,
    a manifest naming its base) with the scores in its `metrics.json`. About a minute for the small
    demo on two cores. If the store already holds the adapter, it is opened instead (remove it with
    `llmlab models rm` to tune again).
    """),
        tune_button,
    ])
    return (tune_button,)


@app.cell
def _(AUTORUN, bar_updates, config, mo, store, tune, tune_button):
    mo.stop(not (tune_button.value or AUTORUN), mo.md("*Press the button above to tune the model.*"))
    if store.exists(config.name):
        tuned = store.get(config.name)
    else:
        # How many steps tune takes is known only once it has read the data, so this bar counts in percent.
        with mo.status.progress_bar(total=100, title=f"Tuning {config.name}", show_eta=True) as _bar:
            _steps = bar_updates(_bar, "tune", scale=100)

            def _on_tune_event(event):
                # {"type": "progress", "task": "tune", "done", "total"} per step; "metric" with the losses;
                # then the evaluation reports its own tasks (accuracy, perplexity)
                _steps(event)
                if event.get("type") == "metric" and event.get("task") == "tune":
                    _bar.update(increment=0, subtitle=f"step {event['step']}: loss {event['loss']}, "
                                f"val_loss {event['val_loss']}, {event.get('tok_s')} tokens/s")
                elif event.get("type") == "progress" and event.get("task") != "tune":
                    _bar.update(increment=0, title="Scoring base and tuned",
                                subtitle=f"{event.get('task')} {event['done']}/{event['total']}")

            tuned = tune(config, store=store, progress=_on_tune_event)
    _info = tuned.manifest.info
    mo.md(f"""
    **{tuned.name}** ({tuned.kind} on `{tuned.manifest.parents[0].name if tuned.manifest.parents else '?'}`):
    {_info.get('trainable_params', 0):,} trainable parameters of {_info.get('total_params', 0):,},
    {_info.get('steps')} steps in {_info.get('train_seconds')} s at {_info.get('tok_s')} tokens/s
    ({_info.get('method')} with {_info.get('backend')} on {_info.get('device')}).
    """)
    return (tuned,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## How it learned

    The adapter's `training_log.jsonl` holds the training loss (averaged since the previous row)
    and the loss on the held-back validation records at each evaluation.
    """)
    return


@app.cell
def _(alt, mo, pd, tuned):
    tune_log = pd.read_json(tuned.path / "training_log.jsonl", lines=True)
    _long = tune_log.melt(id_vars="step", value_vars=["loss", "val_loss"], var_name="series").dropna()
    mo.ui.altair_chart(
        alt.Chart(_long).mark_line(point=True).encode(
            x=alt.X("step:Q", title="optimizer step"), y=alt.Y("value:Q", title="cross-entropy on answers"),
            color=alt.Color("series:N", title=None), tooltip=["step", "series", "value"],
        ).properties(height=280)
    )
    return (tune_log,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Did it learn the facts?

    After training, `tune` asked both models the world's **held-out** questions (greedy, one-word
    answers) and stored the share answered right: `accuracy_before` for the base, `accuracy` for
    base + adapter.
    """)
    return


@app.cell
def _(alt, mo, pd, tuned):
    _m = tuned.metrics
    scores = {"base": _m.get("accuracy_before"), "tuned": _m.get("accuracy")}
    if None in scores.values():
        _view = mo.md("No held-out accuracy was measured (the model has no demo world, or `evaluate` was off).")
    else:
        _frame = pd.DataFrame({"model": list(scores), "accuracy": list(scores.values())})
        _bars = alt.Chart(_frame).mark_bar().encode(
            x=alt.X("model:N", title=None),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("model:N", legend=None),
        ).properties(height=220, width=240)
        _view = mo.vstack([
            mo.hstack([
                mo.stat(f"{scores['base']:.0%}", label="base", caption="held-out accuracy"),
                mo.stat(f"{scores['tuned']:.0%}", label="tuned",
                        caption=f"{(scores['tuned'] - scores['base']) * 100:+.0f} points on "
                                f"{_m.get('accuracy_n')} questions"),
                mo.ui.altair_chart(_bars),
            ], justify="start", gap=2),
            mo.md("A few of the tuned model's answers:"),
            mo.ui.table(_m.get("accuracy_examples") or [], selection=None, show_download=False),
        ])
    _view
    return (scores,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Chat with both

    `llmlab.runtime.load` opens the adapter like any model (base + adapter merged once and cached
    by content hash). The same question goes to both, with greedy decoding.
    """)
    return


@app.cell
def _(base_artifact, store, tuned):
    from llmlab.runtime import SamplingParams, load

    base_model = load(base_artifact.name, store=store)  # kept open for the cells below
    tuned_model = load(tuned.name, store=store)
    return SamplingParams, base_model, tuned_model


@app.cell
def _(base_artifact, example_question, mo, store):
    # the first held-out question of the model's demo world (a greeting if it has none)
    question = mo.ui.text(value=example_question(store, base_artifact), label="Ask both models", full_width=True)
    question
    return (question,)


@app.cell
def _(SamplingParams, base_model, mo, question, tuned_model, world):
    _params = SamplingParams.greedy(max_tokens=16)
    base_answer = base_model.chat(world.chat_messages(question.value), _params)
    tuned_answer = tuned_model.chat(world.chat_messages(question.value), _params)
    mo.hstack([
        mo.callout(mo.md(f"**base**\n\n{base_answer.strip() or '(nothing)'}"), kind="neutral"),
        mo.callout(mo.md(f"**tuned**\n\n{tuned_answer.strip() or '(nothing)'}"), kind="success"),
    ], widths="equal")
    return base_answer, tuned_answer


@app.cell(hide_code=True)
def _(MODEL_NAME, mo):
    distill_button = mo.ui.run_button(label=f"Open or distil '{MODEL_NAME}-student'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## A smaller student: distillation

    `distill` trains a fresh *micro* demo model (one layer instead of four, on the same tokenizer)
    to copy the teacher's next-token distribution on the world's texts: the loss is the KL
    divergence to the teacher's temperature-softened probabilities (weight `alpha`) plus the plain
    next-token loss. The result is a `distilled` artifact whose parent is the teacher, scored beside
    it: size, speed, perplexity, KL divergence and top-1 agreement with the teacher.
    """),
        distill_button,
    ])
    return (distill_button,)


@app.cell
def _(
    AUTORUN,
    DistillConfig,
    MODEL_NAME,
    SIZE,
    bar_updates,
    distill,
    distill_button,
    mo,
    store,
    student_vs_teacher,
):
    mo.stop(not (distill_button.value or AUTORUN), mo.md("*Press the button above to distil the model.*"))
    student_config = DistillConfig(name=f"{MODEL_NAME}-student", teacher=MODEL_NAME, student_size="micro",
                                   temperature=2.0, alpha=0.9, steps=8 if SIZE == "micro" else 300,
                                   qa_limit=20 if SIZE == "micro" else 200)
    if store.exists(student_config.name):
        student = store.get(student_config.name)
    else:
        with mo.status.progress_bar(total=student_config.steps, title=f"Distilling {MODEL_NAME}") as _bar:
            student = distill(student_config, store=store, progress=bar_updates(_bar, task="distill"))
    _m = student.metrics
    _rows = student_vs_teacher(_m)
    mo.vstack([
        mo.md(f"**{student.name}** ({student.kind}): {_m.get('size_ratio', 0):.0%} of the teacher's parameters, "
              f"{_m.get('speedup')}x its generation speed; KL divergence to the teacher "
              f"{_m.get('kld_mean', 0):.3f} nats per token, top-1 agreement {_m.get('top1', 0):.0%}."),
        mo.ui.table(_rows, selection=None, show_download=False),
    ])
    return (student,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - Change the settings cell: `rank` (8 to 64), `epochs`, `learning_rate`, or `method="dora"` or
      `"full"`, give the adapter another `name`, and compare the curves and held-out accuracy.
    - Set `answer_only=False` to train on the prompt too, and see what it does to the validation loss.
    - Tune on your own data: `data="my.jsonl"` with `messages`, `instruction`/`output` or
      `question`/`answer` records (`dpo`/`orpo` take `prompt`/`chosen`/`rejected` pairs).
    - Open the app's **Tune** page (`streamlit run app/streamlit_app.py`) to run the same thing as a
      background job with a live loss chart, cancel and resume it, and chat with both models.
    - Distil longer (`steps`, `epochs`), from the tuned model (`teacher="demo-lora"`: an adapter is
      merged first), or into a `small` student, and watch KL and top-1 move.
    - Put it in a recipe: a `tune` step in `recipes/` runs the same call (`llmlab run`), and
      `llmlab export-script` turns it into plain Python.
    """)
    return


if __name__ == "__main__":
    app.run()
