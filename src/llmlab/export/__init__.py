"""The Export station: a model as a deployable, hash-verified bundle (``llmlab export``).

```python
from llmlab.export import ExportConfig, export, verify_bundle
bundle = export(ExportConfig(model="demo-q4_k_m"), store=store)   # models/demo-q4_k_m-bundle/ + .tar.gz
verify_bundle(bundle.path)                                          # [] when every sha256 matches
```

Modules: ``bundle`` (the step), ``adapters`` (several LoRA adapters on one base, chosen per request),
``agent`` (an index and agent inside a bundle), ``ollama`` (Jinja -> Go chat template, checked),
``lockfile`` (serving-only requirements), ``registry`` (bundles registered in MLflow), ``parity`` (the
exported artifact, and each adapter, answers as the original did). Reading and verifying a
bundle is the server's side, ``llmlab.serve.bundle``.
"""

from __future__ import annotations

from llmlab.export.bundle import ExportConfig, export, plan, tarball
from llmlab.serve.bundle import BUNDLE_SPEC, open_bundle, verify_bundle

__all__ = ["BUNDLE_SPEC", "ExportConfig", "export", "open_bundle", "plan", "tarball",
           "verify_bundle"]
