"""Artifacts that are not one plain set of weights, made loadable: what the runtime needs to know about
adapters, so that no station has to teach it.

- an ``adapter`` (peft LoRA/DoRA) loads as its base with the adapter merged in, merged once and cached
  by the adapter's content hash (``merged_folder``);
- a ``gguf-adapter`` loads as its base GGUF with the adapter applied by llama.cpp (``gguf_adapter_base``);
- several ``gguf-adapter`` artifacts of one base load as that base once, holding them all
  (``load_with_adapters``; a server switches between them per request).

All check the base against the content hash recorded in the adapter's manifest.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError, StoreError
from llmlab.noise import no_progress_bars, quiet_peft
from llmlab.store import Artifact, Store

if TYPE_CHECKING:
    from llmlab.runtime.base import Model


def base_of(adapter: Artifact, store: Store) -> Path:
    """The base model folder of an adapter artifact, checked against the manifest's lineage."""
    parents = [p for p in adapter.manifest.parents if p.role == "base"]
    if not parents:
        folder = adapter.manifest.info.get("base_path")
        if folder and Path(folder).is_dir():
            return Path(folder)
        raise StoreError(f"Adapter '{adapter.name}' names no base model in its manifest.")
    p = parents[0]
    base = store.get(p.name)
    if base.content_hash != p.content_hash:
        raise StoreError(f"Adapter '{adapter.name}' was trained on '{p.name}' {p.content_hash[:12]}, but "
                         f"'{p.name}' is now {base.content_hash[:12]}: the base does not match.",
                         f"Retune the adapter on the current '{p.name}', or restore that base.")
    return base.path


def merge_adapter(base: Path, adapter_dir: Path, out: Path) -> Path:
    """Write base + adapter merged (``merge_and_unload``) as a Hugging Face folder at ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_peft()
    no_progress_bars()  # no loading/writing bars inside llmlab's own work
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True,
                                                 local_files_only=True)
    PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def merged_folder(adapter: Artifact, store: Store) -> Path:
    """A Hugging Face folder of base + adapter merged, cached under ``.cache/merged/<content hash>``
    (llmlab's own derived files): what the runtime loads for an ``adapter`` artifact."""
    out = store.root / ".cache" / "merged" / adapter.content_hash[:32]
    if (out / "config.json").is_file():
        return out
    return merge_adapter(base_of(adapter, store), adapter.path, out)


def gguf_adapter_base(artifact: Artifact, store: Store) -> Path:
    """The base GGUF file a ``gguf-adapter`` artifact runs on, checked against the recorded hash."""
    parent = next((p for p in artifact.manifest.parents if p.role == "base"), None)
    if parent is None:
        raise StoreError(f"'{artifact.name}' names no base GGUF in its manifest.")
    base = store.get(parent.name)
    if base.content_hash != parent.content_hash:
        raise StoreError(f"'{artifact.name}' was made for '{parent.name}' {parent.content_hash[:12]}, but "
                         f"'{parent.name}' is now {base.content_hash[:12]}.",
                         f"Convert the adapter again (llmlab gguf-adapter --adapter ... --base {parent.name}).")
    return base.file(".gguf")


def check_adapter_base(adapter: Artifact, base: Artifact) -> None:
    """Refuse a ``gguf-adapter`` made for another base GGUF than ``base``, naming both (its manifest's
    lineage against the base's content hash), before either file is loaded."""
    if adapter.kind != "gguf-adapter":
        raise ConfigError(f"'{adapter.name}' is a {adapter.kind} artifact, not a GGUF adapter.",
                          "Convert a LoRA adapter with llmlab gguf-adapter first.")
    parent = next((p for p in adapter.manifest.parents if p.role == "base"), None)
    if parent is None:
        raise StoreError(f"'{adapter.name}' names no base GGUF in its manifest.",
                         "Convert the adapter again (llmlab gguf-adapter).")
    if parent.content_hash != base.content_hash:
        raise ConfigError(f"The adapter '{adapter.name}' was made for '{parent.name}' ({parent.content_hash[:12]}), "
                          f"not for '{base.name}' ({base.content_hash[:12]}): it does not apply to that base.",
                          f"Convert it for this base: llmlab gguf-adapter --adapter "
                          f"{adapter.manifest.info.get('adapter', '<adapter>')} --base {base.name}.")


def load_with_adapters(base: str | Artifact, adapters: Mapping[str, str | Artifact], *, store: Store | None = None,
                       **options: Any) -> Model:
    """One GGUF ``base`` loaded once with several ``gguf-adapter`` artifacts beside it ({name: artifact});
    each is checked against the base first. Choose one per call with ``model.adapter(name)``."""
    from llmlab.runtime import load

    store = store or Store()
    base_art = base if isinstance(base, Artifact) else store.get(base)
    if base_art.kind != "gguf":
        raise ConfigError(f"'{base_art.name}' is a {base_art.kind} artifact; adapters run on a GGUF model.",
                          "Give the GGUF artifact the adapters were converted for.")
    arts = {name: a if isinstance(a, Artifact) else store.get(a) for name, a in adapters.items()}
    for art in arts.values():
        check_adapter_base(art, base_art)
    model = load(base_art, store=store, **options)
    try:
        for name, art in arts.items():
            model.add_adapter(name, art.file(".gguf"))  # type: ignore[attr-defined]
    except BaseException:
        model.close()
        raise
    return model
