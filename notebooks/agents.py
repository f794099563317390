"""The Agents station: index the demo world's documents, search them, build a LangGraph agent, draw
it, ask it questions and measure what retrieval adds.

Run it with `marimo edit notebooks/agents.py` (or `marimo run`, or plain `python`). Environment:
LLMLAB_HOME (the store), LLMLAB_NOTEBOOK_SIZE (demo model size, default "small") and
LLMLAB_NOTEBOOK_AUTORUN=1 (press the run buttons, for CI).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # A RAG agent over your documents

    A **RAG agent** answers from documents it retrieves instead of from what the model memorised.
    This notebook builds one on the demo world: its documents describe people and towns that
    appear **nowhere else**, so the model cannot know them without reading. Steps: build an
    **index** (Chroma for embeddings + BM25 for words), try the **search modes**, build the agent's
    **graph** from the spec `agents/rag-rules.yaml`, ask it questions with its **sources** and
    **trace**, and finally **evaluate** its answers with and without retrieval. Every cell calls
    `llmlab`: the same calls as `llmlab index`, `llmlab agent`, `llmlab eval answers` and the app's
    Agents page.
    """)
    return


@app.cell
def _():
    import marimo as mo

    from llmlab.agents import Agent
    from llmlab.agents.choices import trace_rows
    from llmlab.agents.evaluate import EvalAnswersConfig, evaluate_answers
    from llmlab.agents.trace import TraceStore
    from llmlab.build import open_or_build
    from llmlab.rag.index import IndexConfig, build_index
    from llmlab.rag.search import Searcher
    from llmlab.settings import notebook_settings
    from llmlab.store import Store
    from llmlab.world import find_world

    return (
        Agent,
        EvalAnswersConfig,
        IndexConfig,
        Searcher,
        Store,
        TraceStore,
        open_or_build,
        build_index,
        evaluate_answers,
        find_world,
        mo,
        notebook_settings,
        trace_rows,
    )


@app.cell
def _(Store, mo, notebook_settings):
    AUTORUN, SIZE, MODEL_NAME = notebook_settings()  # LLMLAB_NOTEBOOK_AUTORUN=1: CI presses the buttons
    INDEX_NAME = f"{MODEL_NAME}-index"
    store = Store()
    mo.md(f"The store is `{store.root}`; the model is `{MODEL_NAME}` and the index `{INDEX_NAME}`.")
    return AUTORUN, INDEX_NAME, MODEL_NAME, SIZE, store


@app.cell(hide_code=True)
def _(MODEL_NAME, mo):
    build_button = mo.ui.run_button(label=f"Open or build '{MODEL_NAME}' and its index", kind="success")
    mo.vstack([
        mo.md(r"""
    ## The model and the index

    The demo model (built by the tour or the quickstart; opened if the store has it) brings its
    world. `build_index(IndexConfig(source="world"))` chunks the world's documents, embeds them
    with the packaged all-MiniLM-L6-v2 into a Chroma collection on disk, builds a BM25 index, and
    stores both as one `index` artifact (skipped here when it already exists).
    """),
        build_button,
    ])
    return (build_button,)


@app.cell
def _(
    AUTORUN,
    INDEX_NAME,
    IndexConfig,
    MODEL_NAME,
    SIZE,
    build_button,
    open_or_build,
    build_index,
    mo,
    store,
):
    mo.stop(not (build_button.value or AUTORUN), mo.md("*Press the button above to open or build them.*"))
    open_or_build(MODEL_NAME, SIZE, store, mo.status.progress_bar)
    if not store.exists(INDEX_NAME):
        with mo.status.spinner(title=f"Indexing the world of {MODEL_NAME}"):
            build_index(IndexConfig(name=INDEX_NAME, source="world", world_of=MODEL_NAME), store=store)
    index = store.get(INDEX_NAME)
    mo.md(f"**{index.name}**: {index.manifest.info.get('chunks', '?')} chunks, content hash "
          f"`{index.content_hash[:12]}`.")
    return (index,)


@app.cell(hide_code=True)
def _(mo):
    query = mo.ui.text(value="Which river does Kruskais stand on?", label="Query", full_width=True)
    mode = mo.ui.dropdown(["hybrid", "dense", "bm25"], value="hybrid", label="Mode")
    k = mo.ui.slider(1, 10, value=3, label="k")
    mo.vstack([
        mo.md(r"""
    ## Search

    **Dense** search compares embeddings (meaning), **BM25** counts shared words (names!), and
    **hybrid** fuses both rankings by reciprocal rank. Try a name the embedder has never seen.
    """),
        mo.hstack([query, mode, k]),
    ])
    return k, mode, query


