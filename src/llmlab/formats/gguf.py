"""GGUF headers: architecture, tensors, metadata and chat template, read without loading the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmlab.errors import CorruptFileError, MissingExtraError, NotFoundError

ARRAY_PREVIEW = 16  # metadata arrays longer than this (vocab, merges) are summarized, not returned


def read_header(path: str | Path) -> dict[str, Any]:
    """Architecture, tensor count, parameters, file type, chat template and metadata of a GGUF file.

    Raises CorruptFileError naming the file when it is not a GGUF file, its header cannot be
    parsed, or its tensors extend past the end of the file (a truncated copy)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"'{path}' does not exist.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CorruptFileError(f"'{path}' is not a GGUF file (it does not start with 'GGUF').",
                               "Give a .gguf model file.")
    try:
        from gguf import GGUFReader, GGUFValueType, LlamaFileType
    except ImportError:
        raise MissingExtraError("Reading GGUF files", "lab", "gguf") from None
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # the reader fails in many ways on a cut or damaged file
        raise CorruptFileError(f"'{path}' is truncated or corrupt: its GGUF header cannot be read ({e}).",
                               "Convert or copy the file again.") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise CorruptFileError(f"'{path}' is truncated: tensor '{t.name}' ends at byte {end:,} but the "
                                   f"file has {size:,}.", "Convert or copy the file again.")
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            n = len(field.data)
            meta[key] = field.contents() if n <= ARRAY_PREVIEW else f"<array of {n}>"
        else:
            meta[key] = field.contents()
    arch = meta.get("general.architecture", "")
    ftype = meta.get("general.file_type")
    try:
        file_type = None if ftype is None else LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        file_type = str(ftype)
    tensor_types: dict[str, int] = {}
    for t in reader.tensors:
        tensor_types[t.tensor_type.name] = tensor_types.get(t.tensor_type.name, 0) + 1
    return {
        "path": str(path), "size_bytes": size, "arch": arch, "name": meta.get("general.name"),
        "type": meta.get("general.type", "model"), "file_type": file_type,
        "tensor_count": len(reader.tensors), "n_params": int(sum(int(t.n_elements) for t in reader.tensors)),
        "context_length": meta.get(f"{arch}.context_length"), "chat_template": meta.get("tokenizer.chat_template"),
        "tensor_types": tensor_types, "metadata": meta,
    }


def tensor_shapes(path: str | Path) -> dict[str, list[int]]:
    """Each tensor's shape in GGUF order (first entry = row length, ``ne0``)."""
    from gguf import GGUFReader

    read_header(path)
    return {t.name: [int(x) for x in t.shape] for t in GGUFReader(Path(path), "r").tensors}


def tensor_list(path: str | Path) -> list[dict[str, Any]]:
    """Each tensor's ``name``, stored ``type`` (``Q4_K``, ``Q5_0``, ``F32``...) and ``shape`` in GGUF
    order (first entry = row length): which tensors a quantizer stored in which type."""
    from gguf import GGUFReader

    read_header(path)
    return [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape]}
            for t in GGUFReader(Path(path), "r").tensors]
