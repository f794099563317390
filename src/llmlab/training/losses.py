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


def sft_loss(model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
    """Next-token cross-entropy on the labelled tokens (the default loss of ``train_loop``)."""
    return model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items).loss


class ResumableLoss:
    """A loss hook with state that depends on how far training has gone; ``train_loop`` calls
    ``resume(micro_batches)`` when it continues from a checkpoint."""

    def __call__(self, model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
        raise NotImplementedError

    def resume(self, micro_batches: int) -> None:
        """Continue as if ``micro_batches`` micro-batches had already been seen."""
        raise NotImplementedError
