"""The Merge station: combine models and adapters from the store into one new model.

```python
from llmlab.merge import MergeConfig, merge, check_compatibility
check_compatibility(["demo-people", "demo-places"], store=store).ok    # before any weight is read
merge(MergeConfig(name="demo-ties", method="ties", models=["demo-people", "demo-places"],
                  densities=[0.5, 0.5]), store=store)
```

Three kinds of method, one config:

- every method mergekit registers (``mergekit_methods()`` reads mergekit's own registry: linear,
  slerp, ties, dare_ties, della, model_stock, karcher, ...), run through ``mergekit.merge.run_merge``
  into the store's atomic write folder. Per-model ``weight``/``density`` (and the method's other
  parameters) are scalars or per-layer gradients (a list, interpolated over the layers). An
  adapter artifact among the inputs is first merged into its base (``runtime.adapters.merged_folder``), and
  when the method needs a base and none is given, the adapters' common base is used;
- ``unload``: one LoRA adapter merged into its base (merge-and-unload);
- ``peft_<type>`` (``PEFT_COMBINATIONS``: linear, cat, ties, dare_linear, dare_ties, svd, ...):
  adapters of one base combined with peft's ``add_weighted_adapter``, written as one adapter
  (``output: adapter``) or as the merged model (``output: model``).

A mergekit YAML the user already has runs as is (``mergekit_yaml: file.yml``; its model names may
be store artifacts), and every merge writes the mergekit configuration it ran as ``mergekit.yml``
in the artifact. Before any work, ``check_compatibility`` compares architectures, hidden sizes,
layer counts, vocabularies, tokenizers and chat templates from the config and tokenizer files, and
estimates the memory needed; a merge that cannot work is refused with what differs. The artifact
(kind ``merged``, or ``adapter``) lists every parent with its role and weight, and the scoring core
scores it and its parents on the same held-out text and questions (overall and per relation group
of the demo world), with each specialist's retention on its own skill.

This module holds the config and ``merge``; the parts live beside it in ``llmlab.merge`` (methods, inputs,
checks, mergekit_config, adapters, scores).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from llmlab.errors import ConfigError, StoreError
from llmlab.events import Reporter, emit
from llmlab.merge.adapters import check_adapters, combine_adapters, unload_yaml
from llmlab.merge.checks import Compatibility, check_compatibility, refuse
from llmlab.merge.inputs import Gradient, Input, ModelSpec, inputs_of
from llmlab.merge.mergekit_config import load_mergekit_yaml, mergekit_dict, run_mergekit, yaml_inputs
from llmlab.merge.methods import PEFT_COMBINATIONS, MethodInfo, get_method, mergekit_methods, methods
from llmlab.merge.peak import peak_rss
from llmlab.merge.scores import evaluate, skill_of
from llmlab.scoring import EvalOptions
from llmlab.store import Artifact, StepRecord, Store

__all__ = ["PEFT_COMBINATIONS", "Compatibility", "MergeConfig", "MethodInfo", "ModelSpec",
           "check_compatibility", "evaluate", "merge", "mergekit_methods", "methods", "skill_of"]


class MergeConfig(EvalOptions):
    """Options of the Merge station (``llmlab merge`` and a recipe's ``merge`` step)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="Name of the artifact to write.")
    method: str = Field("linear", description="A mergekit method (see `mergekit_methods()`), 'unload' (one adapter "
                        "into its base) or 'peft_<type>' (adapters combined by peft: " +
                        ", ".join(PEFT_COMBINATIONS) + ").")
    models: list[str | ModelSpec] = Field(default_factory=list, description="Inputs: artifact names or folders, or "
                                          "{model, weight, density, parameters} entries.")
    base: str | None = Field(None, description="Base model for methods that need one (task vectors are taken "
                             "against it); default: the adapters' base.")
    weights: list[Gradient] | str | None = Field(None, description="One weight per model (e.g. [0.7, 0.3] or "
                                                 "'0.7,0.3'); a list inside is a per-layer gradient.")
    densities: list[Gradient] | str | None = Field(None, description="One density per model, like weights.")
    parameters: dict[str, Gradient | bool] = Field(default_factory=dict, description="Method-wide parameters "
                                                   "(t for slerp, lambda, normalize, ...).")
    tokenizer_source: str | None = Field(None, description="When vocabularies differ: 'base', 'union' or "
                                         "'model:NAME' (mergekit's options); recorded in the artifact.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype of the merge.")
    output: Literal["model", "adapter"] = Field("model", description="peft_* methods: write the combined adapter, "
                                                "or the model with it merged in.")
    svd_rank: int | None = Field(None, ge=1, description="peft_*svd methods: rank of the combined adapter.")
    mergekit_yaml: str | None = Field(None, description="Run this mergekit YAML file as is (models may be store "
                                      "names); method, models and weights are then taken from it.")
    seed: int = Field(0, description="Random seed (dare/della drop weights at random).")
    evaluate: bool = Field(True, description="Score the merge and its parents on the same held-out texts and "
                           "questions (texts, qa; by default the demo world's, when there is one).")

    @property
    def input_names(self) -> list[str]:
        """The store artifacts this merge reads (what a recipe checks and hashes)."""
        names = [m if isinstance(m, str) else m.model for m in self.models] + ([self.base] if self.base else [])
        return [n for n in names if "/" not in n and not n.startswith((".", "~"))]



def merge(config: MergeConfig, *, store: Store | None = None, progress: Reporter | None = None,
          overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Check, merge, write the artifact with its lineage and ``mergekit.yml``, then score it and its parents."""
    store = store or Store()
    if store.exists(config.name) and not overwrite:
        raise StoreError(f"An artifact named '{config.name}' already exists.",
                         "Choose another name, or pass --force / overwrite=True.")
    info: dict[str, Any] = {}
    kind = "merged"
    if config.mergekit_yaml:
        if config.models or config.base or config.weights or config.densities or config.parameters:
            raise ConfigError("A mergekit YAML runs as is: models, base, weights, densities and parameters come "
                              "from it.", "Leave those options out, or edit the YAML.")
        data = load_mergekit_yaml(config.mergekit_yaml, store)
        method = str(data["merge_method"])
        parents, refs = yaml_inputs(data, store)
        inputs: list[Input] = []
        folders = [r for r in dict.fromkeys([str(data.get("base_model") or ""), *refs]) if r and Path(r).is_dir()]
        if folders:  # references like "base+lora" or hub names are left to mergekit
            refuse(check_compatibility(folders, store=store, same_layers="slices" not in data,
                                        tokenizer_source=data.get("tokenizer_source") or data.get("tokenizer")))
        info.update(mergekit_yaml=str(config.mergekit_yaml), inputs=refs)
    else:
        method = config.method
        meth = get_method(method)
        if meth.source == "mergekit":
            data, inputs, base = mergekit_dict(config, store)
        else:
            inputs, base = inputs_of(config, store), None
            check_adapters(config, inputs)
            if method == "unload" and len(inputs) != 1:
                raise ConfigError(f"unload merges one adapter into its base, got {len(inputs)}.",
                                  "Combine several adapters with a peft_* method first.")
            if meth.source == "peft" and config.output == "adapter":
                kind = "adapter"
            base_art = store.get(inputs[0].adapter_base or "")
            base = Input(base_art.name, base_art.path, base_art, ModelSpec(model=base_art.name))
        compat = check_compatibility(inputs if base is None else [base, *inputs], store=store,
                                     tokenizer_source=config.tokenizer_source)
        refuse(compat)
        info.update(compatibility={"warnings": compat.warnings, "memory_estimate_mb": compat.memory_bytes // 2**20})
        parents = [p for p in [base.parent("base") if base else None] + [i.parent(
            "adapter" if i.is_adapter else "model") for i in inputs] if p is not None]
        info["inputs"] = [i.name for i in inputs]
    info.update(method=method, tokenizer_source=config.tokenizer_source)
    emit(progress, "log", message=f"merging {', '.join(info['inputs'])} with {method}")
    t0 = time.perf_counter()
    with store.write(config.name, kind, overwrite=overwrite) as w, peak_rss() as peak:
        if method == "unload":
            from llmlab.runtime.adapters import merged_folder

            shutil.copytree(merged_folder(inputs[0].artifact, store), w.path, dirs_exist_ok=True)  # type: ignore[arg-type]
            (w.path / "mergekit.yml").write_text(unload_yaml(inputs[0], store))
        elif method.startswith("peft_"):
            combine_adapters(config, inputs, store, w.path)
            (w.path / "merge.json").write_text(json.dumps(
                {"combination": method[5:], "adapters": [i.name for i in inputs],
                 "weights": [i.spec.weight for i in inputs], "density": [i.spec.density for i in inputs],
                 "svd_rank": config.svd_rank, "output": config.output}, indent=2) + "\n")
        else:
            (w.path / "mergekit.yml").write_text(run_mergekit(data, w.path, config.seed, progress))
        w.parents = parents
        w.step = step
        info.update(seconds=round(time.perf_counter() - t0, 2))
        w.info = info
    store.record_metrics(config.name, {"merge_seconds": info["seconds"], "merge_peak_rss_mb": round(peak.mb, 1)})
    if config.evaluate:
        evaluate(config.name, store=store, options=config, progress=progress)
    return store.get(config.name)
