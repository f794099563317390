"""The Merge station's parts; ``llmlab.merge`` (the config and ``merge``) is the entry point.

- ``methods``: every mergekit method (from mergekit's registry), ``unload``, peft's combinations;
- ``inputs``: merge inputs resolved (adapters with their base), per-model settings;
- ``checks``: the compatibility report and memory estimate, before any weight is read;
- ``mergekit_config``: llmlab config -> mergekit dict, a user's mergekit YAML, running mergekit;
- ``adapters``: peft's weighted adapter combination;
- ``peak``: peak resident memory of a merge (the kernel's high-water mark);
- ``scores``: the merge and its parents scored on the same held-out text and questions.
"""
