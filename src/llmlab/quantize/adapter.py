"""LoRA adapters for llama.cpp: a peft ``adapter`` artifact as a ``gguf-adapter`` artifact.

```python
from llmlab.quantize.adapter import GGUFAdapterConfig, convert_adapter
convert_adapter(GGUFAdapterConfig(adapter="demo-lora"), store=store)   # writes demo-lora-gguf (+ demo-f16)
with llmlab.runtime.load("demo-lora-gguf", store=store) as m:         # demo-f16.gguf + the adapter, unmerged
    m.chat([{"role": "user", "content": "Where does Ada live?"}])
```

The adapter is converted by llama.cpp's own ``convert_lora_to_gguf.py`` from the same pinned
converter cache as ``gguf.convert`` (``llmlab setup``), in a subprocess with its vendored
``gguf-py``. The result is applied at load time on top of a base GGUF of the adapter's base
model: the f16 one (``<base>-f16``, converted first when it does not exist) or any GGUF artifact
made from the same base, quantized ones included, so one base file serves several adapters.

Before anything is written, the base GGUF must come from the adapter's base: the content hash
of its ``source`` parent must equal the hash the adapter records for its ``base`` parent (for a
GGUF imported without lineage, its architecture and widths must match the base's config), and
every adapter tensor must fit a base tensor's shape. Adapters llama.cpp cannot apply as plain
``scale * B @ A`` (DoRA, rsLoRA, per-module ranks or alphas, extra saved modules) are refused.
The runtime resolves a ``gguf-adapter`` artifact to (its base GGUF file, ``lora_path``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, StoreError
from llmlab.events import Reporter, emit
from llmlab.formats import safetensors

if TYPE_CHECKING:
    from llmlab.store import Artifact, Parent, StepRecord, Store

ADAPTER_FILE = "adapter.gguf"


class GGUFAdapterConfig(BaseModel):
    """Options of the ``gguf-adapter`` step (``llmlab gguf-adapter``, a recipe step)."""

    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(..., description="The LoRA adapter artifact to convert (kind adapter, made by the Tune "
                         "station).")
    base: str | None = Field(None, description="GGUF artifact of the adapter's base model to run it on (f16 or "
                             "quantized); default: <base>-f16, converted first if it does not exist.")
    name: str | None = Field(None, description="Name of the gguf-adapter artifact to write; default: "
                             "<adapter>-gguf.")
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field("f16", description="Number format of the adapter "
                                                            "weights in the GGUF file.")

    @property
    def output(self) -> str:
        return self.name or f"{self.adapter}-gguf"


# ----- checks -----
def _lora_config(adapter: Artifact) -> dict[str, Any]:
    """The adapter's peft config, refused when llama.cpp cannot apply it as ``alpha / r * B @ A``."""
    files = adapter.manifest.files
    if "adapter_config.json" not in files or "adapter_model.safetensors" not in files:
        raise StoreError(f"'{adapter.name}' has no adapter_config.json and adapter_model.safetensors.",
                         "Give a LoRA adapter made by the Tune station (peft, safetensors).")
    cfg = json.loads((adapter.path / "adapter_config.json").read_text())
    reasons = {
        "it is not a LoRA adapter (peft type " + str(cfg.get("peft_type")) + ")": cfg.get("peft_type") != "LORA",
        "DoRA's magnitude vectors": bool(cfg.get("use_dora")),
        "rsLoRA's alpha / sqrt(r) scaling": bool(cfg.get("use_rslora")),
        "per-module ranks or alphas": bool(cfg.get("rank_pattern") or cfg.get("alpha_pattern")),
        "fully trained extra modules (modules_to_save)": bool(cfg.get("modules_to_save")),
        "trainable token rows": bool(cfg.get("trainable_token_indices")),
    }
    found = [why for why, bad in reasons.items() if bad]
    if found:
        raise ConfigError(f"'{adapter.name}' cannot run in llama.cpp as a separate adapter: {found[0]}.",
                          "Merge it into its base (the runtime does this for adapter artifacts) and quantize "
                          "the merged model instead, or tune a plain LoRA.")
    return cfg


def _base_parent(adapter: Artifact) -> Parent:
    parents = [p for p in adapter.manifest.parents if p.role == "base"]
    if not parents:
        raise StoreError(f"Adapter '{adapter.name}' names no base model in its manifest, so the GGUF base it "
                         "belongs to cannot be checked.", "Convert adapters made by the Tune station.")
    return parents[0]


def check_base(adapter: Artifact, gguf_art: Artifact, base_folder: Path) -> None:
    """Refuse ``gguf_art`` unless it was made from the adapter's base (see module doc)."""
    from llmlab.quantize import gguf

    want = _base_parent(adapter)
    if gguf_art.kind != "gguf":
        raise ConfigError(f"'{gguf_art.name}' is a {gguf_art.kind} artifact, not a GGUF model.",
                          f"Give a GGUF artifact of '{want.name}' (the Quantize station makes them).")
    source = next((p for p in gguf_art.manifest.parents if p.role == "source"), None)
    if source is not None:
        if source.content_hash != want.content_hash:
            raise ConfigError(
                f"The adapter '{adapter.name}' was trained on '{want.name}' ({want.content_hash[:12]}), but the "
                f"GGUF '{gguf_art.name}' was made from '{source.name}' ({source.content_hash[:12]}): another "
                "model, so the adapter does not apply to it.",
                f"Give as base a GGUF converted from the current '{want.name}' (llmlab quantize {want.name} "
                f"makes them), or leave base empty to use {want.name}-f16.")
        return
    # no recorded lineage (an imported file): at least the architecture and widths must agree
    meta = gguf.read_header(gguf_art.file(".gguf"))["metadata"]
    arch = meta.get("general.architecture", "")
    hf = json.loads((base_folder / "config.json").read_text())
    pairs = {"layers": (meta.get(f"{arch}.block_count"), hf.get("num_hidden_layers")),
             "hidden size": (meta.get(f"{arch}.embedding_length"), hf.get("hidden_size")),
             "feed-forward size": (meta.get(f"{arch}.feed_forward_length"), hf.get("intermediate_size"))}
    bad = [f"{k} {g} vs {h}" for k, (g, h) in pairs.items() if g != h]
    if bad:
        raise ConfigError(f"The GGUF '{gguf_art.name}' does not have the shape of '{want.name}', the base of "
                          f"'{adapter.name}' ({'; '.join(bad)}).",
                          f"Use a GGUF of '{want.name}' (leave base empty to convert it to f16).")


