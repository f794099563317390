"""The training layer: llmlab's own training loop and its parts, below the stations that train
(``llmlab.tune``: the Tune and Distill stations) and independent of any of them.

- ``loop``: ``LoopOptions``, ``train_loop`` (AdamW, warm-up and decay, validation loss, resume, DDP),
  ``lr_at``, ``val_loss``, ``trainable_params``;
- ``batching``: ``Example``, ``Prepared``, ``split_indices``, ``plan_batches`` (length-grouped), ``collate``;
- ``losses``: the ``LossFn`` hook type, ``sft_loss`` and ``ResumableLoss``;
- ``checkpoints``: ``Checkpoints`` (resume files under ``<store>/.cache/tune/<name>/``) and ``CHECKPOINT``;
- ``distributed``: torchrun processes: ``Dist``, ``distributed``, ``all_sum``, ``wait_for_main``.

torch is imported inside functions, so importing any of these modules stays cheap.
"""
