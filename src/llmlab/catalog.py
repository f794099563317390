"""The store as the app's pages show it: artifacts counted by kind, one summary row per artifact (its
parents, size and creation time), the model a page's picker opens on, and an artifact's lineage
(``Store.lineage``) as a Graphviz graph, read from manifests.

```python
from llmlab.catalog import default_model_index, lineage_dot, table_row
rows = [table_row(a) for a in store.list()]
names = [a.name for a in store.list()]
names[default_model_index(store, names, "quantize")]   # a full-precision model, not a GGUF
dot = lineage_dot(store.lineage("demo-lora"))   # parents point at children; roles label the edges
```
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from llmlab.store import MODEL_KINDS, RUNNABLE_KINDS, Artifact, Store

# What a page's model picker may open on: groups of kinds that can do what the page does, most fitting
# first (within a group, the order of the picker's names).
PAGE_KINDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "models": (RUNNABLE_KINDS,),  # anything that can chat
    "tune": (("base",), ("full", "distilled"), ("merged",)),
    "quantize": (MODEL_KINDS,),  # full precision
    "merge": (("merged",),),  # a merge to compare with its parents
    "export": (RUNNABLE_KINDS,),
}


def kind_counts(artifacts: Iterable[Artifact]) -> dict[str, int]:
    """How many artifacts of each kind, kinds in alphabetical order."""
    return dict(sorted(Counter(a.kind for a in artifacts).items()))


def table_row(a: Artifact) -> dict[str, Any]:
    """An artifact's identity: name, kind, parents, size (MB) and creation time (UTC, to the minute). Its
    scores come from the leaderboard (``llmlab.evaluate.choices.scores``), so every page shows the same numbers."""
    return {"name": a.name, "kind": a.kind, "parents": ", ".join(p.name for p in a.manifest.parents),
            "size (MB)": round(a.size_bytes / 1e6, 2), "created": a.manifest.created[:16].replace("T", " ")}


def holds_adapter(store: Store, art: Artifact) -> bool:
    """Whether a merge already holds an adapter (tuning it again would stack a LoRA on the LoRA)."""
    return art.kind == "merged" and any(store.exists(p.name) and store.get(p.name).kind == "adapter"
                                        for p in art.manifest.parents)


def default_model_index(store: Store, names: list[str], page: str, winner: str | None = None) -> int:
    """The index in ``names`` a page's model picker opens on: the leaderboard's ``winner``
    (``llmlab.evaluate.choices.leaderboard_winner``) when it is among ``names`` and can do what ``page``
    does, else the first name of the most fitting kind (``PAGE_KINDS``): Models a model that can chat,
    Tune a base model (not a merge that already holds a LoRA), Quantize a full-precision one, Merge a
    merge, Export a model. 0 when nothing fits (or ``names`` is empty)."""
    if page not in PAGE_KINDS:
        raise ValueError(f"Unknown page '{page}': one of {', '.join(PAGE_KINDS)}.")
    rank = {kind: i for i, group in enumerate(PAGE_KINDS[page]) for kind in group}
    arts = {n: store.get(n) for n in names if store.exists(n)}

    def fits(name: str) -> bool:
        art = arts.get(name)
        return art is not None and art.kind in rank and not (page == "tune" and holds_adapter(store, art))

    if winner in arts and fits(winner):
        return names.index(winner)
    ranked = sorted((rank[arts[n].kind], i) for i, n in enumerate(names) if fits(n))
    return ranked[0][1] if ranked else 0


def dot_id(text: str) -> str:
    """A DOT quoted string: JSON's escaping is DOT's, with non-ASCII kept (DOT has no \\u escapes)."""
    return json.dumps(text, ensure_ascii=False)


def lineage_dot(tree: dict[str, Any]) -> str:
    """Graphviz DOT for ``Store.lineage``: parents point at children, roles label the edges, a missing
    parent is dashed and a parent rebuilt since its child was made is marked in red."""
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
