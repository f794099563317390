"""A merge scored against its parents: the same held-out texts and questions (per relation group of the
demo world, by default) for the merge and every parent, and each specialist's retention on its own skill.
"""

from __future__ import annotations

from typing import Any

from llmlab.data import SPLITS
from llmlab.events import Reporter, emit
from llmlab.scoring import EvalOptions
from llmlab.store import Artifact, Store


def skill_of(artifact: Artifact) -> list[str]:
    """The relation groups an artifact was tuned on (``data: world:tune:people``), if any."""
    data = str((artifact.manifest.step.config if artifact.manifest.step else {}).get("data") or "")
    parts = data.split(":")
    return [g for g in parts[2].split(",") if g] if len(parts) == 3 and parts[0] == "world" else []


def evaluate(name: str, *, store: Store | None = None, options: EvalOptions | None = None,
             progress: Reporter | None = None) -> dict[str, Any]:
    """Score a merge and each parent on the same held-out texts and questions (``options``; default: the
    demo world's text and held-out questions, overall and per relation group); record it all in the
    merge's metrics.json, with each specialist's retention (merge accuracy / specialist accuracy on
    the specialist's own skill)."""
    from llmlab.world import RELATION_GROUP, find_world

    store = store or Store()
    options = options or EvalOptions()
    art = store.get(name)
    texts, questions = options.eval_inputs(store=store, artifact=art, progress=progress)
    if not texts and not questions:
        emit(progress, "log", message=f"{name}: no held-out texts or questions, so the merge is not scored")
        return {}
    world = find_world(store, art)
    split = (options.qa or "").partition(":")[0]
    if world is not None and split in SPLITS:  # the world's questions, per relation group
        qa = {g: world.split(f"{split}:{g}")[:options.qa_limit] for g in sorted(set(RELATION_GROUP.values()))}
    else:
        qa = {"all": questions or []}
    rows = {}
    for who in [name] + [p.name for p in art.manifest.parents if store.exists(p.name)]:
        emit(progress, "log", message=f"scoring {who}")
        rows[who] = score_one(store.get(who), store, texts or [], qa, progress)
    merged = rows.pop(name)
    retention = {}
    for p in art.manifest.parents:
        for g in skill_of(store.get(p.name)) if p.name in rows else []:
            theirs = rows[p.name].get(f"accuracy_{g}") or 0.0
            retention[f"{p.name}:{g}"] = round(merged[f"accuracy_{g}"] / theirs, 4) if theirs else None
    metrics = {**merged, "parents": rows, "retention": retention}
    store.record_metrics(name, metrics)
    return metrics


def score_one(art: Artifact, store: Store, texts: list[str], qa: dict[str, list[dict[str, Any]]],
               progress: Reporter | None) -> dict[str, Any]:
    from llmlab.runtime import load, resolve
    from llmlab.scoring import accuracy, score

    path, _, _ = resolve(art, store=store)
    with load(path) as m:  # by path: the scores go to the merge's metrics, not the parent's own
        out = score(m, data=texts, data_label="world", speed_test=False, progress=progress)
        out = {k: out[k] for k in ("ppl", "n_params") if k in out}
        right = n = 0
        for g, records in qa.items():
            if records:
                r = accuracy(m, records, progress=progress)
                out[f"accuracy_{g}"] = round(r["accuracy"], 4)
                right += round(r["accuracy"] * r["n"])
                n += r["n"]
        out["accuracy"] = round(right / n, 4) if n else None
        out["accuracy_n"] = n
    return out
