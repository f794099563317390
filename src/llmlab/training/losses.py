"""Loss hooks for ``train_loop``: the ``LossFn`` signature, ``sft_loss`` (next-token cross-entropy on the
labelled tokens, the default) and ``ResumableLoss``, the base of a hook whose state follows the steps (such
as the Tune station's anchored loss, which walks through its own batches): on resume the loop tells it how
many micro-batches were already trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A loss hook: (model, input_ids, attention_mask, labels, n_items) -> the summed per-token loss
# of this micro-batch divided by n_items, the count of loss tokens in the whole optimizer step.
LossFn = Callable[[Any, Any, Any, Any, int], Any]


def label_positions(labels: Any) -> Any:
    """The sequence positions whose next token is labelled in some row of the batch."""
    return (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)


def summed_nll(model: Any, ids: Any, mask: Any, labels: Any) -> tuple[Any, int]:
    """The summed next-token cross-entropy of the labelled tokens, and their count.

    Only the positions that predict a labelled token go through the output layer
    (``logits_to_keep``): with a large vocabulary (SmolLM2: 49,152 words) the logits of every
    prompt token would take most of the memory and a fifth of the compute, for tokens that carry
    no loss. Models whose forward has no ``logits_to_keep`` compute them all."""
    import torch.nn.functional as F

    keep = label_positions(labels)
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:  # no logits_to_keep: every position's logits
        logits = model(input_ids=ids, attention_mask=mask).logits[:, keep]
    target = labels[:, keep + 1]
    total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
                            reduction="sum")
    return total, int((target != -100).sum())


def sft_loss(model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
    """Next-token cross-entropy on the labelled tokens (the default loss of ``train_loop``), summed and
    divided by ``n_items``."""
    return summed_nll(model, ids, mask, labels)[0] / n_items


class ResumableLoss:
    """A loss hook with state that depends on how far training has gone; ``train_loop`` calls
    ``resume(micro_batches)`` when it continues from a checkpoint."""

    def __call__(self, model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
        raise NotImplementedError

    def resume(self, micro_batches: int) -> None:
        """Continue as if ``micro_batches`` micro-batches had already been seen."""
        raise NotImplementedError
