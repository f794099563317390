"""The Quantize station: GGUF variants of the demo model, their quality table and the size/quality trade-off,
then GPTQ against round-to-nearest (RTN) through GPTQModel: what calibration buys.

Run it with `marimo edit notebooks/quantize.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small"; micro quantizes
only three types) and LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Quantizing a model: GGUF, and GPTQ against RTN

    A model's weights are stored as 16- or 32-bit floats; llama.cpp's **GGUF quant types** store
    them in blocks of 32 or 256 numbers that share a scale, at 8 down to under 2 bits per weight.
    Files shrink and generation speeds up (it is bound by how fast the weights stream from
    memory), at some cost in quality. This notebook teaches how to measure that cost: it converts
    the demo model to an **f16 GGUF** (the reference), quantizes it to a few types, scores every
    variant on the same held-out text, and plots size against **KL divergence** from the
    reference, so you can read off the **Pareto front**: the variants that no other variant beats
    on both size and quality. Every cell calls `llmlab`: the same calls a `quantize` recipe step,
    `llmlab quantize` and the app's Quantize page make.
    """)
    return


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import pandas as pd

    from llmlab.build import open_or_build
    from llmlab.events import bar_updates, tee
    from llmlab.quantize.choices import gguf_expected_bytes, plottable, quality_front
    from llmlab.quantize.step import DEFAULT_TYPES, TYPE_INFO, QuantizeConfig, quality_table, quantize
    from llmlab.settings import notebook_settings
    from llmlab.store import Store

    return (
        DEFAULT_TYPES,
        QuantizeConfig,
        Store,
        TYPE_INFO,
        alt,
        bar_updates,
        gguf_expected_bytes,
        mo,
        open_or_build,
        notebook_settings,
        pd,
        plottable,
        quality_front,
        quality_table,
        quantize,
        tee,
    )


