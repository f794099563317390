"""A merge's family, read from manifests: which artifacts the Merge station wrote, a merge against its
parents (the scores ``llmlab.merge.scores.evaluate`` stored in the merge's ``metrics.json``), how much
of each specialist's skill it kept, and which adapter parents were tuned without an anchor.

```python
from llmlab.merge.lineage import comparison_rows, merged_artifacts, suggests_anchor
for art in merged_artifacts(store):
    rows = comparison_rows(art)          # the merge first, then each parent with its role and weight
    if suggests_anchor(art, store): ...  # a specialist lost its skill, and it was tuned without an anchor
```

Lineage is read, never guessed: parents come from the merge's manifest, how a parent was tuned
from the parent's own recorded step. Pure reads: nothing is scored or loaded here.
"""

from __future__ import annotations

from typing import Any

from llmlab.store import Artifact, Store

# The demo world's relation groups, each scored separately (accuracy_people...).
GROUPS = ("people", "places", "objects")
# Scores of the merge and of each parent, in the comparison table's order.
SCORES = ("ppl", "accuracy", *(f"accuracy_{g}" for g in GROUPS))
# Below this share of a specialist's own-skill accuracy, a merge is said to have lost that skill.
LOST_SKILL = 0.7


def is_merge(art: Artifact) -> bool:
    """Whether the Merge station wrote ``art``: a ``merged`` model, or an adapter it combined."""
    return art.kind == "merged" or (art.kind == "adapter" and "method" in art.manifest.info)


def merged_artifacts(store: Store) -> list[Artifact]:
    """Artifacts the Merge station wrote (newest first)."""
    return [a for a in store.list() if is_merge(a)]


def comparison_rows(art: Artifact) -> list[dict[str, Any]]:
    """The merge and each parent (``model``, ``role``, ``weight`` and the ``SCORES``), merge first; a
    parent's scores are those the merge's evaluation measured (None where it measured none)."""
    m = art.metrics
    rows = [{"model": art.name, "role": "merge", "weight": None, **{k: m.get(k) for k in SCORES}}]
    scored = m.get("parents") or {}
    for p in art.manifest.parents:
        s = scored.get(p.name, {})
        rows.append({"model": p.name, "role": p.role, "weight": p.weight, **{k: s.get(k) for k in SCORES}})
    return rows


def accuracy_by_skill(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-group accuracies of ``comparison_rows`` as long rows (model, skill, accuracy), for a chart."""
    return [{"model": r["model"], "skill": g, "accuracy": r[f"accuracy_{g}"]}
            for r in rows for g in GROUPS if r.get(f"accuracy_{g}") is not None]


def retention(art: Artifact) -> dict[str, float | None]:
    """``{"<specialist>:<skill>": merge accuracy / specialist accuracy on that skill}`` as recorded."""
    return dict(art.metrics.get("retention") or {})


def parents_in_store(art: Artifact, store: Store) -> list[str]:
    """The merge's parents that the store still holds, in manifest order."""
    return [p.name for p in art.manifest.parents if store.exists(p.name)]


def unanchored(art: Artifact, store: Store) -> list[str]:
    """The adapter parents of a merge that were tuned without an anchor."""
    out = []
    for p in art.manifest.parents:
        parent = store.get(p.name) if store.exists(p.name) else None
        step = parent.manifest.step if parent is not None and parent.kind == "adapter" else None
        if step is not None and step.kind == "tune" and not step.config.get("anchor"):
            out.append(p.name)
    return out


def suggests_anchor(art: Artifact, store: Store, *, threshold: float = LOST_SKILL) -> bool:
    """Whether a specialist kept less than ``threshold`` of its skill in this merge while one of its
    adapter parents was tuned without an anchor (tuning with ``anchor:`` is the fix)."""
    kept = [v for v in retention(art).values() if v is not None]
    return bool(kept) and min(kept) < threshold and bool(unanchored(art, store))
