"""``llmlab models add``: bring a user's own model into the store.

Accepted: a local Hugging Face model folder with safetensors weights, or a single ``.gguf`` file.
Everything is checked before anything is copied: the config parses and names an architecture,
no custom code is needed (``auto_map``: llmlab never sets ``trust_remote_code``), no pickle
weights are loaded, every safetensors header is complete and its data fits the file size, and a
GGUF file's header and tensor table are readable and within the file.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from llmlab.errors import ConfigError, NotFoundError, StoreError
from llmlab.store import Artifact, Store, validate_name

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Files a model folder may carry into the store; code (.py) and pickles never come along.
COPY_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".md", ".tiktoken")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def check_safetensors(path: Path) -> int:
    """Validate a safetensors file's header against its size; return the number of tensors."""
    size = path.stat().st_size
    bad = f"'{path}' is not a valid safetensors file"
    if size < 8:
        raise StoreError(f"{bad}: it is only {size} bytes.", "Copy or download it again.")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise StoreError(f"{bad}: its header claims {n} bytes but the file has {size}.",
                             "The file is truncated or corrupt: copy or download it again.")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{bad}: its header is not JSON.", "The file is corrupt.") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + n + end != size:
        raise StoreError(
            f"{bad}: its tensors need {8 + n + end} bytes but the file has {size}.",
            "The file is truncated or corrupt: copy or download it again.",
        )
    return len(tensors)


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
        check_safetensors(w)
    return config


def import_into_store(store: Store, source: Path, name: str | None, kind: str | None) -> Artifact:
    source = source.expanduser()
    if not source.exists():
        raise NotFoundError(f"'{source}' does not exist.", "Give the path of a model folder or a .gguf file.")
    name = validate_name(name or (source.stem if source.is_file() else source.name))
    if source.is_file():
        if source.suffix != ".gguf":
            raise ConfigError(f"'{source.name}' is neither a model folder nor a .gguf file.")
        from llmlab.gguf import read_header

        header = read_header(source)
        kind = kind or ("gguf-adapter" if header.get("type") == "adapter" else "gguf")
        with store.write(name, kind) as w:
            shutil.copy2(source, w.path / source.name)
            w.info = {"source": str(source), **{k: v for k, v in header.items() if k != "metadata"}}
        return store.get(name)

    config = check_hf_folder(source)
    with store.write(name, kind or "base") as w:
        for p in sorted(source.iterdir()):
            if p.is_file() and p.suffix in COPY_SUFFIXES:
                shutil.copy2(p, w.path / p.name)
        w.info = {
            "source": str(source),
            "architecture": (config.get("architectures") or [config["model_type"]])[0],
            "model_type": config["model_type"],
        }
    return store.get(name)