@app.cell
def _(DEFAULT_TYPES, Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    # micro is for tests: three types show the trend in seconds; the other sizes get the default six
    TYPES = ["q8_0", "q4_k_m", "q2_k"] if SIZE == "micro" else list(DEFAULT_TYPES)
    store = Store()
    mo.md(f"The store is `{store.root}`; this notebook quantizes the **{SIZE}** demo model `{MODEL_NAME}` "
          f"to {', '.join(t.upper() for t in TYPES)}.")
    return AUTORUN, MODEL_NAME, SIZE, TYPES, store


@app.cell(hide_code=True)
def _(MODEL_NAME, mo):
    build_button = mo.ui.run_button(label=f"Open or build '{MODEL_NAME}'", kind="success")
    mo.vstack([
        mo.md(r"""
    ## The model

    The source is the demo `base` model (the tour builds it; if the store already holds it, it is
    opened). Any `base`, `full`, `merged` or `distilled` artifact can be quantized the same way.
    """),
        build_button,
    ])
    return (build_button,)


@app.cell
def _(AUTORUN, MODEL_NAME, SIZE, build_button, mo, open_or_build, store):
    mo.stop(not (build_button.value or AUTORUN),
            mo.md("*Press the button above to open or build the model.*"))
    artifact = open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    mo.md(f"**{artifact.name}** ({artifact.kind}): {artifact.manifest.info.get('n_params', 0):,} parameters, "
          f"content hash `{artifact.content_hash[:12]}`.")
    return (artifact,)


@app.cell
def _(TYPES, TYPE_INFO, artifact, gguf_expected_bytes, mo):
    _n = artifact.manifest.info.get("n_params") or 0
    _types = [{"type": t.upper(), "bits per weight (about)": TYPE_INFO[t.upper()][0],
               "expected size (MB)": round(gguf_expected_bytes(t, _n) / 1e6, 3),
               "what it is": TYPE_INFO[t.upper()][1]} for t in TYPES]
    mo.vstack([
        mo.md("The types this notebook makes, with their expected size (parameters × bits ÷ 8; the real "
              "file adds metadata and keeps a few small tensors at higher precision):"),
        mo.ui.table(_types, selection=None, show_download=False),
    ])
    return


@app.cell(hide_code=True)
def _(mo):
    quantize_button = mo.ui.run_button(label="Quantize and score", kind="success")
    mo.vstack([
        mo.md(r"""
    ## Quantize and score

    `quantize(QuantizeConfig(...))` converts the model once to `<name>-f16` (a GGUF artifact),
    writes one `gguf` artifact per type (`<name>-q4_k_m`...), each checked to tokenize exactly as
    the source does, and then scores the source, the f16 file and every variant with the same
    scorer on the world's held-out text: perplexity, KL divergence and top-1 agreement against the
    f16 reference, world-question accuracy, size, bits per weight and speed. If the variants are
    already in the store, they are re-scored instead of rebuilt.
    """),
        quantize_button,
    ])
    return (quantize_button,)


@app.cell
def _(
    AUTORUN,
    MODEL_NAME,
    QuantizeConfig,
    TYPES,
    artifact,
    bar_updates,
    mo,
    quality_table,
    quantize,
    quantize_button,
    store,
    tee,
):
    mo.stop(not (quantize_button.value or AUTORUN), mo.md("*Press the button above to quantize the model.*"))
    config = QuantizeConfig(model=artifact.name, types=TYPES)
    _names = [MODEL_NAME, config.variant_name("f16"), *(config.variant_name(t) for t in config.types)]
    _n = len(config.types)
    # quantize reports the progress of its "quantize" task (one per type) and then of its "quality" task
    # (one per scored model: the source, the f16 file and each type); one bar counts both
    with mo.status.progress_bar(total=2 * _n + 2, title=f"Quantizing {MODEL_NAME}", show_eta=False) as _bar:
        _progress = tee(bar_updates(_bar, task="quantize"), bar_updates(_bar, task="quality"))
        if all(store.exists(_o) for _o in config.outputs):
            rows = quality_table(_names, store, progress=_progress)
        else:
            # overwrite: a variant left from an earlier, interrupted run of this cell is replaced
            rows = quantize(config, store=store, progress=_progress, overwrite=True)["table"]
    mo.md(f"Scored {len(rows)} models: {', '.join(r['name'] for r in rows)}.")
    return config, rows


@app.cell
def _(mo, pd, rows):
    table = pd.DataFrame(rows)[["name", "type", "size_bytes", "bpw", "ppl", "kld_mean", "kld_p99", "top1",
                                "accuracy", "gen_tok_s", "reference"]]
    table["size_bytes"] = (table["size_bytes"] / 1e6).round(3)
    mo.vstack([
        mo.md("### The quality table (size in MB)"),
        mo.ui.table(table.rename(columns={"size_bytes": "size_mb"}), selection=None, show_download=False),
    ])
    return (table,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Size against quality

    Each point is one GGUF file: its size, and its mean KL divergence from the reference (log
    scale). A variant is on the **Pareto front** (red, joined by the dashed line) when no other
    variant is both smaller and closer to the reference; everything else is dominated and never
    worth picking. The source model has no KL divergence (it is what the f16 file is compared
    with), so it is not drawn.
    """)
    return


@app.cell
def _(alt, mo, pd, plottable, quality_front, rows):
    _points = plottable(rows, "kld_mean", x="size_bytes", log=True)
    mo.stop(not _points, mo.md("*No KL divergence numbers to plot (was scoring switched off?).*"))
    # a point is dominated when another is no larger and no worse, and strictly better on one of the two
    front = quality_front(rows, "kld_mean", x="size_bytes", log=True)
    _front_names = {r["name"] for r in front}
    _data = pd.DataFrame([{"name": r["name"], "type": r["type"], "size_mb": r["size_bytes"] / 1e6,
                           "kld_mean": r["kld_mean"], "top1": r["top1"],
                           "Pareto front": "on the front" if r["name"] in _front_names else "dominated"}
                          for r in _points])
    _x = alt.X("size_mb:Q", title="size (MB)")
    _y = alt.Y("kld_mean:Q", title="mean KL divergence vs the reference", scale=alt.Scale(type="log"))
    _line = alt.Chart(_data[_data["Pareto front"] == "on the front"]).mark_line(strokeDash=[5, 3]).encode(
        x=_x, y=_y, order="size_mb:Q")
    _dots = alt.Chart(_data).mark_point(size=90, filled=True).encode(
        x=_x, y=_y, tooltip=["name", "type", "size_mb", "kld_mean", "top1"],
        color=alt.Color("Pareto front:N", scale=alt.Scale(domain=["on the front", "dominated"],
                                                           range=["#d62728", "#9e9e9e"])))
    _labels = alt.Chart(_data).mark_text(align="left", dx=7, dy=-7).encode(x=_x, y=_y, text="type:N")
    mo.ui.altair_chart((_line + _dots + _labels).properties(height=320))
    return (front,)


@app.cell
def _(front, mo):
    mo.md("On the front, smallest first: " + ", ".join(f"**{r['type']}** ({r['size_bytes'] / 1e6:.3g} MB, "
                                                        f"KLD {r['kld_mean']:.2g})" for r in front) + ".")
    return


@app.cell(hide_code=True)
def _(mo):
    gptq_button = mo.ui.run_button(label="Make GPTQ and RTN variants", kind="success")
    mo.vstack([
        mo.md(r"""
    ## What calibration buys: GPTQ against RTN

    GPU servers (vLLM, TGI, transformers) load **GPTQ** and **AWQ** safetensors rather than GGUF.
    `quantize` makes them through GPTQModel, straight from the source model, with
    `types=["gptq", "awq", "rtn"]`, `bits` and `group_size`. **RTN** rounds every weight to the
    nearest of 16 levels in its group; **GPTQ** rounds one column at a time and shifts the
    rounding error onto the columns not yet rounded, using the layer's inputs on **calibration
    text** (the world's training texts, never the evaluation text). Same bits, same group size,
    same file format: the difference between the two rows below is what calibration buys. Their
    reference is the source model.
    """),
        gptq_button,
    ])
    return (gptq_button,)


@app.cell
def _(AUTORUN, QuantizeConfig, SIZE, artifact, gptq_button, mo, quality_table, quantize, store):
    mo.stop(not (gptq_button.value or AUTORUN), mo.md("*Press the button above to make the GPTQ and RTN variants.*"))
    gptq_config = QuantizeConfig(model=artifact.name, types=["gptq", "rtn"], bits=4,
                                 group_size=64 if SIZE == "micro" else 128, calibration="world",
                                 calibration_samples=16 if SIZE == "micro" else 128, score=False)
    with mo.status.spinner(title="GPTQ and RTN through GPTQModel (its first run compiles a CPU extension)"):
        if not all(store.exists(_o) for _o in gptq_config.outputs):
            quantize(gptq_config, store=store, overwrite=True)
        gptq_rows = quality_table([artifact.name, *gptq_config.outputs], store, qa=[], speed=False)
    _g, _r = gptq_rows[1], gptq_rows[2]
    mo.vstack([
        mo.ui.table([{_k: _row.get(_k) for _k in ("name", "type", "size_bytes", "bpw", "ppl", "kld_mean", "top1",
                                                  "seconds")} for _row in gptq_rows],
                    selection=None, show_download=False),
        mo.md(f"At {gptq_config.bits} bits in groups of {gptq_config.group_size}, GPTQ's mean KL divergence from "
              f"the source is **{_g['kld_mean']:.2g}** and RTN's **{_r['kld_mean']:.2g}** (top-1 agreement "
              f"{_g['top1']:.3f} and {_r['top1']:.3f}): "
              + ("calibration pays." if _g["kld_mean"] < _r["kld_mean"] else "here calibration did not pay.")),
    ])
    return (gptq_rows,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What the numbers mean

    - **KL divergence** (`kld_mean`, `kld_p99`): at every position of the held-out text, how far
      the variant's next-token distribution is from the f16 reference's, averaged (and its 99th
      percentile, the worst positions). It sees every probability, not just the winner, so it
      separates types that perplexity cannot; it is what llama.cpp's own `--kl-divergence`
      measures. The f16 row is compared with the source (safetensors) model instead, and should
      be near zero.
    - **Top-1 agreement** (`top1`): how often the variant's likeliest next token is the
      reference's. Q8_0 should agree almost always; it drops as bits fall, and a drop means
      greedy answers start to differ.
    - **Perplexity** (`ppl`): how surprised the model is by the held-out text. On a tiny model
      it barely moves between types: the model is uncertain anyway, rounding errors shift
      probability between tokens it already found about equally likely, and the gains and losses
      average out. Perplexity can even improve by chance. That is why the table measures against
      the reference: KLD and top-1 show the damage that perplexity hides.
    - **Accuracy** (`accuracy`): the share of held-out world questions answered right; on the
      demo model it is noisy, a sanity check rather than a ranking.
    - **Size and bits per weight**: the file, and its tensor data per weight; generation speed
      (`gen_tok_s`) follows the file size on a CPU, since every token streams all the weights.
    """)
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - Add an **importance matrix**: `QuantizeConfig(model=..., types=["q4_k_m", "iq2_xs"],
      imatrix="world", name_prefix="demo-im")` calibrates on the world's training texts (never the
      evaluation text); compare `demo-im-q4_k_m` with `demo-q4_k_m`, and try the IQ2/IQ3 types,
      which need one.
    - Add **AWQ**: `types=["gptq", "awq", "rtn"]`, and try `bits=8` or smaller groups
      (`group_size=32`): each is one more row against the same source.
    - Set `LLMLAB_NOTEBOOK_SIZE=large` (or pass more `types`) to see the differences grow: a
      bigger model spreads the types further apart.
    - Open the app's **Quantize** page (`streamlit run app/streamlit_app.py`): the same table and
      chart, quantize jobs in the background, and a chat with any variant.
    - Run it as a recipe: a `quantize` step in `recipes/` does what the cell above does, and
      `llmlab export-script` turns it into a plain script.
    """)
    return


if __name__ == "__main__":
    app.run()
