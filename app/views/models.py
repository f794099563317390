"""Models: the store as a table; one artifact's manifest, metrics, lineage and integrity; a chat.

The summary rows, the model the picker opens on and the lineage graph come from ``llmlab.catalog``
(read from manifests); every score comes from ``llmlab.evaluate.choices.scores``, the numbers the
Leaderboard shows. The page only lays out widgets and calls them. Its body is ``main``, run when
Streamlit executes this file (as ``__main__``).

The runtime (and with it torch) is imported only inside the chat panel, so opening the page
stays fast. A loaded model is cached per store, artifact name and content hash: a rebuilt
artifact gets a fresh model, and reruns of the page reuse the loaded one.
"""

from __future__ import annotations

import streamlit as st

from llmlab.catalog import default_model_index, lineage_dot, table_row
from llmlab.evaluate.choices import MISSING, cached_board, number_formats, scores_of, shown, winner_of
from llmlab.store import RUNNABLE_KINDS, Artifact, Store
from widgets import chat_panel, follow_link

PICKED = "models:selected"


def metrics_tab(art: Artifact, board: dict[str, object]) -> None:
    """The artifact's leaderboard scores (as on every page), then what its steps recorded."""
    notes = ("size (MB)", "reference", "speed measured")
    numbers = {k: v for k, v in board.items() if k not in notes}
    if any(v is not None for v in numbers.values()):
        cols = st.columns(len(numbers))
        for col, (label, value) in zip(cols, numbers.items()):
            col.metric(label, shown(label, value))
        st.caption("As on the Leaderboard: held-out world questions (up to 100, greedy), perplexity on held-out "
                   f"text, KL divergence and top-1 against {shown('reference', board.get('reference'))}; "
                   + (f"speed measured {board['speed measured']}." if board.get("speed measured")
                      else "no speed recorded."))
    else:
        st.caption(f"Not on the Leaderboard yet: score {art.name} on the Leaderboard page (or `llmlab eval run`).")
    if art.metrics:
        with st.expander("Recorded by the steps that made or scored it (metrics.json)"):
            st.caption("Each step measures on its own question set, so its figures can differ from the "
                       "Leaderboard's.")
            st.json(art.metrics, expanded=1)


def details(store: Store, art: Artifact, board: dict[str, object]) -> None:
    manifest_tab, scores_tab, lineage_tab, verify_tab = st.tabs(["Manifest", "Metrics", "Lineage", "Verify"])
    with manifest_tab:
        st.json(art.manifest.model_dump(mode="json"), expanded=1)
    with scores_tab:
        metrics_tab(art, board)
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

    names = [a.name for a in artifacts]
    read = cached_board(store, names)
    board = scores_of(read)
    rows = [{**table_row(a), **board.get(a.name, {})} for a in artifacts]
    st.dataframe(rows, hide_index=True, placeholder=MISSING, column_config={
        "name": st.column_config.Column(pinned=True),
        **{c: st.column_config.NumberColumn(format=f) for c, f in number_formats(list(rows[0])).items()}})
    # a link's ?artifact= (the Jobs card's outputs) wins once; then a value set elsewhere (Home's "Chat
    # with it"); otherwise open on the winner or something that chats
    follow_link(names, "artifact", PICKED)
    index = 0 if PICKED in st.session_state else default_model_index(
        store, names, "models", winner=winner_of(read))
    name = st.selectbox("Artifact", names, index=index, key=PICKED)
    art = store.get(name)
    details(store, art, board.get(name, {}))
    if art.kind in RUNNABLE_KINDS:
        st.subheader(f"Chat with {art.name}")
        chat_panel(store, art)
    else:
        st.caption(f"Artifacts of kind '{art.kind}' cannot be chatted with here; the chat takes "
                   f"{', '.join(RUNNABLE_KINDS)}.")


if __name__ == "__main__":
    main()
