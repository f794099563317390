"""safetensors headers: validated against the file's size, read without touching the weights."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from llmlab.errors import StoreError

MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensors of a safetensors file (name -> dtype, shape, data_offsets), ``__metadata__`` left
    out; raises a StoreError naming the file when the header does not match the file's size."""
    size = path.stat().st_size
    bad = f"'{path}' is not a valid safetensors file"
    if size < 8:
        raise StoreError(f"{bad}: it is only {size} bytes.", "Copy or download it again.")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_HEADER, size - 8):
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
    return tensors


def shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape in a folder's ``*.safetensors`` files (PyTorch order: a Linear weight is
    [out_features, in_features])."""
    out: dict[str, list[int]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: v["shape"] for k, v in read_header(f).items()})
    return out


def params(path: Path) -> int:
    """Number of values stored in a safetensors file, or in every ``*.safetensors`` file of a folder."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    return sum(math.prod(v["shape"]) for f in files for v in read_header(f).values())
