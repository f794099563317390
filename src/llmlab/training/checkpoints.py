"""Checkpoints of llmlab's training loop: ``Checkpoints`` keeps one resume file (``CHECKPOINT``: trainable
weights, optimizer state, RNG state, training log) per run under ``<store>/.cache/tune/<name>/``, written
atomically and resumed only when its fingerprint (the run's settings) matches. torch is imported inside
methods.
"""

from __future__ import annotations

import shutil
from typing import Any

from llmlab.store import Store

CHECKPOINT = "checkpoint.pt"


class Checkpoints:
    """llmlab's own resume files under ``<store>/.cache/tune/<name>/`` (trusted: written here)."""

    def __init__(self, store: Store, name: str, fingerprint: str):
        self.dir = store.root / ".cache" / "tune" / name
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        import torch

        path = self.dir / CHECKPOINT
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state if state.get("fingerprint") == self.fingerprint else None

    def save(self, state: dict[str, Any]) -> None:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{CHECKPOINT}.tmp"
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        tmp.replace(self.dir / CHECKPOINT)  # atomic: a kill mid-save keeps the previous checkpoint

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
