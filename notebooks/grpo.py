"""GRPO as a story: start from the SFT adapter, look at the rewards, train with reinforcement learning on
sampled answers, watch reward, KL, group accuracy and answer length, read sampled answers at checkpoints,
and see what RL added on held-out questions.

Run it with `marimo edit notebooks/grpo.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small"; "micro" trains a few
steps, for CI) and LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Reinforcement learning with verifiable rewards (GRPO)

    Supervised tuning (SFT) shows the model right answers. **GRPO** lets it answer on its own and
    rewards what it got right: for each tuning question it samples a *group* of answers, scores every
    answer with a reward that can be checked (here: exact match against the world's answer), and
    pushes up the answers that beat their group's mean and down those below it. A KL term keeps the
    model near where it started. The demo world is made for it: every answer is known exactly.

    This notebook starts from the SFT adapter (the Tune notebook's), continues its weights with GRPO
    on the same tuning questions, and measures both on **held-out** phrasings never trained on.
    Every cell calls `llmlab`; the same call is a recipe's `tune` step with `method: grpo`
    (`recipes/grpo.yaml`), `llmlab tune --method grpo` and the app's Tune page.
    """)
    return


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import pandas as pd

    from llmlab.build import open_or_build
    from llmlab.events import bar_updates
    from llmlab.settings import notebook_settings
    from llmlab.store import Store
    from llmlab.tune import TuneConfig, tune
    from llmlab.tune.report import training_log
    from llmlab.tune.rewards import load_rewards

    return (
        Store,
        TuneConfig,
        alt,
        bar_updates,
        load_rewards,
        mo,
        notebook_settings,
        open_or_build,
        pd,
        training_log,
        tune,
    )


