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
        from gguf import LlamaFileType
    except ImportError:
        raise MissingExtraError("Reading GGUF files", "lab", "gguf") from None
    from llmlab.formats.gguf_header import ArrayLength, parse

    try:
        parsed = parse(path, keep=ARRAY_PREVIEW)
    except Exception as e:  # a cut or damaged file fails in many ways
        raise CorruptFileError(f"'{path}' is truncated or corrupt: its GGUF header cannot be read ({e}).",
                               "Convert or copy the file again.") from None
    for t in parsed.tensors:
        end = t.data_offset + t.n_bytes
        if end > size:
            raise CorruptFileError(f"'{path}' is truncated: tensor '{t.name}' ends at byte {end:,} but the "
                                   f"file has {size:,}.", "Convert or copy the file again.")
    meta: dict[str, Any] = {k: f"<array of {v.n}>" if isinstance(v, ArrayLength) else v
                            for k, v in parsed.fields.items()}
    arch = meta.get("general.architecture", "")
    ftype = meta.get("general.file_type")
    try:
        file_type = None if ftype is None else LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        file_type = str(ftype)
    tensor_types: dict[str, int] = {}
    for t in parsed.tensors:
        tensor_types[t.type_name] = tensor_types.get(t.type_name, 0) + 1
    return {
        "path": str(path), "size_bytes": size, "arch": arch, "name": meta.get("general.name"),
        "type": meta.get("general.type", "model"), "file_type": file_type,
        "tensor_count": len(parsed.tensors), "n_params": sum(t.n_elements for t in parsed.tensors),
        "context_length": meta.get(f"{arch}.context_length"), "chat_template": meta.get("tokenizer.chat_template"),
        "tensor_types": tensor_types, "metadata": meta,
    }


def tensor_shapes(path: str | Path) -> dict[str, list[int]]:
    """Each tensor's shape in GGUF order (first entry = row length, ``ne0``)."""
    from llmlab.formats.gguf_header import parse

    read_header(path)
    return {t.name: list(t.shape) for t in parse(path).tensors}


def tensor_list(path: str | Path) -> list[dict[str, Any]]:
    """Each tensor's ``name``, stored ``type`` (``Q4_K``, ``Q5_0``, ``F32``...) and ``shape`` in GGUF
    order (first entry = row length): which tensors a quantizer stored in which type."""
    from llmlab.formats.gguf_header import parse

    read_header(path)
    return [{"name": t.name, "type": t.type_name, "shape": list(t.shape)} for t in parse(path).tensors]
