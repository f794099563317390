"""Every type in ``QUANT_TYPES`` is produced once, on the micro model, and the file works.

The micro model's widths (hidden 256, FFN 768, vocab 512) are all multiples of 256, so no tensor
falls back to a 32-block type: each file shows the type's own kernel. For every type the test
checks that the header's file type is the one asked for, that the type's own tensor kernel is the
most common stored type among the layer's weight matrices (llama.cpp's mixes keep a few tensors at
more bits), that nothing fell back, and that llama.cpp loads the file, gives finite log
probabilities and generates. The types in ``IMATRIX_TYPES`` get an importance matrix computed here
on the world's texts. The IQ1/IQ2/IQ3 lattice tables are built by llama.cpp on first use (~10 s in
all, once per process); every other type takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmlab.quantize import gguf

# Requested type -> the tensor type llama.cpp's quantizer stores most of a layer's matrices in
# (its "default type" for that file type: IQ2_S files are mostly IQ2_XS tensors, IQ2_M files mostly
# IQ2_S, the IQ3_XS/IQ3_M mixes mostly IQ3_S).
KERNEL: dict[str, str] = {
    "Q8_0": "Q8_0", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "IQ4_NL": "IQ4_NL",
    "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K", "IQ4_XS": "IQ4_XS",
    "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "Q2_K_S": "Q2_K", "IQ3_M": "IQ3_S", "IQ3_S": "IQ3_S",
    "IQ3_XS": "IQ3_S", "IQ3_XXS": "IQ3_XXS", "IQ2_M": "IQ2_S", "IQ2_S": "IQ2_XS", "IQ2_XS": "IQ2_XS",
    "IQ2_XXS": "IQ2_XXS", "IQ1_M": "IQ1_M", "IQ1_S": "IQ1_S",
}


def test_every_type_is_covered_here():
    assert set(KERNEL) == set(gguf.QUANT_TYPES)


@pytest.fixture(scope="module")
def sources(micro_model_dir: Path, micro_gguf, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the micro model's f16 GGUF, an importance matrix computed on its world's texts)."""
    f16 = micro_gguf("f16")
    texts = [json.loads(line)["text"] for line in (micro_model_dir / "world" / "texts.jsonl").open()]
    imatrix = tmp_path_factory.mktemp("every-type") / "imatrix.gguf"
    info = gguf.compute_imatrix(f16, texts, imatrix, max_chunks=8)
    assert info["entries"] == 7  # q, k, v, output, gate, up, down of the one layer
    return f16, imatrix


@pytest.mark.parametrize("qtype", list(gguf.QUANT_TYPES))
def test_type_is_produced_and_generates(qtype: str, sources: tuple[Path, Path], tmp_path: Path):
    from llmlab.formats.gguf import read_header, tensor_list
    from llmlab.quantize.fallback import fallback_counts
    from llmlab.runtime import load
    from llmlab.runtime.base import SamplingParams

    f16, imatrix = sources
    out = gguf.quantize(f16, tmp_path / f"micro-{qtype}.gguf", qtype.lower(),
                        imatrix=imatrix if qtype in gguf.IMATRIX_TYPES else None)
    header = read_header(out)
    assert header["file_type"] == qtype
    assert header["size_bytes"] < f16.stat().st_size
    tensors = tensor_list(out)
    assert fallback_counts(tensors, qtype) == {}  # every row divides: the type's own blocks everywhere
    counts: dict[str, int] = {}
    for t in tensors:
        if t["name"].startswith("blk.") and len(t["shape"]) >= 2:
            counts[t["type"]] = counts.get(t["type"], 0) + 1
    assert sum(counts.values()) == 7
    assert counts.get(KERNEL[qtype], 0) == max(counts.values()), counts

    model = load(out, n_ctx=64)
    try:
        ids = model.tokenize("Bodo Trastel lives in", add_special=True)
        assert np.isfinite(model.logprobs(ids)).all()
        generated = list(model.generate_ids(ids, SamplingParams.greedy(4), ignore_eos=True))
        assert len(generated) == 4 and all(0 <= t < model.vocab_size for t in generated)
    finally:
        model.close()