@app.cell
def _(Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    SFT_NAME, GRPO_NAME = f"{MODEL_NAME}-lora", f"{MODEL_NAME}-grpo"
    store = Store()
    mo.md(f"The store is `{store.root}`; the **{SIZE}** demo model `{MODEL_NAME}`, its SFT adapter "
          f"`{SFT_NAME}` and the GRPO result `{GRPO_NAME}`.")
    return AUTORUN, GRPO_NAME, MODEL_NAME, SFT_NAME, SIZE, store


@app.cell(hide_code=True)
def _(SFT_NAME, mo):
    start_button = mo.ui.run_button(label=f"Open or make '{SFT_NAME}'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## The starting point: an SFT adapter

    The demo model (opened from the store, or built) and its LoRA adapter tuned on the world's
    questions with every default: what the Tune notebook and the quickstart make.
    """),
        start_button,
    ])
    return (start_button,)


@app.cell
def _(AUTORUN, MODEL_NAME, SFT_NAME, SIZE, TuneConfig, mo, open_or_build, start_button, store, tune):
    mo.stop(not (start_button.value or AUTORUN), mo.md("*Press the button above to open or make the adapter.*"))
    base_artifact = open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    if store.exists(SFT_NAME):
        sft = store.get(SFT_NAME)
    else:
        _quick = {"epochs": 1, "qa_limit": 40} if SIZE == "micro" else {}
        with mo.status.spinner(title=f"Tuning {SFT_NAME} (SFT)"):
            sft = tune(TuneConfig(name=SFT_NAME, model=base_artifact.name, **_quick), store=store)
    mo.md(f"**{sft.name}**: held-out accuracy {sft.metrics.get('accuracy', float('nan')):.1%} "
          f"(base {sft.metrics.get('accuracy_before', float('nan')):.1%}).")
    return (sft,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The reward

    `rewards` names the terms and their weights. Built in: `exact_match` and `f1` (against the record's
    gold answers, SQuAD normalisation), `short` (one to five words), `json` (valid JSON, under the
    record's schema if it has one) and `length` (a penalty per extra word). Your own reward is a
    function in a file, `{"my_rewards.py:score": 1.0}`, called as `score(completion, record)`; llmlab
    imports only the path you wrote. Here is the code each term runs:
    """)
    return


@app.cell
def _(GRPO_NAME, SFT_NAME, SIZE, TuneConfig, load_rewards, mo, sft):
    # micro is the CI size: a few small steps and a few held-out questions keep the run short.
    _quick = ({"steps": 4, "batch_size": 4, "group_size": 4, "qa_limit": 40, "checkpoint_every": 2}
              if SIZE == "micro" else {"steps": 150, "batch_size": 8, "group_size": 16})
    config = TuneConfig(name=GRPO_NAME, model=sft.name, method="grpo", data="world:tune",
                        rewards={"exact_match": 1.0}, max_new_tokens=8, **_quick)
    rewards = load_rewards(config.reward_weights())
    mo.vstack([
        mo.md(f"GRPO from `{SFT_NAME}`: {config.steps} steps of {config.batch_size} questions x "
              f"{config.group_size} sampled answers, learning rate {config.lr():g}, KL weight {config.beta:g}."),
        *[mo.md(f"**{_r.name}** x {_r.weight:g}\n\n```python\n{_r.source}\n```") for _r in rewards],
    ])
    return (config,)


@app.cell(hide_code=True)
def _(GRPO_NAME, mo):
    grpo_button = mo.ui.run_button(label=f"Open or train '{GRPO_NAME}'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## Train with GRPO

    Each step reports the mean reward, the KL to the starting adapter, the group accuracy (the share of
    sampled answers that are right) and the answers' length in tokens; each checkpoint shows a few
    questions with sampled answers and their rewards. Then both adapters are scored on the held-out
    phrasings. If the store already holds the result, it is opened instead.
    """),
        grpo_button,
    ])
    return (grpo_button,)


@app.cell
def _(AUTORUN, bar_updates, config, grpo_button, mo, store, tune):
    mo.stop(not (grpo_button.value or AUTORUN), mo.md("*Press the button above to train.*"))
    if store.exists(config.name):
        grpo = store.get(config.name)
    else:
        with mo.status.progress_bar(total=config.steps, title=f"GRPO {config.name}", show_eta=True) as _bar:
            _steps = bar_updates(_bar, "tune")

            def _on_event(event):
                _steps(event)
                if event.get("type") == "metric" and event.get("task") == "tune":
                    _bar.update(increment=0, subtitle=f"step {event['step']}: reward {event['reward']}, "
                                f"kl {event['kl']}, group accuracy {event['group_accuracy']}")
                elif event.get("type") == "progress" and event.get("task") != "tune":
                    _bar.update(increment=0, title="Scoring SFT and GRPO",
                                subtitle=f"{event.get('task')} {event['done']}/{event['total']}")

            grpo = tune(config, store=store, progress=_on_event)
    mo.md(f"**{grpo.name}** ({grpo.kind}; started from `{grpo.manifest.info.get('start_adapter')}`): "
          f"{grpo.manifest.info.get('steps')} steps in {grpo.manifest.info.get('train_seconds')} s.")
    return (grpo,)


@app.cell
def _(alt, grpo, mo, pd, training_log):
    grpo_log = pd.DataFrame([{k: r.get(k) for k in ("step", "reward", "kl", "group_accuracy", "completion_len")}
                             for r in training_log(grpo)])
    _long = grpo_log.melt(id_vars="step", var_name="measure").dropna()
    mo.ui.altair_chart(
        alt.Chart(_long).mark_line(point=True).encode(
            x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=None),
            facet=alt.Facet("measure:N", columns=2, title=None), tooltip=["step", "measure", "value"],
        ).properties(height=140, width=280).resolve_scale(y="independent")
    )
    return (grpo_log,)


@app.cell
def _(grpo, mo, pd, training_log):
    sample_rows = [{"step": r["step"], "question": s["prompt"], "gold": s["gold"], "answer": a["text"],
                    "reward": a["reward"]}
                   for r in training_log(grpo) for s in r.get("samples", []) for a in s["answers"]]
    mo.vstack([mo.md("### Sampled answers at checkpoints"),
               mo.ui.table(pd.DataFrame(sample_rows), selection=None, show_download=False)])
    return (sample_rows,)


@app.cell
def _(grpo, mo):
    _m = grpo.metrics
    gain = (_m["accuracy"] - _m["accuracy_before"]) if "accuracy" in _m else None
    mo.md(f"""
    ## What RL added

    On {_m.get('accuracy_n', 0)} held-out questions (phrasings never trained on), greedy answers:
    SFT adapter **{_m.get('accuracy_before', float('nan')):.1%}**, after GRPO
    **{_m.get('accuracy', float('nan')):.1%}** ({(gain or 0) * 100:+.1f} points). On the small demo
    model, `benchmarks/grpo.py` measures this with the recipe's settings (`benchmarks/results/grpo.json`).
    """) if gain is not None else mo.md("This model has no demo world, so no held-out questions were scored.")
    return (gain,)


if __name__ == "__main__":
    app.run()
