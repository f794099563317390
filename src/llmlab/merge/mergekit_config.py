"""mergekit configurations: an llmlab MergeConfig as mergekit's dict, a user's mergekit YAML checked key
by key (store names resolved), and the run itself (``run_merge`` on CPU).

```python
from llmlab.merge.mergekit_config import mergekit_dict
data, inputs, base = mergekit_dict(MergeConfig(name="m", method="ties", models=["a", "b"]), store)
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llmlab.errors import ConfigError, NotFoundError
from llmlab.events import Reporter, emit
from llmlab.merge.inputs import Input, folder_of, inputs_of, resolve_input
from llmlab.merge.methods import MethodInfo, get_method
from llmlab.noise import quiet_loggers
from llmlab.store import Artifact, Parent, Store

if TYPE_CHECKING:
    from llmlab.merge.step import MergeConfig


def _base_for(config: MergeConfig, info: MethodInfo, inputs: list[Input], store: Store) -> Input | None:
    if config.base is not None:
        if info.base == "ignored":
            raise ConfigError(f"The {info.name} method takes no base model (mergekit ignores it).",
                              "Leave base out, or pick a task-vector method (task_arithmetic, ties, dare_ties...).")
        for i in inputs:
            if i.is_adapter and i.adapter_base != config.base:
                raise ConfigError(f"The adapter '{i.name}' was tuned on '{i.adapter_base}', not on the base "
                                  f"'{config.base}'.", "Use each adapter with its own base, or leave base out.")
        return resolve_input(config.base, store)
    bases = {i.adapter_base for i in inputs if i.is_adapter}
    if info.base == "required":
        if len(bases) == 1 and None not in bases:
            return resolve_input(bases.pop(), store)
        raise ConfigError(f"The {info.name} method needs a base model.", "Set base: NAME (the model the inputs were "
                          "tuned from).")
    return None


def mergekit_dict(config: MergeConfig, store: Store) -> tuple[dict[str, Any], list[Input], Input | None]:
    """The mergekit configuration (a dict) an llmlab config stands for, its inputs and base."""
    info = get_method(config.method)
    inputs = inputs_of(config, store)
    base = _base_for(config, info, inputs, store)
    n = len(inputs)
    if n < info.min_models or (info.max_models is not None and n > info.max_models):
        want = f"{info.min_models}" + ("" if info.max_models == info.min_models else
                                       f" to {info.max_models}" if info.max_models else " or more")
        raise ConfigError(f"The {info.name} method merges {want} models (besides the base), got {n}.")
    allowed = set(info.per_model) | set(info.shared)
    for key in config.parameters:
        if key not in allowed:
            raise ConfigError(f"The {info.name} method has no parameter '{key}'.",
                              f"Its parameters: {', '.join(sorted(allowed)) or 'none'}.")
    models = []
    for i in inputs:
        params: dict[str, Any] = {}
        for key in ("weight", "density"):
            value = getattr(i.spec, key)
            if value is not None:
                if key not in info.per_model:
                    raise ConfigError(f"The {info.name} method takes no per-model {key}.",
                                      f"Its per-model parameters: {', '.join(info.per_model) or 'none'}.")
                params[key] = value
        for key, value in i.spec.parameters.items():
            if key not in info.per_model:
                raise ConfigError(f"The {info.name} method has no per-model parameter '{key}'.",
                                  f"Its per-model parameters: {', '.join(info.per_model) or 'none'}.")
            params[key] = value
        if "weight" in info.per_model and "weight" not in params:
            params["weight"] = i.spec.weight = 1.0  # mergekit requires one; equal weights are the natural default
        models.append({"model": str(folder_of(i, store)), **({"parameters": params} if params else {})})
    if base is not None and info.base != "ignored":
        entry: dict[str, Any] = {"model": str(folder_of(base, store))}
        models.append(entry)
    shared = {k: v for k, v in config.parameters.items()}
    for k, default in info.shared.items():
        if default is None and k not in shared:
            shared[k] = 0.5  # the only required shared parameter is slerp/nearswap's t
    out: dict[str, Any] = {"merge_method": info.name, "models": models, "dtype": config.dtype}
    if base is not None and info.base != "ignored":
        out["base_model"] = str(folder_of(base, store))
    if shared:
        out["parameters"] = shared
    if config.tokenizer_source is not None:
        out["tokenizer_source"] = _tokenizer_source(config.tokenizer_source, store)
    return out, inputs, base


def _tokenizer_source(value: str, store: Store) -> str:
    if value in ("base", "union"):
        return value
    if value.startswith("model:"):
        return str(folder_of(resolve_input(value[6:], store), store))
    raise ConfigError(f"tokenizer_source '{value}' is not one of mergekit's options.",
                      "Use 'base', 'union' or 'model:NAME'.")


def load_mergekit_yaml(path: str | Path, store: Store) -> dict[str, Any]:
    """A user's mergekit YAML, checked key by key (unknown keys are errors), with store names resolved."""
    import yaml
    from mergekit.config import (
        InputModelDefinition,
        InputSliceDefinition,
        MergeConfiguration,
        OutputSliceDefinition,
    )

    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"The mergekit YAML '{path}' does not exist.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"'{path}' is not valid YAML: {getattr(e, 'problem', e)}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' is not a mergekit configuration (a mapping with merge_method and models).")

    def check(node: Any, model: type[BaseModel], where: str) -> None:
        if not isinstance(node, dict):
            return
        unknown = sorted(set(node) - set(model.model_fields))
        if unknown:
            raise ConfigError(f"'{path}': unknown key '{unknown[0]}' in {where}.",
                              f"Keys mergekit reads there: {', '.join(model.model_fields)}.")

    check(data, MergeConfiguration, "the top level")
    for i, m in enumerate(data.get("models") or []):
        check(m, InputModelDefinition, f"models[{i}]")
    for i, s in enumerate(data.get("slices") or []):
        check(s, OutputSliceDefinition, f"slices[{i}]")
        for j, src in enumerate((s or {}).get("sources") or []):
            check(src, InputSliceDefinition, f"slices[{i}].sources[{j}]")
    get_method(str(data.get("merge_method")))

    def local(ref: Any) -> Any:
        if isinstance(ref, str) and "/" not in ref and "+" not in ref and store.exists(ref):
            return str(folder_of(resolve_input(ref, store), store))
        return ref

    data = json.loads(json.dumps(data))
    for m in data.get("models") or []:
        m["model"] = local(m.get("model"))
    for s in data.get("slices") or []:
        for src in s.get("sources") or []:
            src["model"] = local(src.get("model"))
    if "base_model" in data:
        data["base_model"] = local(data["base_model"])
    return data


