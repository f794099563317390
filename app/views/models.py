"""Models: the store as a table; one artifact's manifest, metrics, lineage and integrity; a chat.

The runtime (and with it torch) is imported only inside the chat panel, so opening the page
stays fast. A loaded model is cached per store, artifact name and content hash: a rebuilt
artifact gets a fresh model, and reruns of the page reuse the loaded one.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from llmlab.store import RUNNABLE_KINDS, Artifact, Store
from widgets import chat_panel

KEY_METRICS = ("ppl", "accuracy", "gen_tok_s")


def table_row(a: Artifact) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": a.name,
        "kind": a.kind,
        "parents": ", ".join(p.name for p in a.manifest.parents),
        "size (MB)": round(a.size_bytes / 1e6, 2),
        "created": a.manifest.created,
    }
    for key in KEY_METRICS:  # only metrics an artifact has, so unscored stores get no empty columns
        value = a.metrics.get(key)
        parts = value.items() if isinstance(value, dict) else [(None, value)]  # e.g. accuracy by split
        for sub, v in parts:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"{key}.{sub}" if sub else key] = v
    return row


def dot_id(text: str) -> str:
    """A DOT quoted string: JSON's escaping is DOT's, with non-ASCII kept (DOT has no \\u escapes)."""
    return json.dumps(text, ensure_ascii=False)


def lineage_dot(tree: dict[str, Any]) -> str:
    """Graphviz DOT for ``Store.lineage``: parents point at children, roles label the edges."""
    lines = ["digraph lineage {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef2ff", fontname="Helvetica"];']
    drawn: set[str] = set()

    def walk(node: dict[str, Any], root: bool = False) -> None:
        nid = dot_id(node["name"])
        if node["name"] not in drawn:
            drawn.add(node["name"])
            if node.get("missing"):
                label = f'{node["name"]}\n(missing)'
                attrs = f"label={dot_id(label)}, style=dashed"
            else:
                label = f'{node["name"]}\n{node.get("kind", "")} · {node.get("content_hash", "")}'
                attrs = f"label={dot_id(label)}" + (', fillcolor="#c7d2fe", penwidth=2' if root else "")
            lines.append(f"  {nid} [{attrs}];")
        for parent in node.get("parents", []):
            walk(parent)
            edge = [f"label={dot_id(parent['role'])}"] if parent.get("role") else []
            if parent.get("changed_since"):
                edge.append('color=red, fontcolor=red, xlabel="rebuilt since"')
            lines.append(f"  {dot_id(parent['name'])} -> {nid} [{', '.join(edge)}];")

    walk(tree, root=True)
    return "\n".join([*lines, "}"])


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


store = Store()
st.title("Models")
for folder, reason in store.problems().items():
    st.warning(f"`{folder}` is not readable: {reason}")
artifacts = store.list()
if not artifacts:
    st.info("The store is empty. Run the quickstart (`llmlab run recipes/quickstart.yaml`) or submit a recipe "
            "on the Jobs page.")
    st.stop()

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
