"""llmlab: a workbench for open LLMs.

``import llmlab`` is cheap: it imports no torch and no engine. Each station lives in its own
module and imports its heavy dependencies when called:

- ``llmlab.store``: the artifact store (manifests, lineage, atomic writes)
- ``llmlab.world``: the seeded synthetic demo world (facts, texts, questions, documents)
- ``llmlab.build``: the demo tokenizer and model, trained from scratch on CPU
- ``llmlab.runtime``: one interface to load and run any artifact (transformers, llama.cpp)
- ``llmlab.scoring``: perplexity, KL divergence, token agreement, accuracy, speed, memory
- ``llmlab.recipes``: typed YAML pipelines, ``llmlab run`` and ``llmlab export-script``
- ``llmlab.jobs``: out-of-process jobs with progress events, queue and cancel
- ``llmlab.tracking``: MLflow runs
"""

__version__ = "0.1.0"

import logging as _logging

from llmlab.noise import NOISY_LOGGERS as _NOISY, quiet_loggers as _quiet_loggers

# torchao (brought in by GPTQModel) logs "Failed to load ..." for its CUDA-only kernels on every
# CPU import of transformers, and torch warns about its enums: noise, not news, for our users.
_quiet_loggers(*_NOISY, level=_logging.ERROR)