def yaml_inputs(data: dict[str, Any], store: Store) -> tuple[list[Parent], list[str]]:
    """Parents (store artifacts among the YAML's models, with weights) and every model reference."""
    by_path = {str(a.path): a for a in store.list()}
    refs: list[tuple[str, Any]] = [(m["model"], (m.get("parameters") or {}).get("weight"))
                                   for m in data.get("models") or []]
    refs += [(src["model"], None) for s in data.get("slices") or [] for src in s.get("sources") or []]
    parents, seen = [], set()
    base = data.get("base_model")
    for ref, w in ([(base, None)] if base else []) + refs:
        art = by_path.get(str(ref)) or _adapter_by_merged(str(ref), store)
        if art is not None and art.name not in seen:
            seen.add(art.name)
            parents.append(Parent(name=art.name, content_hash=art.content_hash, role="base" if ref == base else "model",
                                  weight=float(w) if isinstance(w, (int, float)) else None))
    return parents, [str(r) for r, _ in refs]


def _adapter_by_merged(path: str, store: Store) -> Artifact | None:
    for a in store.list("adapter"):
        if path == str(store.root / ".cache" / "merged" / a.content_hash[:32]):
            return a
    return None


def run_mergekit(data: dict[str, Any], out: Path, seed: int, progress: Reporter | None) -> str:
    """Run mergekit on ``data`` into ``out``; return the YAML it ran."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from llmlab import settings

    try:
        cfg = MergeConfiguration.model_validate(data)
        text = cfg.to_yaml() + "\n"  # before run_merge, which expands the config in place
    except Exception as e:  # pydantic's ValidationError or mergekit's RuntimeError from its validators
        raise ConfigError(f"mergekit refuses the configuration: {str(e).splitlines()[0]}.") from None
    emit(progress, "log", message=f"merging with mergekit ({cfg.merge_method})")
    quiet_loggers("mergekit")
    import torch

    torch.set_num_threads(settings.threads())
    try:
        run_merge(cfg, str(out), MergeOptions(device="cpu", quiet=True, random_seed=seed, write_model_card=False,
                                              num_threads=settings.threads()))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"mergekit could not merge: {str(e).splitlines()[0]}.",
                          "Check the models, the method's parameters and the tokenizer source.") from None
    (out / "mergekit_config.yml").unlink(missing_ok=True)  # llmlab writes mergekit.yml itself
    return text
