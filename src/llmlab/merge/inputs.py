"""Merge inputs: artifact names or folders resolved (an adapter with its base), per-model settings.

```python
from llmlab.merge.inputs import resolve_input
resolve_input("demo-people", store).adapter_base    # 'demo'
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, NotFoundError
from llmlab.store import HF_KINDS, MODEL_KINDS, Artifact, Parent, Store

if TYPE_CHECKING:
    from llmlab.merge.step import MergeConfig

Gradient = Union[float, list[float]]


class ModelSpec(BaseModel):
    """One input of a merge with its own settings."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="Artifact name (model or adapter) or a local Hugging Face folder.")
    weight: Gradient | None = Field(None, description="Merge weight: a number or a per-layer gradient list.")
    density: Gradient | None = Field(None, description="Share of the task vector kept (ties, dare, della...).")
    parameters: dict[str, Gradient | bool] = Field(default_factory=dict,
                                                   description="Other per-model parameters of the method.")



@dataclass
class Input:
    """One resolved merge input."""

    name: str
    path: Path  # the folder read for config/tokenizer facts (an adapter's: its base)
    artifact: Artifact | None
    spec: ModelSpec
    adapter_base: str | None = None  # the base artifact an adapter was trained on

    @property
    def is_adapter(self) -> bool:
        return self.artifact is not None and self.artifact.kind == "adapter"

    def parent(self, role: str) -> Parent | None:
        if self.artifact is None:
            return None
        w = self.spec.weight
        return Parent(name=self.artifact.name, content_hash=self.artifact.content_hash, role=role,
                      weight=float(w) if isinstance(w, (int, float)) else None)


def resolve_input(name: str, store: Store, spec: ModelSpec | None = None) -> Input:
    spec = spec or ModelSpec(model=name)
    if "/" not in name and not name.startswith((".", "~")):
        if not store.exists(name):
            store.get(name)  # NotFoundError naming the missing parent and the known ones
        art = store.get(name)
        if art.kind == "adapter":
            from llmlab.runtime.adapters import base_of

            base = next((p.name for p in art.manifest.parents if p.role == "base"), None)
            return Input(name, base_of(art, store), art, spec, adapter_base=base)
        if art.kind not in MODEL_KINDS:
            raise ConfigError(f"'{name}' is a {art.kind} artifact; merging needs Hugging Face models or adapters "
                              f"({', '.join(HF_KINDS)}).", "Merge the safetensors model it came from.")
        return Input(name, art.path, art, spec)
    path = Path(name).expanduser()
    if not path.is_dir():
        raise NotFoundError(f"The merge input '{name}' is neither a store artifact nor a folder.",
                            "List the artifacts with `llmlab models ls`.")
    from llmlab.formats.hf import check_hf_folder

    check_hf_folder(path)
    return Input(str(path), path, None, spec)


def _numbers(value: list[Gradient] | str | None, what: str, n: int) -> list[Gradient | None]:
    """``weights``/``densities`` as one value per model; a string like '0.7,0.3' is parsed."""
    if value is None:
        return [None] * n
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"The {what} '{value}' do not parse as numbers.",
                              f"Give one number per model, e.g. {what}: [0.5, 0.5] or --{what} 0.5,0.5.") from None
    if len(value) != n:
        raise ConfigError(f"{len(value)} {what} for {n} models.", f"Give exactly one of the {what} per model.")
    return list(value)


def inputs_of(config: MergeConfig, store: Store) -> list[Input]:
    """The config's models resolved, with ``weights``/``densities`` spread onto them."""
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(model=m) for m in config.models]
    if not specs:
        raise ConfigError("A merge needs models (or a mergekit_yaml file).",
                          "List the models to merge, e.g. models: [demo-people, demo-places].")
    ws = _numbers(config.weights, "weights", len(specs))
    ds = _numbers(config.densities, "densities", len(specs))
    out = []
    for s, w, d in zip(specs, ws, ds):
        s = s.model_copy(update={"weight": s.weight if w is None else w, "density": s.density if d is None else d})
        out.append(resolve_input(s.model, store, s))
    return out


def folder_of(i: Input, store: Store) -> Path:
    """The folder mergekit reads: an adapter's merged-into-base folder (cached), else the model's."""
    if i.is_adapter:
        from llmlab.runtime.adapters import merged_folder

        assert i.artifact is not None
        return merged_folder(i.artifact, store)
    return i.path
