"""Hugging Face model folders, checked before anything in them is opened.

A folder passes when its config parses and names an architecture, no custom code is needed
(``auto_map``: llmlab never sets ``trust_remote_code``), its weights are safetensors (never pickle)
and every safetensors header is complete and its data fits the file size.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.errors import ConfigError
from llmlab.formats import safetensors

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Files a model folder may carry into the store; code (.py) and pickles never come along.
COPY_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".md", ".tiktoken")


def check_hf_folder(folder: Path) -> dict:
    """Validate a Hugging Face model folder; return its config."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"'{folder}' has no config.json, so it is not a Hugging Face model folder.",
                          "Point at the folder that holds config.json and the *.safetensors files.")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config.json in '{folder}' is not valid JSON ({e}).") from None
    if "auto_map" in config:
        raise ConfigError(
            f"The model in '{folder}' needs its own Python code (config.json has auto_map).",
            "llmlab never runs model code from a folder (no trust_remote_code): use a model whose "
            "architecture transformers ships.",
        )
    if not config.get("model_type"):
        raise ConfigError(f"config.json in '{folder}' names no model_type.")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = (f"It has pickle weights ({', '.join(pickles)}), which llmlab does not load: convert "
                "them to safetensors where you trust them." if pickles else None)
        raise ConfigError(f"'{folder}' has no *.safetensors weights.", hint)
    for w in weights:
        safetensors.read_header(w)
    return config
