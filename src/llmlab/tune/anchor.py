"""The anchored loss of the Tune station (``anchor: DATA``): ``AnchoredLoss`` adds to the training loss a
KL term that keeps the tuned model's predictions on the anchor's answer tokens close to the base model's
(the same model with its adapter switched off), so an adapter changes less of what it was not tuned for.
It plugs into ``llmlab.training``'s loop as a resumable loss hook. torch is imported inside functions.
"""

from __future__ import annotations

import random
from typing import Any

from llmlab.training.batching import Example, collate
from llmlab.training.losses import ResumableLoss, sft_loss


class AnchoredLoss(ResumableLoss):
    """The training loss plus ``weight`` x KL(base || tuned) on the answer tokens of a batch of anchor
    examples (the next one in a fixed shuffled order at each call). The base is the same model with
    its adapter switched off, so it costs one more forward pass and no second copy of the weights."""

    def __init__(self, anchor: list[Example], weight: float, batch_size: int, grad_accum: int, pad_id: int,
                 device: str, seed: int):
        self.anchor, self.weight, self.batch_size, self.grad_accum = anchor, weight, batch_size, grad_accum
        self.pad_id, self.device = pad_id, device
        self.order = list(range(len(anchor)))
        random.Random(f"anchor-{seed}").shuffle(self.order)
        self.calls = 0
        self.kl: list[float] = []  # per call, for the artifact's info

    def __call__(self, model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
        import torch
        import torch.nn.functional as F

        first = self.calls * self.batch_size
        self.calls += 1
        batch = [self.anchor[self.order[(first + j) % len(self.order)]]
                 for j in range(min(self.batch_size, len(self.order)))]
        a_ids, a_mask, a_labels, _ = collate(batch, self.pad_id, self.device)
        keep = a_labels[:, 1:] != -100
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=a_ids, attention_mask=a_mask).logits[:, :-1][keep].float()
        tuned = model(input_ids=a_ids, attention_mask=a_mask).logits[:, :-1][keep].float()
        kl = F.kl_div(F.log_softmax(tuned, -1), F.log_softmax(base, -1), log_target=True,
                      reduction="sum") / keep.sum()
        self.kl.append(float(kl.detach()))
        return sft_loss(model, ids, mask, labels, n_items) + self.weight * kl / self.grad_accum

    def resume(self, micro_batches: int) -> None:
        self.calls = micro_batches  # the anchor batches follow on where they stopped

    def summary(self) -> dict[str, Any]:
        tail = self.kl[-max(1, len(self.kl) // 10):]  # the last tenth of training (of this run, if resumed)
        return {"records": len(self.anchor), "weight": self.weight,
                "kl_end": round(sum(tail) / len(tail), 5) if tail else None}
