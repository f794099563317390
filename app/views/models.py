"""Models: the store as a table; one artifact's manifest, metrics, lineage and integrity; a chat.

The runtime (and with it torch) is imported only inside the chat panel, so opening the page
stays fast. A loaded model is cached per store, artifact name and content hash: a rebuilt
artifact gets a fresh model, and reruns of the page reuse the loaded one.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from llmlab import world
from llmlab.errors import LlmlabError
from llmlab.runtime import KIND_ENGINES  # no torch: engines are imported when a model loads
from llmlab.store import Artifact, Store

CHAT_KINDS = tuple(KIND_ENGINES)  # the kinds llmlab.runtime.load can run
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


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def load_model(store_root: str, name: str, content_hash: str) -> Any:
    """The runtime model for one artifact version (``content_hash`` is part of the cache key)."""
    from llmlab.runtime import load

    return load(name, store=Store(store_root))


def sampling_controls(key: str) -> Any:
    """Widgets for every ``SamplingParams`` field (library defaults and help); returns the params."""
    from llmlab.runtime import SamplingParams

    d = SamplingParams()
    helps = {n: f.description for n, f in SamplingParams.model_fields.items()}
    with st.expander("Sampling", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        temperature = c1.slider("Temperature", 0.0, 2.0, d.temperature, 0.05, key=f"{key}:t",
                                help=helps["temperature"])
        top_p = c2.slider("Top-p", 0.05, 1.0, d.top_p, 0.05, key=f"{key}:p", help=helps["top_p"])
        top_k = c3.number_input("Top-k", 0, 100_000, d.top_k, key=f"{key}:k", help=helps["top_k"])
        repetition_penalty = c4.slider("Repetition penalty", 1.0, 2.0, d.repetition_penalty, 0.05,
                                       key=f"{key}:r", help=helps["repetition_penalty"])
        c5, c6, c7 = st.columns([1, 1, 2])
        max_tokens = c5.number_input("Max new tokens", 1, 8192, d.max_tokens, key=f"{key}:n",
                                     help=helps["max_tokens"])
        seed = c6.number_input("Seed", 0, 2**31 - 1, d.seed, key=f"{key}:s", help=helps["seed"],
                               placeholder="random")
        stop = c7.text_input("Stop strings (comma separated)", ", ".join(d.stop), key=f"{key}:stop",
                             help=helps["stop"])
    return SamplingParams(
        temperature=temperature, top_p=top_p, top_k=int(top_k), repetition_penalty=repetition_penalty,
        max_tokens=int(max_tokens), seed=None if seed is None else int(seed),
        stop=[s for s in (x.strip() for x in stop.split(",")) if s],
    )


def chat_panel(store: Store, art: Artifact) -> None:
    st.subheader(f"Chat with {art.name}")
    key = f"chat:{art.name}:{art.content_hash}"
    params = sampling_controls(key)
    system = st.text_input("System prompt", world.SYSTEM_PROMPT, key=f"{key}:system")
    history: list[dict[str, str]] = st.session_state.setdefault(key, [])
    if history and st.button("Clear the conversation", key=f"{key}:clear"):
        history.clear()
    for message in history:
        st.chat_message(message["role"]).markdown(message["content"])
    prompt = st.chat_input(f"Ask {art.name} something", key=f"{key}:input")
    if not prompt:
        return
    st.chat_message("user").markdown(prompt)
    history.append({"role": "user", "content": prompt})
    messages = ([{"role": "system", "content": system}] if system else []) + history
    try:
        model = load_model(str(store.root), art.name, art.content_hash)
        with st.chat_message("assistant"):
            reply = st.write_stream(model.stream_chat(messages, params))
    except LlmlabError as e:
        history.pop()
        st.error(str(e))
        return
    history.append({"role": "assistant", "content": reply if isinstance(reply, str) else str(reply)})


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
if art.kind in CHAT_KINDS:
    chat_panel(store, art)
else:
    st.caption(f"Artifacts of kind '{art.kind}' cannot be chatted with here; the chat takes "
               f"{', '.join(CHAT_KINDS)}.")
