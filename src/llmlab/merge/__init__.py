"""The Merge station: combine models and adapters from the store into one new model.

```python
from llmlab.merge import MergeConfig, merge, check_compatibility
merge(MergeConfig(name="demo-ties", method="ties", models=["demo-people", "demo-places"]), store=store)
```

- ``step``: the config and ``merge`` (the recipe step ``merge``);
- ``methods``: every mergekit method (from mergekit's registry), ``unload``, peft's combinations;
- ``inputs``: merge inputs resolved (adapters with their base), per-model settings;
- ``checks``: the compatibility report and memory estimate, before any weight is read;
- ``mergekit_config``: llmlab config -> mergekit dict, a user's mergekit YAML, running mergekit;
- ``adapters``: peft's weighted adapter combination;
- ``peak``: peak resident memory of a merge (the kernel's high-water mark);
- ``scores``: the merge and its parents scored on the same held-out text and questions.
"""

from llmlab.merge.step import MergeConfig, check_compatibility, merge, methods

__all__ = ["MergeConfig", "check_compatibility", "merge", "methods"]
