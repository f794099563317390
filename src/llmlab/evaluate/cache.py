"""The quality cache: one JSON file per (artifact content, suite, data, reference, versions, decoding).

Files live in ``<store>/.cache/eval/<key>.json`` and hold quality numbers only; speed and memory
are never cached. A key changes when anything that could change a quality number changes: the
artifact's content hash and its parents' (an adapter is merged onto its base), the suite hash,
the resolved texts and task records, the reference's content hash, the runtime libraries'
versions and the decoding settings. A variant that failed leaves ``<key>.failed.json`` with the
reason, which cached-only views show; a real run always tries again. The files are kept by
``llmlab.scoring.ScoreCache``, which also keeps the Quantize station's scores (``.cache/scores``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmlab.scoring import RUNTIME_LIBRARIES, RUNTIME_REVISION, ScoreCache
from llmlab.store import library_versions

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

__all__ = ["RUNTIME_LIBRARIES", "EvalCache", "cache_key"]


def cache_key(artifact: Artifact, *, suite_hash: str, data_digest: str, reference_hash: str | None,
              engine: str, decoding: dict[str, Any]) -> dict[str, Any]:
    """Everything a cached quality result depends on (its sha256 is the file name)."""
    return {"content_hash": artifact.content_hash,
            "parents": sorted(p.content_hash for p in artifact.manifest.parents),
            "suite_hash": suite_hash, "data": data_digest, "reference": reference_hash, "engine": engine,
            "versions": library_versions(RUNTIME_LIBRARIES), "runtime": RUNTIME_REVISION, "decoding": decoding}


class EvalCache(ScoreCache):
    """The leaderboard's cached quality results (``get``, ``put`` with ``scored_at``, ``failure``,
    ``put_failure``), under ``<store>/.cache/eval``."""

    def __init__(self, store: Store):
        super().__init__(store, "eval")
