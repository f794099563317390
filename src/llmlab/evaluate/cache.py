"""The quality cache: one JSON file per (artifact content, suite, data, reference, versions, decoding).

Files live in ``<store>/.cache/eval/<key>.json`` and hold quality numbers only; speed and memory
are never cached. A key changes when anything that could change a quality number changes: the
artifact's content hash and its parents' (an adapter is merged onto its base), the suite hash,
the resolved texts and task records, the reference's content hash, the runtime libraries'
versions and the decoding settings. A variant that failed leaves ``<key>.failed.json`` with the
reason, which cached-only views show; a real run always tries again.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.store import library_versions, write_json

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

RUNTIME_LIBRARIES = ("llmlab", "torch", "transformers", "tokenizers", "peft", "llama_cpp_python", "gptqmodel",
                     "optimum")


def cache_key(artifact: Artifact, *, suite_hash: str, data_digest: str, reference_hash: str | None,
              engine: str, decoding: dict[str, Any]) -> dict[str, Any]:
    """Everything a cached quality result depends on (its sha256 is the file name)."""
    return {"content_hash": artifact.content_hash,
            "parents": sorted(p.content_hash for p in artifact.manifest.parents),
            "suite_hash": suite_hash, "data": data_digest, "reference": reference_hash, "engine": engine,
            "versions": library_versions(RUNTIME_LIBRARIES), "decoding": decoding}


class EvalCache:
    """Read and write cached quality results under a store."""

    def __init__(self, store: Store):
        self.root: Path = store.root / ".cache" / "eval"

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{digest}.json"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry.get("quality") if entry.get("key") == key else None

    def failure(self, key: dict[str, Any]) -> str | None:
        """Why the last try with this key failed (shown by cached-only views; a real run tries again)."""
        try:
            entry = json.loads(self._path(key).with_suffix(".failed.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry.get("error") if entry.get("key") == key else None

    def put_failure(self, key: dict[str, Any], error: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self._path(key).with_suffix(".failed.json"), {"key": key, "error": error})

    def put(self, key: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
        """Store ``quality`` with the time it was measured (``scored_at``), which the leaderboard shows."""
        self.root.mkdir(parents=True, exist_ok=True)
        quality = {**quality, "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(self._path(key), {"key": key, "quality": quality})
        return quality
