"""Checks before a merge: architectures, sizes, vocabularies, tokenizers and chat templates compared from
config and tokenizer files (no weights loaded), and the memory a merge needs.

```python
from llmlab.merge.checks import check_compatibility
report = check_compatibility(["demo-people", "demo-places"], store=store)
report.ok, report.problems, report.tokenizer_options
```
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError
from llmlab.merge.inputs import Input, resolve_input
from llmlab.store import Store


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def model_facts(inp: Input) -> dict[str, Any]:
    """Architecture, sizes, vocabulary, tokenizer and chat-template hashes, parameter bytes: read from
    config.json, tokenizer files and safetensors headers (no weights loaded)."""
    from llmlab.formats.hf import check_hf_folder

    cfg = check_hf_folder(inp.path)
    tok_dir = inp.artifact.path if inp.is_adapter else inp.path
    template = _sha(tok_dir / "chat_template.jinja")
    if template is None and (tok_dir / "tokenizer_config.json").is_file():
        t = json.loads((tok_dir / "tokenizer_config.json").read_text()).get("chat_template")
        template = hashlib.sha256(str(t).encode()).hexdigest()[:16] if t else None
    nbytes = sum(p.stat().st_size for p in inp.path.glob("*.safetensors"))
    return {"model": inp.name, "kind": inp.artifact.kind if inp.artifact else "folder",
            "architecture": ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")]),
            "hidden_size": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
            "vocab_size": cfg.get("vocab_size"), "tokenizer": _sha(tok_dir / "tokenizer.json"),
            "chat_template": template, "bytes": nbytes, "adapter_base": inp.adapter_base}


@dataclass
class Compatibility:
    """What ``check_compatibility`` found: one row per model, problems (refusals) and warnings."""

    rows: list[dict[str, Any]]
    problems: list[str]
    warnings: list[str]
    needs_tokenizer_choice: bool
    tokenizer_options: list[str]
    memory_bytes: int

    @property
    def ok(self) -> bool:
        return not self.problems


def check_compatibility(models: list[str] | list[Input], base: str | None = None, *, store: Store | None = None,
                        tokenizer_source: str | None = None, same_layers: bool = True) -> Compatibility:
    """Compare the inputs (and base) before any weight is read; estimate the memory a merge needs.
    ``same_layers=False`` allows different layer counts (slices of a mergekit YAML pick layer ranges)."""
    store = store or Store()
    inputs = [m if isinstance(m, Input) else resolve_input(m, store) for m in models]
    if base is not None:
        inputs = [resolve_input(base, store), *inputs]
    rows = [model_facts(i) for i in inputs]
    problems, warnings = [], []
    first = rows[0]
    for key in ("architecture", "hidden_size", "layers")[: 3 if same_layers else 2]:
        seen = {str(r[key]) for r in rows}
        if len(seen) > 1:
            problems.append(f"{key.replace('_', ' ')} differs: " +
                            ", ".join(f"{r['model']}={r[key]}" for r in rows))
    vocab_differs = len({(r["vocab_size"], r["tokenizer"]) for r in rows}) > 1
    if len({r["chat_template"] for r in rows}) > 1:
        warnings.append(f"chat templates differ: the merge keeps the one of {first['model']} (or the tokenizer "
                        "source's)")
    options = ["base", "union"] + [f"model:{r['model']}" for r in rows]
    if vocab_differs and tokenizer_source is None and not problems:
        problems.append("vocabularies or tokenizers differ: " +
                        ", ".join(f"{r['model']}={r['vocab_size']}/{r['tokenizer']}" for r in rows) +
                        "; choose tokenizer_source (" + ", ".join(options) + ")")
    largest = max(r["bytes"] for r in rows)
    # mergekit streams tensors: about one output model, a few tensors per input in flight, and the runtime.
    memory = int(largest * 1.5 + 0.1 * largest * len(rows)) + 400 * 2**20
    return Compatibility(rows, problems, warnings, vocab_differs, options if vocab_differs else [], memory)


def refuse(compat: Compatibility) -> None:
    if not compat.ok:
        raise ConfigError("These models cannot be merged: " + "; ".join(compat.problems) + ".",
                          "Merge models of one architecture and size (e.g. fine-tunes of one base).")
    from llmlab.runtime import check_memory

    check_memory(compat.memory_bytes, "this merge")
