"""The store as the app's Home and Models pages show it: artifacts counted by kind, one summary row per
artifact (its parents, size and headline metrics), and an artifact's lineage (``Store.lineage``) as a
Graphviz graph, read from manifests.

```python
from llmlab.catalog import lineage_dot, table_row
rows = [table_row(a) for a in store.list()]
dot = lineage_dot(store.lineage("demo-lora"))   # parents point at children; roles label the edges
```
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from llmlab.store import Artifact

# Metrics shown in an artifact's summary row (split-wise ones as accuracy.heldout...).
KEY_METRICS = ("ppl", "accuracy", "gen_tok_s")


def kind_counts(artifacts: Iterable[Artifact]) -> dict[str, int]:
    """How many artifacts of each kind, kinds in alphabetical order."""
    return dict(sorted(Counter(a.kind for a in artifacts).items()))


def table_row(a: Artifact) -> dict[str, Any]:
    """An artifact's summary: name, kind, parents, size (MB), creation time and the ``KEY_METRICS``
    it has (only those, so unscored stores get no empty columns)."""
    row: dict[str, Any] = {
        "name": a.name,
        "kind": a.kind,
        "parents": ", ".join(p.name for p in a.manifest.parents),
        "size (MB)": round(a.size_bytes / 1e6, 2),
        "created": a.manifest.created,
    }
    for key in KEY_METRICS:
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
