"""The Export station: a model as a deployable, hash-verified bundle (``llmlab export``).

```python
from llmlab.export import ExportConfig, export, verify_bundle
bundle = export(ExportConfig(model="demo-q4_k_m"), store=store)   # models/demo-q4_k_m-bundle/ + .tar.gz
verify_bundle(bundle.path)                                          # [] when every sha256 matches
```

Modules: ``bundle`` (the step, verify/open), ``ollama`` (Jinja -> Go chat template, checked),
``lockfile`` (serving-only requirements). The parity check is ``llmlab.parity``; the server,
``llmlab.serve``.
"""

from __future__ import annotations

from llmlab.export.bundle import (BUNDLE_SPEC, GGUF_KINDS, HF_KINDS, ExportConfig, export, open_bundle, plan, tarball,
                                   verify_bundle)

__all__ = ["BUNDLE_SPEC", "GGUF_KINDS", "HF_KINDS", "ExportConfig", "export", "open_bundle", "plan", "tarball",
           "verify_bundle"]
