"""Home: what the lab is, what the store holds (``llmlab.catalog.kind_counts``), and how to start.

Its body is ``main``, run when Streamlit executes this file (as ``__main__``).
"""

from __future__ import annotations

import streamlit as st

from llmlab import recipes
from llmlab.catalog import kind_counts
from llmlab.jobs import JobQueue
from llmlab.store import Store
from widgets import session_id


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
    else:
        st.info(f"The store at `{store.root}` is empty: run the quickstart to build the demo model.")

    st.subheader("Start here")
    st.markdown(
        "1. Run the quickstart recipe: it builds the demo model from the seeded world and scores it.\n"
        "2. Open **Models** to see it, its lineage and its metrics, and chat with it.\n"
        "3. Follow long work on **Jobs**: every recipe runs there as a cancellable background process."
    )
    st.code("llmlab run recipes/quickstart.yaml", language="bash")

    folder = recipes.recipes_dir()
    quickstart = folder / "quickstart.yaml" if folder else None
    if quickstart is not None and quickstart.is_file():
        if st.button("Run the quickstart as a job", type="primary"):
            job = JobQueue(store).submit(quickstart, session=session_id())
            st.session_state["job"] = job.id  # the Jobs page opens on it
            st.switch_page("views/jobs.py")

    st.page_link("views/models.py", label="Models: the store, lineage, chat", icon=":material/inventory_2:")
    st.page_link("views/jobs.py", label="Jobs: submit recipes, follow progress", icon=":material/play_circle:")


if __name__ == "__main__":
    main()
