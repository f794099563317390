"""The Tune station: LoRA, DoRA, QLoRA, full tuning, DPO, ORPO, anchored adapters and distillation.

```python
from llmlab.tune import TuneConfig, tune
tune(TuneConfig(model="demo", name="demo-lora", steps=200), store=store)
```

- ``step``: ``tune`` (the recipe step) and the scoring of base against tuned;
- ``config``: ``TuneConfig``, the method constants and ``select_backend``;
- ``records``: the data (loading, chat formatting, masking, preference pairs) and ``preview``;
- ``model``: the model to tune (``resolve_model``, its world, ``load_model``);
- ``preference``: DPO and ORPO through trl;
- ``anchor``: ``AnchoredLoss``, the KL term of ``anchor: DATA``;
- ``distill``: a teacher distilled into a smaller student (the recipe step ``distill``).

The training loop itself is ``llmlab.training``'s.
"""

from llmlab.tune.config import TuneConfig, select_backend
from llmlab.tune.distill import DistillConfig, distill
from llmlab.tune.records import preview
from llmlab.tune.step import tune

__all__ = ["DistillConfig", "TuneConfig", "distill", "preview", "select_backend", "tune"]
