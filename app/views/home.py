"""Home: what the lab is, what the store holds (``llmlab.catalog.kind_counts``), and what to do next.

An empty store offers the quickstart; a store with models offers the next steps around the
Leaderboard's winner (``llmlab.evaluate.choices``): compare on the Leaderboard, export the winner,
chat with it. Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import streamlit as st

from llmlab import recipes
from llmlab.catalog import default_model_index, kind_counts
from llmlab.evaluate.choices import (cached_board, column_name, default_suite, headline_metric, scores_of, shown,
                                     winner_of)
from llmlab.export.choices import exportable
from llmlab.jobs import JobQueue
from llmlab.store import RUNNABLE_KINDS, Artifact, Store
from widgets import session_id


def quickstart(store: Store) -> None:
    """The empty store's first step: the quickstart recipe, as a job."""
    st.subheader("Start here")
    st.markdown(
        "1. Run the quickstart recipe: it builds the demo model from the seeded world and scores it.\n"
        "2. Open **Models** to see it, its lineage and its metrics, and chat with it.\n"
        "3. Follow long work on **Jobs**: every recipe runs there as a cancellable background process."
    )
    st.code("llmlab run recipes/quickstart.yaml", language="bash")
    folder = recipes.recipes_dir()
    recipe = folder / "quickstart.yaml" if folder else None
    if recipe is not None and recipe.is_file():
        if st.button("Run the quickstart as a job", type="primary"):
            job = JobQueue(store).submit(recipe, session=session_id())
            st.session_state["job"] = job.id  # the Jobs page opens on it
            st.switch_page("views/jobs.py")


def next_steps(store: Store, artifacts: list[Artifact]) -> None:
    """A store with models: its Leaderboard winner, and buttons to compare, export and chat with it."""
    st.subheader("Next steps")
    names = [a.name for a in artifacts if a.kind in RUNNABLE_KINDS]
    if not names:
        st.markdown("The store holds no model that can chat yet: build or import one (**Jobs**, "
                    "`llmlab models add`).")
        return
    board = cached_board(store, names)
    winner = winner_of(board)
    if winner:
        metric = column_name(headline_metric(default_suite()))
        row = scores_of(board)[winner]
        st.markdown(f"Leaderboard winner on **{metric}**: **{winner}** ({shown(metric, row[metric])}; perplexity "
                    f"{shown('perplexity', row['perplexity'])}).")
    else:
        st.markdown("Nothing is scored yet: score every variant on the same suite on the **Leaderboard**.")
    pick = winner or names[default_model_index(store, names, "models")]
    can_export = [a.name for a in exportable(store)]
    c1, c2, c3 = st.columns(3)
    c1.page_link("views/leaderboard.py", label="Compare on the Leaderboard", icon=":material/leaderboard:")
    if pick in can_export and c2.button(f"Export {pick}", key="home:export", icon=":material/package_2:"):
        st.session_state["export:model"] = pick  # the Export page opens on it
        st.switch_page("views/export.py")
    if c3.button(f"Chat with {pick}", key="home:chat", icon=":material/chat:"):
        st.session_state["models:selected"] = pick  # the Models page opens on it
        st.switch_page("views/models.py")


def main() -> None:
    store = Store()
    artifacts = store.list()

    st.title("llmlab")
    st.markdown(
        "A workbench for open LLMs: **build** a small demo model, **tune**, **merge** and **quantize** it, "
        "put it behind a **RAG agent**, **evaluate** every variant with the same scorer, and **export** it. "
        "Every step writes one artifact to the store, with its lineage and file hashes in a manifest."
    )

    st.subheader("The store")
    if artifacts:
        counts = kind_counts(artifacts)
        cols = st.columns(min(len(counts), 6))
        for i, (kind, n) in enumerate(counts.items()):
            cols[i % len(cols)].metric(kind, n)
        st.caption(f"{len(artifacts)} artifacts in `{store.root}`.")
        next_steps(store, artifacts)
    else:
        st.info(f"The store at `{store.root}` is empty: run the quickstart to build the demo model.")
        quickstart(store)

    st.page_link("views/models.py", label="Models: the store, lineage, chat", icon=":material/inventory_2:")
    st.page_link("views/jobs.py", label="Jobs: submit recipes, follow progress", icon=":material/play_circle:")


if __name__ == "__main__":
    main()