@app.cell
def _(Searcher, index, k, mo, mode, query, store):
    searcher = Searcher.open(index.name, store=store)
    _hits = searcher.search(query.value, k=k.value, mode=mode.value)
    mo.ui.table([{"doc": h.doc_id, "title": h.title, "score": round(h.score, 4), "text": h.text[:120]}
                 for h in _hits], selection=None, show_download=False)
    return (searcher,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The agent's graph

    `Agent("rag-rules", ...)` builds a LangGraph `StateGraph` from the spec: **route** (arithmetic
    goes to the calculator tool), **retrieve**, **grade** (a rule keeps hits that contain the
    question's names and most of its words), **rewrite** and retry when nothing is relevant,
    **answer** (always the chat model), **check** (refuse when the answer's words are not in the
    sources). A spec whose nodes say `use: model` (`agents/rag.yaml`) lets a bigger model decide.
    """)
    return


@app.cell
def _(Agent, INDEX_NAME, MODEL_NAME, index, mo, searcher, store):
    agent = Agent("rag-rules", store=store, index=INDEX_NAME, model=MODEL_NAME, searcher=searcher,
                  memory=store.root / ".agent-memory.db")
    mo.vstack([mo.md(f"Spec `{agent.spec.name}` over index `{index.name}`; nodes that call the model: "
                     f"{', '.join(agent.spec.uses_model())}."), mo.mermaid(agent.draw())])
    return (agent,)


@app.cell(hide_code=True)
def _(MODEL_NAME, find_world, index, mo, store):
    # The first of the world's RAG questions (after the index cell, which opened or built the model).
    _first = find_world(store, store.get(MODEL_NAME)).split("rag")[0]["question"]
    question = mo.ui.text(value=_first, label=f"Ask the agent (about the world of {index.name}; try your own)",
                          full_width=True)
    question
    return (question,)


@app.cell
def _(TraceStore, agent, mo, question, store, trace_rows):
    reply = agent.ask(question.value, thread_id="notebook")
    _steps = TraceStore.for_store(store).steps(reply.run_id)
    mo.vstack([
        mo.md(f"**Answer:** {reply.answer}" + ("  *(refused)*" if reply.refused else "")),
        mo.md("**Sources:** " + (", ".join(f"[{s['n']}] {s['title']} (`{s['doc_id']}`)" for s in reply.sources)
                                 or "none")),
        mo.md("**Trace:**"),
        mo.ui.table(trace_rows(_steps), selection=None, show_download=False),
    ])
    return (reply,)


@app.cell(hide_code=True)
def _(mo):
    eval_button = mo.ui.run_button(label="Evaluate on the world's rag questions", kind="success")
    mo.vstack([
        mo.md(r"""
    ## Does retrieval help?

    `evaluate_answers` asks every `rag` question twice: through the agent, and to the same model
    with no documents (closed book). Exact match, F1 and accuracy (the answer starts with the gold
    word) are compared; `gold_doc_recall` says how often the gold document was retrieved. The tiny
    demo model has not learned to read an answer out of a context (see docs/agents.md), so expect
    retrieval to find the right document far more often than the model uses it.
    """),
        eval_button,
    ])
    return (eval_button,)


@app.cell
def _(
    AUTORUN,
    EvalAnswersConfig,
    INDEX_NAME,
    MODEL_NAME,
    SIZE,
    eval_button,
    evaluate_answers,
    mo,
    searcher,
    store,
):
    mo.stop(not (eval_button.value or AUTORUN), mo.md("*Press the button above to evaluate.*"))
    _limit = 10 if SIZE == "micro" else 100
    with mo.status.spinner(title="Asking every question twice"):
        report = evaluate_answers(EvalAnswersConfig(spec="rag-rules", index=INDEX_NAME, model=MODEL_NAME,
                                                    questions="rag", limit=_limit), store=store, searcher=searcher)
    _rows = [{"setting": part, **{key: report[part].get(key) for key in
                                  ("n", "accuracy", "exact_match", "f1", "refused", "gold_doc_recall")}}
             for part in ("retrieval", "closed_book")]
    mo.vstack([mo.ui.table(_rows, selection=None, show_download=False),
               mo.md(f"Retrieval gain (accuracy): **{report['retrieval_gain'].get('accuracy', 0):+.1%}**")])
    return (report,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What to try next

    - Change the search: `retriever.mode` (dense, bm25, hybrid) and `retriever.k` in
      `agents/rag-rules.yaml`, or the grading threshold, and compare which documents come back.
    - Swap the model: `model.artifact` in the spec can be any chat model in the store (an imported
      instruction-tuned model, `llmlab models add`, reads its sources far better than the tiny demo
      model); evaluate again and watch the retrieval gain.
    - Index your own files: `llmlab index --name my-docs --source path/to/folder` (txt, md, html,
      pdf, jsonl), then build an agent over it on the **Agents** page and read its traces.
    - Measure retrieval on a real set: `llmlab eval retrieval --index ... --corpus ... --queries ...
      --qrels ...` (BEIR layout; `docs/agents.md` shows SciFact).
    - Export the agent with its model and index: `llmlab export --model demo-agent`, then
      `llmlab serve` it and ask it through the OpenAI API.
    """)
    return


if __name__ == "__main__":
    app.run()