def check_shapes(adapter_file: Path, base_file: Path) -> None:
    """Every ``X.lora_a`` / ``X.lora_b`` pair must match base tensor ``X`` (GGUF order: ne0 = row length)."""
    from llmlab.quantize import gguf

    base, lora = gguf.tensor_shapes(base_file), gguf.tensor_shapes(adapter_file)
    for name, shape in lora.items():
        target, _, part = name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            continue
        if target not in base:
            raise ConfigError(f"The adapter changes '{target}', which '{base_file.name}' does not have.",
                              "Use a GGUF of the adapter's own base model.")
        dim = 0 if part == "lora_a" else 1  # A: [in, r], B: [r, out] against the base's [in, out]
        if shape[dim] != base[target][dim]:
            raise ConfigError(f"The adapter's '{name}' has shape {shape}, which does not fit '{target}' "
                              f"{base[target]} in '{base_file.name}'.", "Use a GGUF of the adapter's own base model.")


# ----- the step -----
def _f16_base(base_art: Artifact, store: Store, step: StepRecord | None, progress: Reporter | None) -> Artifact:
    """``<base>-f16``: the base converted to an f16 GGUF artifact (as the Quantize station names it)."""
    from llmlab.quantize import gguf
    from llmlab.quantize.step import gguf_info
    from llmlab.store import Parent

    name = f"{base_art.name}-f16"
    emit(progress, "log", message=f"converting {base_art.name} to GGUF f16 for the adapter")
    with store.write(name, "gguf") as w:
        out = gguf.convert(base_art.path, w.path / f"{name}.gguf", "f16", progress)
        w.parents = [Parent(name=base_art.name, content_hash=base_art.content_hash, role="source")]
        w.step = step
        w.info = {**gguf_info(out, "F16"), "source": base_art.name}
    return store.get(name)


def convert_adapter(config: GGUFAdapterConfig, *, store: Store | None = None, progress: Reporter | None = None,
                    overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Write the ``gguf-adapter`` artifact ``config.output`` (see module doc); returns it."""
    from llmlab.quantize import gguf
    from llmlab.runtime.adapters import base_of
    from llmlab.store import Parent, Store

    store = store or Store()
    adapter = store.get(config.adapter)
    if adapter.kind != "adapter":
        raise ConfigError(f"'{adapter.name}' is a {adapter.kind} artifact; gguf-adapter converts LoRA adapters.",
                          "Give an adapter made by the Tune station (method lora).")
    lora_cfg = _lora_config(adapter)
    base_folder = base_of(adapter, store)  # the base must still be the one it was trained on
    want = _base_parent(adapter)
    if store.exists(config.output) and not overwrite:
        raise StoreError(f"An artifact named '{config.output}' already exists.",
                         "Choose another name, remove it, or pass --force / overwrite=True.")
    base_name = config.base or f"{want.name}-f16"
    if config.base is None and not store.exists(base_name):
        base_gguf = _f16_base(store.get(want.name), store, step, progress)
    else:
        base_gguf = store.get(base_name)
    check_base(adapter, base_gguf, base_folder)
    base_file = base_gguf.file(".gguf")

    n_tensors = len(safetensors.read_header(adapter.path / "adapter_model.safetensors"))
    args = ["--base", str(base_folder), "--outtype", config.outtype, str(adapter.path)]
    with store.write(config.output, "gguf-adapter", overwrite=overwrite) as w:
        out = w.path / ADAPTER_FILE
        with gguf.run_converter("convert_lora_to_gguf.py", args, out, n_tensors, what=f"Converting '{adapter.name}'",
                                task="convert-adapter", progress=progress) as tmp:
            header = gguf.read_header(tmp)
            if header["type"] != "adapter":
                raise gguf.ConversionError(f"The converter wrote a {header['type']} file, not an adapter.")
            check_shapes(tmp, base_file)
        w.parents = [Parent(name=adapter.name, content_hash=adapter.content_hash, role="adapter"),
                     Parent(name=base_gguf.name, content_hash=base_gguf.content_hash, role="base")]
        w.step = step
        w.info = {"base": base_gguf.name, "base_model": want.name, "adapter": adapter.name,
                  "outtype": config.outtype, "rank": lora_cfg.get("r"), "alpha": lora_cfg.get("lora_alpha"),
                  "target_modules": lora_cfg.get("target_modules"),
                  "tensor_count": header["tensor_count"], "size_bytes": header["size_bytes"]}
    emit(progress, "log", message=f"wrote {config.output} ({config.outtype}) for {base_gguf.name}")
    return store.get(config.output)
