"""The Tune station: LoRA, DoRA, QLoRA, full tuning, DPO, ORPO, anchored adapters and distillation.

```python
from llmlab.tune import TuneConfig, tune
tune(TuneConfig(model="demo", name="demo-lora", steps=200), store=store)
```

- ``step``: the config, the data and ``tune`` (the recipe step);
- ``distill``: a teacher distilled into a smaller student (the recipe step ``distill``).
"""

from llmlab.tune.distill import DistillConfig, distill
from llmlab.tune.step import TuneConfig, preview, select_backend, tune

__all__ = ["DistillConfig", "TuneConfig", "distill", "preview", "select_backend", "tune"]
