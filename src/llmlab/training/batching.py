"""Training examples and how they are batched: ``Example`` (token ids and labels, -100 where no loss is
taken) and ``Prepared`` (a train/validation split), the seeded split itself (``split_indices``),
length-grouped micro-batches (``plan_batches``, deterministic in the seed so a resumed run sees the same
order) and ``collate``, which pads a list of examples into tensors. torch is imported inside functions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass
class Example:
    """One tokenized training sequence; ``labels`` is -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class Prepared:
    """Tokenized examples split for training and validation, with what was cut to fit ``max_len``."""

    train: list[Example]
    val: list[Example]
    truncated: int
    dropped: int  # examples left with no answer token after truncation


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``0..n-1`` split into (train, validation): a seeded ``fraction`` is held out, and at
    least one index is left to train on."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, round(n * fraction)) if fraction > 0 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def plan_batches(n: int, lengths: list[int], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Micro-batches of example indices for ``epochs`` passes, grouped by length: each pass shuffles,
    sorts chunks of 32 batches by length and shuffles the resulting batches, so dynamic padding
    pads little while the order stays random. Deterministic in ``seed`` (resume relies on it)."""
    out: list[list[int]] = []
    chunk = batch_size * 32
    for epoch in range(epochs):
        rng = random.Random(f"{seed}-{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        batches = []
        for c in range(0, n, chunk):
            part = sorted(order[c:c + chunk], key=lambda i: lengths[i])
            batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        out += batches
    return out


def collate(examples: list[Example], pad_id: int, device: Any) -> tuple[Any, Any, Any, int]:
    """Pad ``examples`` to the longest: (input_ids, attention_mask, labels) tensors on ``device`` and the
    count of real (unpadded) tokens."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [-100] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    real = sum(len(e.input_ids) for e in examples)
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return t(ids), t(mask), t(labels), real


def loss_tokens(e: Example) -> int:
    """How many tokens of ``e`` carry loss (labels shifted by one, as the model predicts the next token)."""
    return sum(x != -100 for x in e.labels[1:])
