"""Tune: pick a model, data and method, preview the data, start a tuning job, watch it learn, chat.

Every option widget is built from a ``llmlab.tune.step.TuneConfig`` field (its type, default and
description), and the form is validated by ``TuneConfig`` itself (through ``recipes.make_step``),
so the page and a recipe's ``tune`` step accept and reject the same things. "Start" submits a
one-step recipe as a job (``llmlab.jobs.JobQueue``); the live part of the page is a fragment
that reruns every second while the job is active and draws its progress, loss curve and
tokens/s from the job's events (for GRPO: reward, KL, group accuracy and answer length, and the
sampled answers with their rewards at checkpoints). Before a GRPO run starts, the page shows the code
of every reward term, the user's own reward file included. Resuming is submitting the same settings again: ``resume`` is
on by default, so the step continues from the last checkpoint of a cancelled or crashed run.
When the job is done, the artifact's metrics (base vs tuned) and a side-by-side chat follow.
A folded section distils a model into a smaller student (``llmlab.tune.distill``) the same way.

Which jobs tune (and what they tune) is read through ``llmlab.jobs`` (``jobs_with_step``,
``task_events``); base-vs-tuned scores, run facts, the training log and a student beside its teacher
through ``llmlab.tune.report``. The page only lays out widgets and calls them. Its body is ``main``,
run when Streamlit executes this file (as ``__main__``).

torch is imported only by library calls made while the page runs (the backend plan, the
preview, the chat), never when the page is imported.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pandas as pd
import streamlit as st

from llmlab import recipes
from llmlab.catalog import default_model_index
from llmlab.errors import LlmlabError
from llmlab.evaluate.choices import leaderboard_winner
from llmlab.tune.distill import DistillConfig
from llmlab.jobs import FINAL, JobQueue, job_outputs, jobs_with_step, task_events
from llmlab.store import HF_KINDS, MODEL_KINDS, Artifact, Store
from llmlab.tune.rewards import load_rewards
from llmlab.tune.report import before_after, example_question, run_facts, student_vs_teacher, training_log
from llmlab.tune.config import PREFERENCE_METHODS, TuneConfig
from llmlab.tune.records import MASK_CLOSE, MASK_OPEN
from widgets import job_queue, job_status, load_model, session_id, start_button, task_bar

# Fields set in the first section, the main options, and (everything else) the folded ones.
SETUP = ("name", "model", "data", "method")
MAIN = ("rank", "alpha", "learning_rate", "epochs", "batch_size")
ADVANCED = tuple(f for f in TuneConfig.model_fields if f not in SETUP + MAIN)
# Steps for the + / - buttons of float fields whose default step (0.01) would not fit.
STEPS: dict[str, float] = {"learning_rate": 1e-4, "alpha": 1.0, "epochs": 1.0, "dropout": 0.05,
                           "val_fraction": 0.05, "beta": 0.05}
LOCAL = "(a local folder)"


@st.cache_data(show_spinner=False)
def backend_plan(method: str, backend: str, device: str) -> tuple[str, list[str]]:
    """What ``select_backend`` will run for these settings, as a line, and its messages."""
    from llmlab.tune.config import select_backend

    config = TuneConfig(name="plan", model="plan", method=method, backend=backend, device=device)
    plan = select_backend(config)
    return f"Runs **{plan.method}** with **{plan.backend}** on **{plan.device}**.", plan.messages


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def field_widget(name: str, container: Any = st) -> Any:
    """A widget for one ``TuneConfig`` field, from its type, default and description.

    No bounds are set on the widgets: ``TuneConfig`` checks the values and says what is wrong."""
    f = TuneConfig.model_fields[name]
    ann, default, key, helptext = f.annotation, f.default, f"tune:{name}", f.description
    args = get_args(ann)
    is_union = get_origin(ann) in (Union, types.UnionType)
    inner = [a for a in args if a is not type(None)] if is_union else [ann]
    optional = is_union and type(None) in args
    if get_origin(ann) is Literal:
        options = list(args)
        return container.selectbox(_label(name), options, index=options.index(default), key=key, help=helptext)
    if ann is bool:
        return container.checkbox(_label(name), value=default, key=key, help=helptext)
    if inner == [int]:
        return container.number_input(_label(name), value=default, step=1, key=key, help=helptext,
                                      placeholder="auto" if optional else None)
    if inner == [float]:
        return container.number_input(_label(name), value=default, step=STEPS.get(name, 0.01), format="%g",
                                      key=key, help=helptext, placeholder="auto" if optional else None)
    text = ",".join(default) if isinstance(default, list) else ("" if default is None else str(default))
    value = container.text_input(_label(name), value=text, key=key, help=helptext)
    return value if value or not optional else None


def pick_model(store: Store, method: str = "lora") -> str:
    # GRPO may also start from an adapter (an SFT LoRA), whose weights it continues
    kinds = (*MODEL_KINDS, "adapter") if method == "grpo" else MODEL_KINDS
    models = [a.name for a in store.list() if a.kind in kinds]
    if not models:
        st.info(f"The store at `{store.root}` holds no model to tune ({', '.join(MODEL_KINDS)}): run the "
                "quickstart on the Jobs page, or give a local Hugging Face folder.")
    # a base model (the Leaderboard's best among those that fit), not a merge that already holds a LoRA
    index = default_model_index(store, models, "tune", winner=leaderboard_winner(store, models)) if models else 0
    choice = st.selectbox("Model", [*models, LOCAL], index=index, key="tune:model",
                          help=TuneConfig.model_fields["model"].description)
    if choice != LOCAL:
        return choice
    return st.text_input("Model folder", key="tune:model_path", placeholder="/path/to/hf-model").strip()


def form(store: Store) -> TuneConfig | None:
    """The form, validated by ``TuneConfig`` (None, with the error shown, when invalid)."""
    c1, c2, c3 = st.columns([2, 2, 1])
    method = field_widget("method", c3)  # first: it decides which models are offered
    with c1:
        model = pick_model(store, method)
    data = c2.text_input("Data", "world:tune", key="tune:data", help=TuneConfig.model_fields["data"].description)
    default_name = f"{Path(model).name or 'model'}-{method}"
    name = st.text_input("Output artifact name", key="tune:name", placeholder=default_name,
                         help=TuneConfig.model_fields["name"].description).strip() or default_name
    values: dict[str, Any] = {"name": name, "model": model, "data": data.strip(), "method": method}
    st.markdown("**Main options**")
    for col, field in zip(st.columns(len(MAIN)), MAIN):
        values[field] = field_widget(field, col)
    with st.expander("More options"):
        cols = st.columns(4)
        for i, field in enumerate(ADVANCED):
            values[field] = field_widget(field, cols[i % len(cols)])
    if not model:
        st.info("Choose a model (or give a model folder) to preview and start.")
        return None
    try:
        config = recipes.make_step("tune", values, where="The tune settings").config
    except LlmlabError as e:
        st.error(str(e))
        return None
    assert isinstance(config, TuneConfig)
    return config


def show_plan(config: TuneConfig) -> bool:
    """The backend plan and its messages; False when the settings cannot run here."""
    try:
        line, messages = backend_plan(config.method, config.backend, config.device)
    except LlmlabError as e:
        st.error(str(e))
        return False
    st.caption(line)
    for m in messages:
        st.warning(m)
    return True


def show_preview(config: TuneConfig, store: Store) -> None:
    from llmlab.tune import grpo
    from llmlab.tune.records import preview

    try:
        with st.spinner("Formatting the first records…"):
            rows = (grpo.preview if config.method == "grpo" else preview)(config, 3, store=store)
    except LlmlabError as e:
        st.error(str(e))
        return
    if config.method == "grpo":
        st.caption("The prompts the model answers (several sampled answers each), and the gold answers the "
                   "rewards compare with.")
        for row in rows:
            st.code(row["prompt"], language=None)
            st.caption("gold: " + (", ".join(row["gold"]) or "none"))
        return
    if config.method in PREFERENCE_METHODS:
        for row in rows:
            st.code(row["prompt"], language=None)
            c1, c2 = st.columns(2)
            c1.success(f"chosen: {row['chosen']}")
            c2.error(f"rejected: {row['rejected']}")
        return
    st.caption(f"Exactly what the model sees. The part between {MASK_OPEN} and {MASK_CLOSE} is masked: it "
               "carries no loss; the rest is trained on.")
    for i, row in enumerate(rows, 1):
        st.markdown(f"**Sample {i}**: {row['tokens']} tokens, {row['trained_tokens']} trained"
                    + (" (truncated)" if row["truncated"] else ""))
        st.code(row["marked"], language=None)


def show_rewards(config: TuneConfig) -> bool:
    """GRPO's reward terms with the code each runs (a user's file in full, before it runs in the job);
    False, with the error shown, when a reward file or function is missing."""
    try:
        rewards = load_rewards(config.reward_weights())
    except LlmlabError as e:
        st.error(str(e))
        return False
    st.markdown("**Rewards**: " + " + ".join(f"{r.weight:g} x `{r.name}`" for r in rewards))
    for r in rewards:
        with st.expander(f"{r.name} ({'your file' if r.user else 'built in'})", expanded=r.user):
            if r.user:
                st.warning("This file's code runs inside the tuning job: read it before you start.")
            st.code(r.source, language="python")
    return True


def start(queue: JobQueue, config: TuneConfig, store: Store) -> None:
    if store.exists(config.name):
        st.warning(f"`{config.name}` is already in the store: Start replaces it, unless it was made with these "
                   "same settings (then the step is skipped and its results show below).")
    st.caption("Start again with the same settings to resume a cancelled or crashed run from its last "
               "checkpoint." if config.resume else "Resume is off: a new start begins from step 0.")
    start_button(queue, "tune", config, label="Start", title=f"tune {config.name}", session_key="tune:job")


def loss_chart(rows: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(rows)
    ys = [c for c in ("loss", "val_loss") if c in frame and frame[c].notna().any()]
    if "step" in frame and ys:
        st.line_chart(frame, x="step", y=ys, x_label="optimizer step", y_label="loss")


GRPO_SERIES = (("reward", "reward"), ("group_accuracy", "group accuracy"), ("kl", "KL to the start"),
               ("completion_len", "answer length (tokens)"))


def grpo_charts(rows: list[dict[str, Any]]) -> None:
    """Reward, group accuracy, KL and answer length per step, one small chart each."""
    frame = pd.DataFrame([{k: r.get(k) for k in ("step", *(key for key, _ in GRPO_SERIES))} for r in rows])
    cols = st.columns(2)
    for i, (key, label) in enumerate(GRPO_SERIES):
        if key in frame and frame[key].notna().any():
            cols[i % 2].line_chart(frame, x="step", y=key, x_label="step", y_label=label, height=200)


def show_samples(samples: list[dict[str, Any]], step: int | None) -> None:
    """Sampled answers with their rewards (one checkpoint's)."""
    st.markdown(f"**Sampled answers at step {step}**" if step else "**Sampled answers**")
    st.dataframe(pd.DataFrame([{"question": s["prompt"], "gold": s.get("gold"), "answer": a["text"],
                                "reward": a["reward"]} for s in samples for a in s["answers"]]),
                 hide_index=True)


def live(queue: JobQueue, job_id: str, was_active: bool) -> None:
    """The job's status, progress, loss chart and tokens/s; Cancel and Resume."""
    job = job_status(queue, queue.get(job_id), "tune")
    if job.status in ("cancelled", "failed", "died") and st.button("Resume", key=f"tune:resume:{job.id}",
                                                                   help="Submit the same settings again."):
        try:
            again = queue.submit(queue.recipe(job.id), title=job.title, session=session_id())
        except LlmlabError as e:
            st.error(str(e))
        else:
            st.session_state["tune:job"] = again.id
            st.rerun()
    metrics, last = task_events(queue, job.id, "tune")
    if last and last.get("total"):
        st.progress(min(1.0, last["done"] / last["total"]), text=f"training step {last['done']}/{last['total']}")
    elif job.status not in FINAL:
        st.caption("Waiting for the first training step (loading the model and data)…")
    p = queue.progress(job.id)
    if job.status not in FINAL and p.get("task") not in (None, "tune"):
        task_bar(p, label=f"scoring: {p['task']}")
    if metrics and "reward" in metrics[-1]:  # grpo
        latest = metrics[-1]
        cols = st.columns(5)
        for col, (label, key) in zip(cols, (("step", "step"), ("reward", "reward"), ("KL", "kl"),
                                            ("group accuracy", "group_accuracy"), ("answer tokens", "completion_len"))):
            col.metric(label, latest.get(key) if latest.get(key) is not None else "–")
        grpo_charts(metrics)
        shown = [e for e in queue.events(job.id) if e.get("type") == "log" and e.get("samples")]
        if shown:
            show_samples(shown[-1]["samples"], shown[-1].get("step"))
    elif metrics:
        latest = metrics[-1]
        cols = st.columns(4)
        cols[0].metric("step", latest.get("step"))
        cols[1].metric("loss", latest.get("loss"))
        cols[2].metric("val loss", latest.get("val_loss") if latest.get("val_loss") is not None else "–")
        cols[3].metric("tokens/s", latest.get("tok_s") if latest.get("tok_s") is not None else "–")
        loss_chart([{k: e.get(k) for k in ("step", "loss", "val_loss")} for e in metrics])
    if was_active and job.status in FINAL:
        st.rerun()  # the whole page: stop polling and show the results


def show_metrics(art: Artifact) -> None:
    m = art.metrics
    shown = before_after(m)
    if shown:
        cols = st.columns(len(shown))
        for col, c in zip(cols, shown):
            color = "normal" if c.higher_is_better else "inverse"
            if c.label.endswith("accuracy"):  # decimals, as every page shows an accuracy
                n = f", {m['accuracy_n']} questions" if m.get("accuracy_n") else ""
                col.metric(f"{c.label} (tuned{n})", f"{c.after:.3f}", f"{c.delta:+.3f} vs base {c.before:.3f}",
                           delta_color=color)
            else:
                col.metric(f"{c.label} (tuned)", f"{c.after:.4g}", f"{c.delta:+.3g} vs base {c.before:.4g}",
                           delta_color=color)
    if "accuracy" not in m:
        st.caption("No held-out accuracy: the model has no demo world (or evaluate was off).")
    elif shown:
        st.caption("Measured by the tuning run on its own held-out questions; the Leaderboard scores every "
                   "variant on one suite (its figures are the ones the other pages show).")
    st.caption(" · ".join(f"{k} {v}" for k, v in run_facts(art.manifest.info).items()))
    log = training_log(art)
    if log and "reward" in log[0]:  # grpo: "base" above is where it started (the SFT adapter, if one)
        if art.manifest.info.get("start_adapter"):
            st.caption(f"GRPO started from the adapter `{art.manifest.info['start_adapter']}`: \"base\" above is "
                       "that adapter, so the change is what reinforcement learning added.")
        grpo_charts(log)
        checkpoints = [r for r in log if r.get("samples")]
        if checkpoints:
            show_samples(checkpoints[-1]["samples"], checkpoints[-1]["step"])
    elif log:
        loss_chart(log)
    with st.expander("All metrics"):
        st.json(m)


def side_by_side(store: Store, base: str, tuned: Artifact) -> None:
    """The same prompt to the base and the tuned model, answers streamed in two columns."""
    from llmlab.runtime import SamplingParams

    st.subheader("Chat with base and tuned")
    key = f"tune:chat:{tuned.name}:{tuned.content_hash[:12]}"
    base_hash = store.get(base).content_hash if store.exists(base) else base
    example = example_question(store, tuned)
    c1, c2, c3 = st.columns([4, 1, 1])
    prompt = c1.text_input("Prompt", example, key=f"{key}:prompt")
    temperature = c2.number_input("Temperature", value=0.0, step=0.1, key=f"{key}:t",
                                  help="0 is greedy: each model's likeliest answer.")
    max_tokens = c3.number_input("Max new tokens", value=32, step=8, key=f"{key}:n")
    system = st.text_input("System prompt", "", key=f"{key}:system",
                           placeholder="empty: each model's chat template default")
    history: list[dict[str, str]] = st.session_state.setdefault(key, [])
    left, right = st.columns(2)
    left.markdown(f"**base** `{base}`")
    right.markdown(f"**tuned** `{tuned.name}`")
    for turn in history:
        for col, who in ((left, "base"), (right, "tuned")):
            col.chat_message("user").markdown(turn["prompt"])
            col.chat_message("assistant").markdown(turn[who])
    if not st.button("Ask both", key=f"{key}:ask") or not prompt.strip():
        return
    try:
        params = SamplingParams(temperature=temperature, max_tokens=int(max_tokens), seed=0)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        turn = {"prompt": prompt}
        for col, who, source, digest in ((left, "base", base, base_hash),
                                         (right, "tuned", tuned.name, tuned.content_hash)):
            model = load_model(str(store.root), source, digest)
            col.chat_message("user").markdown(prompt)
            with col.chat_message("assistant"):
                reply = st.write_stream(model.stream_chat(messages, params))
            turn[who] = reply if isinstance(reply, str) else str(reply)
    except (LlmlabError, ValueError) as e:
        st.error(str(e))
        return
    history.append(turn)


def results(store: Store, name: str, base: str) -> None:
    """The tuned artifact ``name``'s scores against ``base``, its run, and a chat with both."""
    if not store.exists(name):
        st.warning(f"The job finished but `{name}` is not in the store (removed since?).")
        return
    art = store.get(name)
    st.subheader(f"Results: {name}")
    show_metrics(art)
    side_by_side(store, base, art)


def runs(store: Store, queue: JobQueue) -> None:
    """Tune jobs of this store: pick one, follow it live, then its results."""
    jobs = jobs_with_step(queue, "tune", limit=30)
    if not jobs:
        st.caption("No tuning jobs yet: set the options above and press Start.")
        return
    by_id = {j.id: (j, s) for j, s in jobs}
    ids = list(by_id)
    wanted = st.session_state.get("tune:job")
    job_id = st.selectbox("Run", ids, index=ids.index(wanted) if wanted in by_id else 0,
                          format_func=lambda i: f"{i} · {by_id[i][0].title} · {by_id[i][0].status}")
    st.session_state["tune:job"] = job_id
    job, step = by_id[job_id]
    active = job.status not in FINAL
    # Refresh every second only while the job is queued or running.
    st.fragment(run_every=1 if active else None)(live)(queue, job_id, active)
    if queue.get(job_id).status == "done":
        results(store, step.output_names()[0], str(getattr(step.config, "model", "")))


def distill_section(store: Store, queue: JobQueue) -> None:
    """Folded: distil a model into a smaller student (``llmlab.tune.distill``) as a job, then its scores."""
    with st.expander("Distil into a smaller student"):
        st.caption("Train a fresh, smaller demo model on the teacher's own tokenizer to copy the teacher's "
                   "next-token distribution (KL divergence on temperature-softened logits, mixed with the plain "
                   "next-token loss by alpha). The student is stored as `distilled` and scored beside its teacher.")
        teachers = sorted(a.name for a in store.list() if a.kind in HF_KINDS)
        if not teachers:
            st.caption("No model in the store to distil yet.")
            return
        c1, c2, c3 = st.columns(3)
        teacher = c1.selectbox("Teacher", teachers, key="distill:teacher")
        size = c2.selectbox("Student size", ["micro", "small"], key="distill:size",
                            help=DistillConfig.model_fields["student_size"].description)
        name = c3.text_input("Student name", value=f"{teacher}-student", key="distill:name")
        c4, c5, c6 = st.columns(3)
        values: dict[str, Any] = {
            "name": name.strip(), "teacher": teacher, "student_size": size,
            "temperature": c4.number_input("Temperature", value=2.0, step=0.5, key="distill:temperature",
                                           help=DistillConfig.model_fields["temperature"].description),
            "alpha": c5.number_input("Alpha", value=0.9, step=0.05, key="distill:alpha",
                                     help=DistillConfig.model_fields["alpha"].description),
            "epochs": c6.number_input("Epochs", value=6.0, step=1.0, key="distill:epochs",
                                      help=DistillConfig.model_fields["epochs"].description),
        }
        start_button(queue, "distill", values, label="Distil", title=f"distill {teacher} → {values['name']}",
                     session_key="distill:job")
        job_id = st.session_state.get("distill:job")
        if not job_id:
            return
        job = job_status(queue, queue.get(job_id), key="distill")
        task_bar(queue.progress(job_id)["tasks"].get("distill", {}), label="distilling step")
        student = next(iter(job_outputs(queue, job_id)), None)
        if job.status == "done" and student and store.exists(student):
            m = store.get(student).metrics
            st.table(pd.DataFrame(student_vs_teacher(m)))
            st.caption(f"KL divergence to the teacher {m.get('kld_mean', 0):.3f} nats per token, top-1 agreement "
                       f"{m.get('top1', 0):.0%}; {m.get('size_ratio', 0):.0%} of its parameters, "
                       f"{m.get('speedup')}x its generation speed.")


def main() -> None:
    store = Store()
    queue = job_queue(str(store.root))
    st.title("Tune")
    st.markdown("Teach a model new facts or a new style with **LoRA**, **DoRA**, **QLoRA**, **full** fine-tuning, "
                "preference tuning (**DPO**, **ORPO**) or reinforcement learning from rewards (**GRPO**). The result "
                "is an adapter (or a full model) in the store, "
                "with its lineage and base-vs-tuned scores.")
    for folder, reason in store.problems().items():
        st.warning(f"`{folder}` is not readable: {reason}")

    st.subheader("Model, data and method")
    config = form(store)
    if config is not None and show_plan(config) and (config.method != "grpo" or show_rewards(config)):
        if st.button("Preview", key="tune:preview", help="Format the first records the way training will."):
            show_preview(config, store)
        start(queue, config, store)
    distill_section(store, queue)

    st.subheader("Runs")
    runs(store, queue)


if __name__ == "__main__":
    main()
