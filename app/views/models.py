"""Models: the store as a table; one artifact's manifest, metrics, lineage and integrity; a chat.

The summary rows and the lineage graph come from ``llmlab.catalog`` (read from manifests and
metrics); the page only lays out widgets and calls it. Its body is ``main``, run when Streamlit
executes this file (as ``__main__``).

The runtime (and with it torch) is imported only inside the chat panel, so opening the page
stays fast. A loaded model is cached per store, artifact name and content hash: a rebuilt
artifact gets a fresh model, and reruns of the page reuse the loaded one.
"""

from __future__ import annotations

import streamlit as st

from llmlab.catalog import lineage_dot, table_row
from llmlab.store import RUNNABLE_KINDS, Artifact, Store
from widgets import chat_panel


def details(store: Store, art: Artifact) -> None:
    manifest_tab, metrics_tab, lineage_tab, verify_tab = st.tabs(["Manifest", "Metrics", "Lineage", "Verify"])
    with manifest_tab:
        st.json(art.manifest.model_dump(mode="json"), expanded=1)
    with metrics_tab:
        if art.metrics:
            st.json(art.metrics)
        else:
            st.caption("No metrics yet: score it with a `score` step (`llmlab score`).")
    with lineage_tab:
        st.graphviz_chart(lineage_dot(store.lineage(art.name)))
    with verify_tab:
        st.caption("Recompute every file's sha256 and compare with the manifest.")
        if st.button("Verify", key=f"verify:{art.name}"):
            problems = store.verify(art.name)
            if problems:
                st.error(f"{art.name} does not match its manifest:\n\n" + "\n".join(f"- {p}" for p in problems))
            else:
                st.success(f"{art.name} is intact: {len(art.manifest.files)} files match their hashes.")


def main() -> None:
    store = Store()
    st.title("Models")
    for folder, reason in store.problems().items():
        st.warning(f"`{folder}` is not readable: {reason}")
    artifacts = store.list()
    if not artifacts:
        st.info("The store is empty. Run the quickstart (`llmlab run recipes/quickstart.yaml`) or submit a "
                "recipe on the Jobs page.")
        return

    st.dataframe([table_row(a) for a in artifacts], hide_index=True)
    names = [a.name for a in artifacts]
    name = st.selectbox("Artifact", names, key="models:selected")
    art = store.get(name)
    details(store, art)
    if art.kind in RUNNABLE_KINDS:
        st.subheader(f"Chat with {art.name}")
        chat_panel(store, art)
    else:
        st.caption(f"Artifacts of kind '{art.kind}' cannot be chatted with here; the chat takes "
                   f"{', '.join(RUNNABLE_KINDS)}.")


if __name__ == "__main__":
    main()
