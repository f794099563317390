"""Which tensors llama.cpp stores in another type because their rows do not divide into blocks.

K-quants and most IQ types pack a row in blocks of 256 values. When a weight's row length (its
input width: 576 in SmolLM2-135M, 896 in Qwen2.5-0.5B) is not a multiple of 256, llama.cpp's
quantizer does not refuse: it stores that tensor in a type with blocks of 32 instead (Q4_K ->
Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/TQ* -> Q4_0, IQ1/IQ2/IQ3/IQ4_XS -> IQ4_NL; an output
matrix goes to Q8_0). Only a row length that is not even a multiple of 32 defeats every type: llama.cpp
then leaves the tensor unquantized at F16, so llmlab refuses it before any work (``check_rows``).

``fallback_counts`` reads a written file's tensors back and counts, per stored type, the matrices
whose rows the requested type's blocks do not divide: what the quantizer fell back to.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmlab.errors import ConfigError

MIN_BLOCK = 32  # the smallest block of any quant type
# Requested type -> the type most of its undivided tensors end up in (the mixes' Q6_K tensors
# go to Q8_0 and their Q5_K ones to Q5_1 on top).
FALLBACK: dict[str, str] = {
    "Q6_K": "Q8_0", "Q5_K_M": "Q5_1", "Q5_K_S": "Q5_1", "Q4_K_M": "Q5_0", "Q4_K_S": "Q5_0",
    "Q3_K_L": "Q4_0", "Q3_K_M": "Q4_0", "Q3_K_S": "Q4_0", "Q2_K": "Q4_0", "Q2_K_S": "Q4_0",
    "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "IQ4_XS": "IQ4_NL", "IQ3_M": "IQ4_NL", "IQ3_S": "IQ4_NL",
    "IQ3_XS": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ2_M": "IQ4_NL", "IQ2_S": "IQ4_NL", "IQ2_XS": "IQ4_NL",
    "IQ2_XXS": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ1_S": "IQ4_NL",
}


def block_of(type_name: str) -> int:
    """Values per block along a row for a requested quant type: 256, or 32 for Q8_0/Q5_0/Q4_0/IQ4_NL..."""
    return 256 if type_name.upper() in FALLBACK else MIN_BLOCK


def undivided(rows: Iterable[tuple[str, int]], block: int) -> list[tuple[str, int]]:
    """The (tensor, row length) pairs whose row length ``block`` does not divide."""
    return [(n, w) for n, w in rows if w % block]


def check_rows(rows: Iterable[tuple[str, int]], type_name: str) -> None:
    """Raise ConfigError, naming the tensor, when a matrix's rows (``(name, row length)`` pairs) are
    not a multiple of 32: no quant type fits them and llama.cpp would leave them at F16."""
    bad = undivided(rows, MIN_BLOCK)
    if bad:
        (name, width), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(
            f"{type_name.upper()} cannot quantize this model: '{name}' has rows of {width}{more}, which is not a "
            f"multiple of {MIN_BLOCK}, the smallest block any quant type packs (llama.cpp would leave it at F16).",
            "Keep the f16 GGUF, or use a model whose widths are multiples of 32.")


def fallback_note(rows: Iterable[tuple[str, int]], type_name: str) -> str | None:
    """What the app says of a type some of whose tensors fall back (None when none do)."""
    name = type_name.upper()
    bad = undivided(rows, block_of(name))
    if not bad:
        return None
    target = FALLBACK.get(name, "a type with blocks of 32")
    widths = sorted({w for _, w in bad})
    return (f"{len(bad)} tensors (rows of {', '.join(map(str, widths))}, not a multiple of 256) fall back to "
            f"{target}, as llama.cpp does: the file is a little larger than pure {name}.")


def fallback_counts(tensors: Iterable[dict], type_name: str) -> dict[str, int]:
    """Per stored type, how many matrices (``{"name", "type", "shape"}`` in GGUF order, row length
    first) the blocks of ``type_name`` do not divide: the tensors llama.cpp stored in another type.
    Empty for a type with blocks of 32 (or a model whose rows all divide)."""
    block = block_of(type_name)
    counts: dict[str, int] = {}
    for t in tensors:
        if len(t["shape"]) >= 2 and t["shape"][0] % block and t["type"] != type_name.upper():
            counts[t["type"]] = counts.get(t["type"], 0) + 1
    return dict(sorted(counts.items()))
