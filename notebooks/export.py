"""The Export station: a model as a deployable bundle, its parity report, and an OpenAI-compatible server.

Run it with `marimo edit notebooks/export.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small") and
LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Exporting and serving a model

    A model in the store is not yet something you can run on a server. **Export** turns it into a
    *bundle*: the model in its serving format (a GGUF file for llama.cpp and Ollama), an
    OpenAI-compatible server configuration, a `requirements.lock` with only what serving needs, a
    non-root `Dockerfile`, an Ollama `Modelfile` whose chat template is translated from the
    model's Jinja template and checked, the recipe that rebuilds it, and a manifest with the sha256
    of every file. Before the bundle is written, a **parity check** replays fixed prompts through
    the bundle's server over HTTP and through the evaluated artifact in process: same chat template,
    same tokens, same greedy answers, log-probabilities within a tolerance. Every cell calls
    `llmlab`: the same calls as `llmlab export`, `llmlab serve` and the app's Export page.
    """)
    return


@app.cell
def _():
    import marimo as mo

    from llmlab.build import open_or_build
    from llmlab.export import ExportConfig, export, plan, verify_bundle
    from llmlab.quantize.step import QuantizeConfig, quantize
    from llmlab.serve import process
    from llmlab.serve.client import metrics, snippets, stream_chat
    from llmlab.settings import notebook_settings
    from llmlab.store import Store

    return (ExportConfig, QuantizeConfig, Store, export, metrics, mo, notebook_settings, open_or_build, plan, process,
            quantize, snippets, stream_chat, verify_bundle)


@app.cell
def _(Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    store = Store()
    mo.md(f"The store is `{store.root}`; this notebook exports the Q4_K_M GGUF of `{MODEL_NAME}`.")
    return AUTORUN, MODEL_NAME, SIZE, store


@app.cell(hide_code=True)
def _(mo):
    prepare_button = mo.ui.run_button(label="Open the model and its Q4_K_M GGUF", kind="success")
    mo.vstack([mo.md("## The model\n\nThe demo model is opened (or built), then quantized to Q4_K_M "
                     "(skipped when the store has it): the file a CPU server runs."), prepare_button])
    return (prepare_button,)


@app.cell
def _(AUTORUN, MODEL_NAME, QuantizeConfig, SIZE, mo, open_or_build, plan, prepare_button, quantize, store):
    mo.stop(not (prepare_button.value or AUTORUN), mo.md("*Press the button above.*"))
    _base = open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    _config = QuantizeConfig(model=_base.name, types=["q4_k_m"], score=False)
    gguf_name = _config.variant_name("q4_k_m")
    if not store.exists(gguf_name):
        with mo.status.spinner(f"Quantizing {_base.name} to Q4_K_M"):
            quantize(_config, store=store, overwrite=True)
    mo.vstack([mo.md(f"What exporting **{gguf_name}** puts into its bundle:"),
               mo.ui.table(plan(store.get(gguf_name)), selection=None, show_download=False)])
    return (gguf_name,)


@app.cell(hide_code=True)
def _(mo):
    export_button = mo.ui.run_button(label="Export (with the parity check)", kind="success")
    mo.vstack([mo.md("## Export\n\n`export(ExportConfig(model=...))` writes the bundle atomically and a "
                     "`.tar.gz` beside it; a drift in template, tokens or answers fails the export."), export_button])
    return (export_button,)


@app.cell
def _(AUTORUN, ExportConfig, export, export_button, gguf_name, mo, store, verify_bundle):
    mo.stop(not (export_button.value or AUTORUN), mo.md("*Press the button above to export.*"))
    with mo.status.spinner("Exporting and checking parity"):
        bundle = export(ExportConfig(model=gguf_name), store=store, overwrite=True)
    parity = bundle.metrics["parity"]
    mo.vstack([
        mo.md(f"**{bundle.name}**: {len(bundle.manifest.files)} files, every hash verified: "
              f"{verify_bundle(bundle.path) == []}. Parity **{'ok' if parity['ok'] else 'DRIFT'}**, largest "
              f"log-probability difference {parity['max_logprob_diff']:.1e} over {parity['prompts']} prompts."),
        mo.md("The Ollama Modelfile:"),
        mo.plain_text((bundle.path / "Modelfile").read_text()),
    ])
    return (bundle,)


@app.cell(hide_code=True)
def _(mo):
    serve_button = mo.ui.run_button(label="Start the server, ask it, stop it", kind="success")
    mo.vstack([mo.md("## Serve\n\n`llmlab serve BUNDLE` verifies every hash, loads the model and answers "
                     "OpenAI requests on 127.0.0.1. Here it runs as a background process for one question."),
               serve_button])
    return (serve_button,)


@app.cell
def _(AUTORUN, bundle, metrics, mo, process, serve_button, snippets, store, stream_chat):
    mo.stop(not (serve_button.value or AUTORUN), mo.md("*Press the button above to serve the bundle.*"))
    from llmlab.world import example_question as _example_question

    _question = _example_question(store, bundle)  # one the model can answer: from its demo world, if any
    _server = process.start(bundle.name, store=store)
    try:
        answer = "".join(stream_chat(_server["url"], bundle.name,
                                     [{"role": "user", "content": _question}], max_tokens=32,
                                     temperature=0))
        served_metrics = {k: v for k, v in metrics(_server["url"]).items() if k.startswith("llmlab_tokens")}
        _code = snippets(_server["url"], bundle.name, question=_question)
    finally:
        process.stop(bundle.name, store=store)
    mo.vstack([mo.md(f"**Answer over HTTP:** {answer}"), mo.md(f"Token counters: `{served_metrics}`"),
               mo.md("The same request with curl:"), mo.plain_text(_code["curl"])])
    return answer, served_metrics


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - Verify the bundle from a terminal: `llmlab bundle verify models/<bundle>` recomputes every
      sha256; edit one byte of a file and run it again.
    - Serve it for real: `llmlab serve models/<bundle>` (127.0.0.1:8000), then point any OpenAI
      client at `http://127.0.0.1:8000/v1`. Binding another address needs `--api-key-env`.
    - Build the container: `docker build -t my-model models/<bundle>` and run it; or
      `ollama create my-model -f models/<bundle>/Modelfile`.
    - Export another variant (a GPTQ model, an agent with its index) and compare the parity reports.
    - Turn the server's request log into an eval set: `llmlab eval from-logs` and put it on the
      leaderboard (`notebooks/evaluate.py`).
    """)
    return


if __name__ == "__main__":
    app.run()
