"""The merge methods: every method mergekit registers (read from its registry), ``unload`` and peft's
adapter combinations (``peft_<type>``), each with what it takes (base policy, model counts, parameters).

```python
from llmlab.merge.methods import methods
methods()["ties"].per_model       # ('weight', 'density')
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmlab.errors import ConfigError

# peft's LoraModel.add_weighted_adapter combination types (offered as method "peft_<type>").
PEFT_COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                     "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
PEFT_NEED_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                     "magnitude_prune", "magnitude_prune_svd")


@dataclass(frozen=True)
class MethodInfo:
    """What a method takes: from mergekit's registry, or llmlab's adapter methods."""

    name: str
    source: Literal["mergekit", "peft", "llmlab"]
    pretty: str
    base: str  # "required", "optional", "ignored"
    min_models: int = 1
    max_models: int | None = None
    per_model: tuple[str, ...] = ()  # parameters given per input model
    shared: dict[str, Any] = field(default_factory=dict)  # method-wide parameters -> default (None: required)


def mergekit_methods() -> dict[str, MethodInfo]:
    """Every merge method mergekit registers, read from its registry (not a copy)."""
    from mergekit.merge_methods import registered_methods
    from mergekit.merge_methods.base import MISSING, ParameterScope

    out = {}
    for m in registered_methods():
        s, c = m.spec, m.spec.contract
        per = tuple(p.name for p in s.parameters if p.scope != ParameterScope.SHARED)
        shared = {p.name: None if p.default is MISSING else p.default
                  for p in s.parameters if p.scope == ParameterScope.SHARED}
        lo = c.min_non_base if c.min_non_base is not None else max(1, c.min_inputs - (c.base.value == "required"))
        hi = c.max_non_base if c.max_non_base is not None else (
            None if c.max_inputs is None else c.max_inputs - (c.base.value == "required"))
        out[s.name] = MethodInfo(s.name, "mergekit", s.pretty_name or s.name, c.base.value, lo, hi, per, shared)
    return out


def methods() -> dict[str, MethodInfo]:
    """Every method the station runs: mergekit's, ``unload`` and the ``peft_*`` combinations."""
    out = mergekit_methods()
    out["unload"] = MethodInfo("unload", "llmlab", "Merge an adapter into its base", "optional", 1, 1)
    for t in PEFT_COMBINATIONS:
        out[f"peft_{t}"] = MethodInfo(f"peft_{t}", "peft", f"peft {t} adapter combination", "optional", 1, None,
                                      ("weight", "density") if t in PEFT_NEED_DENSITY else ("weight",))
    return out


def get_method(name: str) -> MethodInfo:
    known = methods()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, list(known), n=1)
        raise ConfigError(f"Unknown merge method '{name}'.", (f"Did you mean '{close[0]}'? " if close else "") +
                          f"Methods: {', '.join(known)}.")
    return known[name]
