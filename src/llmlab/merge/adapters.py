"""LoRA adapters: several adapters of one base combined with peft's ``add_weighted_adapter`` (written as an
adapter or merged into the base), and merge-and-unload's equivalent mergekit YAML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from llmlab.errors import ConfigError
from llmlab.merge.inputs import Input
from llmlab.merge.methods import PEFT_NEED_DENSITY
from llmlab.store import Store

if TYPE_CHECKING:
    from llmlab.merge.step import MergeConfig


def combine_adapters(config: MergeConfig, inputs: list[Input], store: Store, out: Path) -> str:
    """Combine adapters with ``add_weighted_adapter``; write an adapter or the merged model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.noise import quiet_peft

    quiet_peft()
    combination = config.method[len("peft_"):]
    if combination in PEFT_NEED_DENSITY and any(i.spec.density is None for i in inputs):
        raise ConfigError(f"peft's {combination} combination needs a density.",
                          "Set densities: [0.5, ...] (the share of each adapter kept).")
    densities = {float(i.spec.density) for i in inputs if isinstance(i.spec.density, (int, float))}
    if len(densities) > 1:
        raise ConfigError(f"peft's {combination} combination takes one density for all adapters, got "
                          f"{sorted(densities)}.", "Give the same density to every adapter.")
    torch.manual_seed(config.seed)
    base_path = inputs[0].path
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True,
                                                 local_files_only=True)
    names = [f"in{k}" for k in range(len(inputs))]
    peft_model = PeftModel.from_pretrained(model, inputs[0].artifact.path, adapter_name=names[0])  # type: ignore[union-attr]
    for nm, i in zip(names[1:], inputs[1:]):
        peft_model.load_adapter(str(i.artifact.path), adapter_name=nm)  # type: ignore[union-attr]
    for i in inputs:
        if i.spec.weight is None:
            i.spec.weight = 1.0
        elif not isinstance(i.spec.weight, (int, float)):
            raise ConfigError("peft combines adapters with one number per adapter, not per-layer gradients.",
                              "Give plain weights, or merge the adapters with a mergekit method.")
    weights = [float(i.spec.weight) for i in inputs]  # type: ignore[arg-type]
    peft_model.add_weighted_adapter(names, weights, "default", combination_type=combination,
                                    svd_rank=config.svd_rank, density=densities.pop() if densities else None)
    peft_model.set_adapter("default")
    for nm in names:
        peft_model.delete_adapter(nm)
    if config.output == "adapter":
        peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
        (out / "README.md").unlink(missing_ok=True)
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = inputs[0].adapter_base
        if isinstance(cfg.get("target_modules"), list):  # peft writes a set, in hash-seed order
            cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    else:
        peft_model.merge_and_unload().save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(inputs[0].artifact.path, local_files_only=True).save_pretrained(out)  # type: ignore[union-attr]
    return ""


def check_adapters(config: MergeConfig, inputs: list[Input]) -> None:
    bad = [i.name for i in inputs if not i.is_adapter]
    if bad:
        raise ConfigError(f"The {config.method} method takes adapters, but '{bad[0]}' is not one.",
                          "Use a mergekit method (linear, ties...) for full models.")
    bases = {i.adapter_base for i in inputs}
    wanted = config.base
    if len(bases) > 1 or (wanted is not None and bases != {wanted}):
        names = ", ".join(f"{i.name} (base {i.adapter_base})" for i in inputs)
        raise ConfigError(f"These adapters were not all tuned on {'the base ' + wanted if wanted else 'one base'}: "
                          f"{names}.", "Combine adapters of one base only; merge the others into their own bases.")



def unload_yaml(adapter: Input, store: Store) -> str:
    """merge-and-unload in mergekit's own terms (``base+adapter``), so mergekit-yaml can redo it."""
    import yaml

    base = store.get(adapter.adapter_base or "")
    ref = f"{base.path}+{adapter.artifact.path}"  # type: ignore[union-attr]
    return yaml.safe_dump({"merge_method": "passthrough", "models": [{"model": ref}], "dtype": "float32"})
