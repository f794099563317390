"""Several LoRA adapters in one bundle: one base GGUF, one GGUF file per adapter, served by one
``llmlab serve`` that picks the adapter per request (``model: "<bundle>:<adapter>"``).

```python
export(ExportConfig(model="demo-f16", adapters=["demo-lora", "demo-poet-gguf"]), store=store)
```

``adapters`` names ``gguf-adapter`` artifacts converted for the bundle's base, or peft ``adapter``
artifacts of the model the base was made from: those are converted first by the Quantize station's
``gguf-adapter`` step (``<adapter>-gguf``, reused when it exists and fits the base). An adapter made
for another base is refused before anything is written, naming both.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.store import Artifact, StepRecord, Store

ADAPTER_DIR = "model/adapters"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a request's model is "<bundle>:<adapter name>"


@dataclass(frozen=True)
class BundledAdapter:
    """One adapter of a bundle: the name clients ask for, and the gguf-adapter artifact it runs."""

    name: str
    artifact: Artifact


def resolve_adapters(base: Artifact, names: list[str], store: Store, *, step: StepRecord | None = None,
                     progress: Reporter | None = None) -> list[BundledAdapter]:
    """The adapters ``names`` as gguf-adapter artifacts of ``base`` (peft ones converted first)."""
    from llmlab.runtime.adapters import check_adapter_base

    if base.kind != "gguf":
        raise ConfigError(f"A bundle with several adapters needs a GGUF base model; '{base.name}' is a "
                          f"{base.kind} artifact.",
                          "Give the GGUF the adapters were converted for as the model (e.g. <base>-f16).")
    if len(set(names)) != len(names):
        raise ConfigError(f"An adapter is listed twice in {names}.", "List each adapter once.")
    out = []
    for name in names:
        if not NAME.match(name):
            raise ConfigError(f"'{name}' cannot name an adapter in a bundle (letters, digits, '.', '_', '-').",
                              "Rename the artifact.")
        art = store.get(name)
        if art.kind == "adapter":
            art = _converted(art, base, store, step, progress)
        elif art.kind != "gguf-adapter":
            raise ConfigError(f"'{name}' is a {art.kind} artifact; a bundle's adapters are LoRA adapters.",
                              "Give gguf-adapter artifacts, or peft adapters made by the Tune station.")
        check_adapter_base(art, base)
        out.append(BundledAdapter(name, art))
    return out


def _converted(adapter: Artifact, base: Artifact, store: Store, step: StepRecord | None,
               progress: Reporter | None) -> Artifact:
    """The peft ``adapter`` as a gguf-adapter for ``base``: an existing conversion that fits, else a new one."""
    from llmlab.quantize.adapter import GGUFAdapterConfig, convert_adapter

    for name in (f"{adapter.name}-gguf", f"{adapter.name}-{base.name}-gguf"):
        if not store.exists(name):
            emit(progress, "log", message=f"converting {adapter.name} to a GGUF adapter for {base.name}")
            return convert_adapter(GGUFAdapterConfig(adapter=adapter.name, base=base.name, name=name), store=store,
                                   progress=progress, step=step)
        art = store.get(name)
        parents = {p.role: p.content_hash for p in art.manifest.parents}
        if parents.get("adapter") == adapter.content_hash and parents.get("base") == base.content_hash:
            return art
    raise ConfigError(f"'{adapter.name}-gguf' and '{adapter.name}-{base.name}-gguf' exist but are not "
                      f"'{adapter.name}' converted for '{base.name}'.",
                      f"Convert it yourself (llmlab gguf-adapter --adapter {adapter.name} --base {base.name} "
                      "--name ...) and list the result.")


def write_adapters(folder: Path, base: Artifact, adapters: list[BundledAdapter]) -> dict[str, Any]:
    """Copy each adapter's file into the bundle; the ``model`` entries of ``bundle.json`` that name them."""
    (folder / ADAPTER_DIR).mkdir(parents=True)
    entries = {}
    for a in adapters:
        rel = f"{ADAPTER_DIR}/{a.name}.gguf"
        shutil.copyfile(a.artifact.file(".gguf"), folder / rel)
        entries[a.name] = {"file": rel, "artifact": a.artifact.name, "artifact_hash": a.artifact.content_hash,
                           "base": base.name, "base_hash": base.content_hash,
                           "adapter": a.artifact.manifest.info.get("adapter")}
    return {"base": {"name": base.name, "content_hash": base.content_hash}, "adapters": entries}
