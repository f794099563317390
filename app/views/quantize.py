"""Quantize: GGUF, GPTQ, AWQ and RTN variants of a model, their quality table, a chart, and a chat.

Pick a model (kind base, full, merged or distilled), tick quant types (each with its one-line
explanation from ``llmlab.quantize.step.TYPE_INFO`` and its expected size, parameters x bits / 8),
choose where the importance matrix comes from, tick GPTQ/AWQ/RTN (``llmlab.quantize.gptq.METHODS``) with
bits, group size and calibration text, and start a one-step ``quantize`` recipe as a job;
a fragment follows its progress. The model picker opens on the leaderboard's winner when it can be
quantized (``llmlab.catalog.default_model_index``); Q8_0 and Q4_K_M are ticked at first. When some outputs are
already in the store, the page says which were made from the same source with the same settings
(a job reuses them and their scores) and which otherwise (a job replaces them), and offers Reuse
(the default) or Redo. Below, the model's variants are read back from the store
(``llmlab.quantize.step.stored_table``: children of the model, with their ``metrics.json``) as a table and
a chart of size against KL divergence or perplexity with the Pareto front highlighted, and any
variant can be chatted with. Nothing imports torch or llama.cpp until a chat loads a model.

What a model allows (types and methods with their sizes and the reasons some cannot be picked, the
form's problems and the config it stands for, the chart's axes and Pareto front) is worked out by
``llmlab.quantize.choices``; the job to follow is ``llmlab.jobs.latest_job``. The page only lays out
widgets and calls them. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from llmlab import world
from llmlab.catalog import default_model_index
from llmlab.errors import LlmlabError
from llmlab.evaluate.choices import leaderboard_winner
from llmlab.jobs import FINAL, JobQueue, latest_job
from llmlab.quantize.choices import (FORM_TYPES, QUALITY_AXES, MethodChoice, TypeChoice, existing_outputs,
                                     form_config, form_problems, method_choices, n_params, needs_calibration,
                                     plottable, quality_axes, quality_front, type_choices)
from llmlab.quantize.gptq import BITS, GROUP_SIZES
from llmlab.quantize.step import QuantizeConfig, stored_table, tensor_shapes
from llmlab.store import MODEL_KINDS, Artifact, Store
from widgets import chat_panel, job_panel, job_queue, start_button

IMATRIX_SOURCES = {  # llmlab.quantize.choices.IMATRIX_SOURCES -> its label
    "none": "none: plain rounding",
    "world": "world: the demo world's training texts",
    "file": "a calibration text file (.txt or .jsonl)",
}
TABLE_COLUMNS = ("name", "type", "size_mb", "bpw", "ppl", "kld_mean", "kld_p99", "top1", "accuracy",
                 "gen_tok_s", "prompt_tok_s", "peak_rss_mb", "measured_at", "load_avg", "reference", "imatrix")
EXISTING = {"reuse": "Reuse them and their scores (not made or scored again)",
            "redo": "Redo: make and score them again"}
HELP = {name: f.description for name, f in QuantizeConfig.model_fields.items()}


# ----- drawing helpers (no Streamlit calls) -----
def human_size(n_bytes: float) -> str:
    """'812 KB', '3.4 MB', '1.2 GB' (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{int(n_bytes)} B"


def quality_chart(rows: Sequence[dict[str, Any]], y: str, *, log: bool = False) -> alt.LayerChart:
    """Size (MB) against ``y`` for every row that has both, the Pareto front drawn as a line and
    its points filled; each point is labelled with its type."""
    points = plottable(rows, y, log=log)
    front = {r["name"] for r in quality_front(rows, y, log=log)}
    data = pd.DataFrame([{"name": r["name"], "type": r["type"], "size_mb": r["size_mb"], y: r[y],
                          "bpw": r.get("bpw"),
                          "Pareto front": "on the front" if r["name"] in front else "dominated"}
                         for r in points], columns=["name", "type", "size_mb", y, "bpw", "Pareto front"])
    x_enc = alt.X("size_mb:Q", title="size (MB)")
    y_enc = alt.Y(f"{y}:Q", title=QUALITY_AXES.get(y, y),
                  scale=alt.Scale(type="log" if log else "linear", zero=False))
    base = alt.Chart(data)
    line = alt.Chart(data[data["Pareto front"] == "on the front"]).mark_line(strokeDash=[5, 3]).encode(
        x=x_enc, y=y_enc, order="size_mb:Q")
    dots = base.mark_point(size=90, filled=True).encode(
        x=x_enc, y=y_enc,
        color=alt.Color("Pareto front:N", scale=alt.Scale(domain=["on the front", "dominated"],
                                                           range=["#d62728", "#9e9e9e"])),
        tooltip=["name", "type", "size_mb", y, "bpw"])
    labels = base.mark_text(align="left", dx=7, dy=-7).encode(x=x_enc, y=y_enc, text="type:N")
    return (line + dots + labels).properties(height=340)


# ----- the page -----
def type_picker(options: list[TypeChoice], imatrix_chosen: bool) -> list[str]:
    """Checkboxes for the types, in two groups; returns the ticked types that can be made."""
    ticked: list[str] = []

    def row(o: TypeChoice) -> None:
        c1, c2 = st.columns([2, 5])
        value = c1.checkbox(f"{o.type} · ≈{human_size(o.expected_bytes)}",
                            value=o.type in FORM_TYPES, key=f"quantize:type:{o.type}",
                            disabled=not o.available, help=o.reason or o.explanation)
        note = f"≈{o.bits} bits per weight. {o.explanation}"
        c2.caption(note + (f"  \n:orange[Not available: {o.reason}]" if o.reason else "")
                   + (f"  \n:blue[{o.note}]" if o.note else ""))
        if value and o.available:
            ticked.append(o.type)

    st.markdown("**Types** (expected size = parameters × bits per weight / 8)")
    for o in options:
        if not o.needs_imatrix:
            row(o)
    with st.expander("Types that need an importance matrix (IQ1, IQ2, IQ3, Q2_K_S)", expanded=imatrix_chosen):
        if not imatrix_chosen:
            st.info("These types need an importance matrix: at 1-3 bits per weight, plain rounding ruins "
                    "the model, so llama.cpp refuses them without one. Choose an imatrix source above to "
                    "enable them.")
        for o in options:
            if o.needs_imatrix:
                row(o)
    return ticked


def method_picker(shapes: dict[str, list[int]], has_world: bool) -> tuple[list[str], dict[str, Any]]:
    """GPTQ, AWQ and RTN checkboxes with bits, group size and calibration; returns the ticked methods
    and the config fields they need (none when nothing is ticked)."""
    st.markdown("**GPTQ, AWQ and RTN** (through GPTQModel; safetensors for GPU servers, scored against "
                "the source model)")
    c1, c2 = st.columns(2)
    bits = c1.selectbox("Bits", BITS, key="quantize:bits", help=HELP["bits"])
    group_size = c2.selectbox("Group size", GROUP_SIZES, index=GROUP_SIZES.index(128), key="quantize:group_size",
                              help=HELP["group_size"])
    ticked = []
    choices: list[MethodChoice] = method_choices(shapes, bits, group_size)
    for o in choices:
        c1, c2 = st.columns([2, 5])
        value = c1.checkbox(f"{o.method.upper()} · ≈{human_size(o.expected_bytes)}", False,
                            key=f"quantize:method:{o.method}", disabled=not o.available,
                            help=o.reason or o.explanation)
        c2.caption(o.explanation + (f"  \n:orange[Not available: {o.reason}]" if o.reason else ""))
        if value and o.available:
            ticked.append(o.method)
    if not ticked:
        return [], {}
    options: dict[str, Any] = {"bits": bits, "group_size": group_size}
    if needs_calibration(ticked):
        c1, c2 = st.columns(2)
        source = c1.selectbox("Calibration text", ["world", "file"], index=0 if has_world else 1,
                              format_func={"world": "the world's training texts", "file": "a text file"}.get,
                              key="quantize:calibration", help=HELP["calibration"])
        options["calibration"] = "world" if source == "world" else \
            c1.text_input("Calibration file", key="quantize:calibration_file", help=HELP["calibration"]).strip()
        options["calibration_samples"] = int(c2.number_input(
            "Calibration samples", 1, 100_000, QuantizeConfig.model_fields["calibration_samples"].default,
            key="quantize:calibration_samples", help=HELP["calibration_samples"]))
    return ticked, options


def quantize_form(store: Store, queue: JobQueue, art: Artifact) -> None:
    """The form: types, imatrix source, evaluation options; submits a one-step recipe."""
    try:
        shapes = tensor_shapes(art.path)
    except LlmlabError as e:
        st.error(f"Cannot read the shapes of '{art.name}': {e}")
        return
    params = n_params(shapes)
    has_world = world.find_world(store, art) is not None
    st.caption(f"{art.name}: {params:,} parameters; the f16 GGUF reference is about "
               f"{human_size(params * 2)}."
               + ("" if has_world else " It was not trained on the demo world: give evaluation texts below."))

    source = st.selectbox("Importance matrix from", list(IMATRIX_SOURCES), format_func=IMATRIX_SOURCES.get,
                          key="quantize:imatrix", help=HELP["imatrix"])
    imatrix: str | None = None if source == "none" else source
    if source == "file":
        imatrix = st.text_input("Calibration file", key="quantize:imatrix_file", help=HELP["imatrix"]).strip()
    types = type_picker(type_choices(shapes, imatrix=source != "none"), source != "none")
    methods, gptq_options = method_picker(shapes, has_world)

    with st.expander("Options", expanded=not has_world):
        c1, c2 = st.columns(2)
        prefix = c1.text_input("Name prefix", "", placeholder=art.name, key="quantize:prefix",
                               help=HELP["name_prefix"]).strip()
        chunks = c2.number_input("Calibration chunks", 1, 10_000,
                                 QuantizeConfig.model_fields["imatrix_chunks"].default, key="quantize:chunks",
                                 help=HELP["imatrix_chunks"])
        score = st.checkbox("Score every variant (the quality table)", True, key="quantize:score",
                            help=HELP["score"])
        c3, c4 = st.columns(2)
        eval_data = c3.text_input("Evaluation texts", "auto", key="quantize:eval_data",
                                  placeholder="auto, prose or a .txt or .jsonl file", help=HELP["texts"]).strip()
        qa = c4.text_input("Questions", "heldout" if has_world else "none", key="quantize:qa",
                           help=HELP["qa"]).strip()

    problems = form_problems(art.name, types=types, methods=methods, imatrix_source=source, imatrix=imatrix,
                             calibration=gptq_options.get("calibration"), score=score, texts=eval_data, qa=qa,
                             has_world=has_world)
    for p in problems:
        st.warning(p)

    form: dict[str, Any] = {"types": types, "methods": methods, "imatrix": imatrix, "imatrix_chunks": int(chunks),
                            "score": score, "texts": eval_data, "qa": qa, "name_prefix": prefix,
                            "method_options": gptq_options}
    config = form_config(art.name, **form)
    if (types or methods) and not problems:
        try:
            existing = existing_outputs(config, store)
        except (LlmlabError, ValueError) as e:  # e.g. a name prefix that is not a valid artifact name
            problems.append(str(e))
            st.warning(str(e))
        else:
            if existing and reuse_or_redo(existing) == "redo":
                config = form_config(art.name, **form, redo=True)
    start_button(queue, "quantize", config, label="Start quantizing", title=f"quantize {art.name}",
                 session_key="quantize:job", disabled=bool(problems), where="the Quantize form")


def reuse_or_redo(existing: dict[str, list[str]]) -> str:
    """Say which outputs already in the store were made alike and which a job replaces (and why), and
    ask whether to "reuse" (the default) or "redo" the former."""
    same = [name for name, why in existing.items() if not why]
    other = [f"{name} ({', '.join(why)})" for name, why in existing.items() if why]
    if same:
        st.info(f"Already made from the same source with the same settings: {', '.join(same)}.")
    if other:
        st.info(f"Made otherwise, so a job replaces them: {', '.join(other)}.")
    if not same:
        return "reuse"  # nothing to choose: every one of them is made again anyway
    return st.radio("Outputs made alike", list(EXISTING), format_func=EXISTING.get, horizontal=True,
                    key="quantize:existing", help=HELP["redo"])


def results(store: Store, model: str) -> None:
    """The stored quality table, the size-vs-quality chart and a chat with any variant."""
    st.subheader(f"Variants of {model}")
    rows = stored_table(store, model)
    if not rows:
        st.caption(f"No quantized variants of {model} in the store yet: start a quantize job above.")
        return
    st.dataframe([{k: r.get(k) for k in TABLE_COLUMNS} for r in rows], hide_index=True, column_config={
        "size_mb": st.column_config.NumberColumn("size (MB)", format="%.3f"),
        "kld_mean": st.column_config.NumberColumn("KLD mean", format="%.5f", help=QUALITY_AXES["kld_mean"]),
        "kld_p99": st.column_config.NumberColumn("KLD p99", format="%.5f", help=QUALITY_AXES["kld_p99"]),
        "top1": st.column_config.NumberColumn("top-1", format="%.3f",
                                              help="How often the variant's likeliest next token is the "
                                              "reference's."),
        "gen_tok_s": st.column_config.NumberColumn("gen tok/s", format="%.1f"),
        "prompt_tok_s": st.column_config.NumberColumn("prompt tok/s", format="%.1f"),
        "measured_at": st.column_config.TextColumn("speed measured", help="When the speed figures were taken."),
        "load_avg": st.column_config.NumberColumn("load avg", format="%.2f",
                                                  help="The machine's 1-minute load average when speed was "
                                                  "measured: a busy machine gives lower tok/s."),
    })
    st.caption("KL divergence and top-1 compare each variant's next-token distribution with its reference "
               "(the f16 GGUF for GGUF variants; the source model for the f16 itself and for GPTQ, AWQ and "
               "RTN) on the same "
               "held-out text; lower KLD and higher top-1 are better.")
    axes = quality_axes(rows)
    if axes:
        c1, c2 = st.columns([3, 1])
        y = c1.radio("Quality axis", axes, format_func=QUALITY_AXES.get, horizontal=True, key="quantize:axis")
        log = c2.toggle("Log scale", y.startswith("kld"), key=f"quantize:log:{y}")
        st.altair_chart(quality_chart(rows, y, log=log), width="stretch")
        front = quality_front(rows, y, log=log)
        st.caption("Pareto front (nothing else is both smaller and better): "
                   + ", ".join(f"{r['type']} ({r['size_mb']:.3g} MB)" for r in front) + ".")
    else:
        st.caption("No quality numbers yet: the variants were not scored (score was off).")
    variant_chat(store, rows)


def variant_chat(store: Store, rows: list[dict[str, Any]]) -> None:
    """Chat with one of the rows' artifacts (default: the smallest)."""
    st.subheader("Chat with a variant")
    names = [r["name"] for r in rows]
    name = st.selectbox("Variant", names, index=len(names) - 1, key="quantize:chat")
    chat_panel(store, store.get(name), key="quantize:chat")


def main() -> None:
    store = Store()
    queue = job_queue(str(store.root))
    st.title("Quantize")
    st.markdown("Make GGUF variants of a model with llama.cpp (or GPTQ, AWQ and RTN ones with GPTQModel), score "
                "each against its reference on the same held-out text, and pick the smallest one whose quality "
                "you can accept.")
    models = [a for a in store.list() if a.kind in MODEL_KINDS]
    if not models:
        st.info(f"The store has no model to quantize (kinds {', '.join(MODEL_KINDS)}). Build the demo model "
                "with the quickstart (`llmlab run recipes/quickstart.yaml`) or import one with "
                "`llmlab models add`.")
        return
    names = [a.name for a in models]
    # the leaderboard's winner when it is a model the page can quantize, else a full-precision base first
    name = st.selectbox("Model", names, key="quantize:model", format_func=lambda n: f"{n} ({store.get(n).kind})",
                        index=default_model_index(store, names, "quantize", winner=leaderboard_winner(store, names)))
    art = store.get(name)
    st.subheader("New variants")
    with st.container(border=True):
        quantize_form(store, queue, art)

    job = latest_job(queue, "quantize", reads=art.name)
    if job is not None:
        st.subheader("Job")
        st.fragment(run_every=1 if job.status not in FINAL else None)(job_panel)(queue, job.id, "quantize")
    results(store, art.name)


if __name__ == "__main__":
    main()
