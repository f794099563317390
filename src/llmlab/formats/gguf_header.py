"""A fast reader of a GGUF file's header: its metadata and tensor table, without the tensor data.

``gguf.GGUFReader`` builds numpy views for every element of every metadata array, which takes
seconds for a real vocabulary (49,152 tokens and as many merges: ~4 s on a busy core, paid again on
every read). This reader walks the same bytes with ``struct``, keeps arrays longer than ``keep``
elements as their length only, and reads each tensor's name, shape, type and offset.

```python
h = parse(path)          # ParsedHeader(fields={"general.architecture": "llama", ...}, tensors=[...])
h.tensors[0].n_bytes     # stored bytes of the first tensor
```

Raises ``ValueError`` on anything that is not a well-formed GGUF header (the caller names the file).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GGUF metadata value types -> struct format (8: string, 9: array are read separately).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 8


@dataclass(frozen=True)
class ArrayLength:
    """A metadata array longer than the reader keeps: only its element count."""

    n: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int]  # GGUF order: the first entry is the row length (ne0)
    type_id: int  # ggml type number
    type_name: str  # "F16", "Q4_K", ...
    data_offset: int  # absolute position in the file
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class ParsedHeader:
    version: int
    fields: dict[str, Any]
    tensors: list[TensorInfo]


class _Cursor:
    def __init__(self, buf: Any):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"the header ends early (at byte {self.pos:,})")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"the header ends early (at byte {self.pos:,})")
        self.pos += n

    def string(self) -> str:
        n = self.take("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: int) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata value type {vtype}")
        etype, n = self.take("<I"), self.take("<Q")
        if n <= keep:
            return [self.value(etype, keep) for _ in range(n)]
        if etype in _SCALARS:
            self.skip(n * struct.calcsize(_SCALARS[etype]))
        elif etype == _STRING:
            for _ in range(n):
                self.skip(self.take("<Q"))
        else:
            for _ in range(n):
                self.value(etype, 0)
        return ArrayLength(n)


def _type_sizes(type_id: int) -> tuple[str, int, int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    t = GGMLQuantizationType(type_id)
    block, size = GGML_QUANT_SIZES[t]
    return t.name, block, size


def parse(path: str | Path, keep: int = 16) -> ParsedHeader:
    """The metadata (arrays longer than ``keep`` as ``ArrayLength``) and tensor table of a GGUF file."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError("it does not start with 'GGUF'")
        cur.skip(4)
        version = cur.take("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            fields[key] = cur.value(cur.take("<I"), keep)
        raw = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.take("<I")
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor '{name}' has {n_dims} dimensions")
            shape = [cur.take("<Q") for _ in range(n_dims)]
            raw.append((name, shape, cur.take("<I"), cur.take("<Q")))
        align = int(fields.get("general.alignment", 32) or 32)
        start = cur.pos + (-cur.pos % align)
    tensors = []
    for name, shape, type_id, offset in raw:
        type_name, block, size = _type_sizes(type_id)
        n = math.prod(shape)
        tensors.append(TensorInfo(name, shape, type_id, type_name, start + offset, n, n // block * size))
    return ParsedHeader(version, fields, tensors)
