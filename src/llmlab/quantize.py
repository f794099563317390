"""The Quantize station: GGUF variants of a model, an importance matrix, and a quality table.

```python
from llmlab.quantize import QuantizeConfig, quantize, quality_table
summary = quantize(QuantizeConfig(model="demo", types=["q8_0", "q4_k_m"], imatrix="world"), store=store)
rows = quality_table(summary["variants"], store)
```

``quantize`` converts the source (a ``base``, ``full``, ``merged`` or ``distilled`` artifact) once to
an f16 GGUF artifact (``<prefix>-f16``), optionally computes an importance matrix from calibration
text (``<prefix>-imatrix``), then writes one ``gguf`` artifact per type (``<prefix>-q4_k_m``...)
whose parents are the source, the f16 file (the ``reference``) and the imatrix. Everything that
can be checked is checked before the first artifact is written: type names, which types the
model's row widths allow, imatrix-only types, the calibration text, memory and disk space.

The quality table scores every variant with the scoring core on the same held-out text (the
world's ``eval_text``, which no calibration set contains): perplexity, KL divergence and top-1
agreement against the reference named in the row (the f16 GGUF, as llama.cpp measures it),
world-question accuracy, size, bits per weight and speed; each row also goes to the variant's
``metrics.json``. Nothing heavy is imported until a function runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from llmlab import data as datamod
from llmlab.errors import ConfigError, ResourceError, StoreError
from llmlab.events import Reporter, emit
from llmlab.gguf import QUANT_TYPES

if TYPE_CHECKING:
    from llmlab.store import Artifact, StepRecord, Store

SOURCE_KINDS = ("base", "full", "merged", "distilled")
MB = 1024 * 1024

# Type -> (about how many bits per weight, what it is and when to use it): what the app shows.
TYPE_INFO: dict[str, tuple[float, str]] = {
    "Q8_0": (8.5, "8-bit blocks of 32: practically lossless; the safe choice when memory allows."),
    "Q6_K": (6.6, "6-bit K-quant: indistinguishable from f16 for most uses, a quarter smaller than Q8_0."),
    "Q5_K_M": (5.7, "5-bit K-quant with sensitive tensors at 6 bits: near-lossless, a good default for quality."),
    "Q5_K_S": (5.5, "5-bit K-quant throughout: a little smaller and worse than Q5_K_M."),
    "Q5_1": (6.0, "Legacy 5-bit with offsets: superseded by Q5_K_M."),
    "Q5_0": (5.5, "Legacy 5-bit blocks of 32: for rows not divisible by 256 where K-quants do not apply."),
    "Q4_K_M": (4.9, "4-bit K-quant with sensitive tensors at 6 bits: the usual best size/quality trade-off."),
    "Q4_K_S": (4.6, "4-bit K-quant throughout: smaller than Q4_K_M, slightly worse."),
    "Q4_1": (5.0, "Legacy 4-bit with offsets: superseded by Q4_K_S."),
    "Q4_0": (4.5, "Legacy 4-bit blocks of 32: fast on CPUs with repacked kernels; for rows of 32s."),
    "IQ4_NL": (4.5, "4-bit non-linear grid, blocks of 32: better than Q4_0 at the same size."),
    "IQ4_XS": (4.3, "4-bit non-linear grid, blocks of 256: Q4_K_S quality a bit smaller."),
    "Q3_K_L": (4.3, "3-bit K-quant with many tensors at 5 bits: the best of the 3-bit mixes."),
    "Q3_K_M": (3.9, "3-bit K-quant mix: noticeable loss; when 4-bit does not fit."),
    "Q3_K_S": (3.5, "3-bit K-quant throughout: large loss; for tight memory."),
    "IQ3_M": (3.7, "3-bit lattice mix (needs an imatrix): better than Q3_K_M at a similar size."),
    "IQ3_S": (3.5, "3-bit lattice (needs an imatrix)."),
    "IQ3_XS": (3.3, "3-bit lattice, smaller (needs an imatrix)."),
    "IQ3_XXS": (3.1, "3-bit lattice, smallest (needs an imatrix): the lowest usable 3-bit."),
    "Q2_K": (3.0, "2-bit K-quant mix: heavy loss; for big models that must fit."),
    "Q2_K_S": (2.8, "2-bit K-quant throughout (needs an imatrix)."),
    "IQ2_M": (2.7, "2-bit lattice mix (needs an imatrix): the best 2-bit."),
    "IQ2_S": (2.5, "2-bit lattice (needs an imatrix)."),
    "IQ2_XS": (2.3, "2-bit lattice, smaller (needs an imatrix)."),
    "IQ2_XXS": (2.1, "2-bit lattice, smallest (needs an imatrix): only for very large models."),
    "IQ1_M": (1.8, "1.75-bit (needs an imatrix): experiments with huge models only."),
    "IQ1_S": (1.6, "1.5-bit (needs an imatrix): experiments with huge models only."),
    "TQ2_0": (2.1, "Ternary 2-bit: for models trained ternary (BitNet); ruins ordinary models."),
    "TQ1_0": (1.7, "Ternary 1.7-bit: for models trained ternary (BitNet); ruins ordinary models."),
}
DEFAULT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k")


def resolve_types(types: list[str]) -> list[str]:
    """Canonical (upper-case, de-duplicated, ordered) type names; unknown names raise ConfigError."""
    if not types:
        raise ConfigError("No quant types given.", f"Pick from: {', '.join(QUANT_TYPES)}.")
    out: list[str] = []
    for t in types:
        name = str(t).strip().upper()
        if name not in QUANT_TYPES:
            raise ConfigError(f"Unknown quant type '{t}'.", f"Valid types: {', '.join(QUANT_TYPES)}.")
        if name not in out:
            out.append(name)
    return out


class QuantizeConfig(BaseModel):
    """Options of the Quantize station (``llmlab quantize``, a recipe's ``quantize`` step, the app page)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="Artifact to quantize (kind base, full, merged or distilled).")
    types: list[str] = Field(list(DEFAULT_TYPES), description="GGUF quant types, case-insensitive (q8_0, "
                             "q4_k_m, iq4_xs...); the IQ1/IQ2/IQ3 types and Q2_K_S need an imatrix.")
    name_prefix: str | None = Field(None, description="Outputs are named <prefix>-f16, <prefix>-imatrix and "
                                    "<prefix>-<type> (e.g. demo-q4_k_m); default: the model's name.")
    imatrix: str | None = Field(None, description="Calibration text for an importance matrix: 'world' (the demo "
                                "world's training texts, disjoint from the eval text), a .txt/.jsonl file, or "
                                "none.")
    imatrix_chunks: int = Field(64, ge=1, description="Most calibration chunks (of up to 512 tokens) to run.")
    reference: str = Field("f16", description="What KL divergence and top-1 compare with: 'f16' (the f16 GGUF "
                           "this step writes, as llama.cpp does) or an artifact name.")
    score: bool = Field(True, description="Compute the quality table (perplexity, KL, top-1, accuracy, size, "
                        "speed) and store each row in the variant's metrics.")
    eval_data: str = Field("world", description="Held-out texts for the table: 'world' (the world's eval text) "
                           "or a data file.")
    qa: str | None = Field("heldout", description="Questions for accuracy: a world split (heldout...), a .jsonl "
                           "file of {question, answer}, or none.")
    qa_limit: int = Field(200, ge=1, description="Most questions asked per variant.")

    @field_validator("eval_data")
    @classmethod
    def _some_eval_text(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("score", True) and v.strip().lower() in ("", "none", "off"):
            raise ValueError("the quality table needs held-out text: use 'world', a data file, or score: false")
        return v

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        try:
            return [t.lower() for t in resolve_types(v)]
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @property
    def prefix(self) -> str:
        return self.name_prefix or self.model

    def variant_name(self, type_name: str) -> str:
        return f"{self.prefix}-{type_name.lower()}"

    @property
    def outputs(self) -> list[str]:
        """Every artifact this config writes, in order (a recipe skips the step when all are current)."""
        names = [f"{self.prefix}-f16"] + ([f"{self.prefix}-imatrix"] if self.imatrix not in (None, "none") else [])
        return names + [self.variant_name(t) for t in self.types]


# ----- checks before any work -----
def _hf_tensors(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape from the folder's safetensors headers (validated first)."""
    from llmlab.importing import check_hf_folder

    check_hf_folder(folder)
    shapes: dict[str, list[int]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def check_shapes(shapes: dict[str, list[int]], types: list[str]) -> None:
    """Raise ConfigError when a type's blocks do not divide a weight matrix's rows, naming it."""
    matrices = {n: s for n, s in shapes.items() if len(s) >= 2}
    for t in resolve_types(types):
        block = QUANT_TYPES[t]
        bad = [(n, s[-1]) for n, s in matrices.items() if s[-1] % block]
        if bad:
            name, width = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ConfigError(
                f"{t} cannot quantize this model: it packs rows in blocks of {block} values, but '{name}' has "
                f"rows of {width}{more}, which is not a multiple of {block}.",
                "Pick a type with blocks of 32 (Q8_0, Q5_0, Q4_0, IQ4_NL) or a model whose widths are "
                "multiples of 256.")


def _check_resources(n_params: int, types: list[str], store_root: Path, *, available: int | None = None) -> None:
    """Refuse with numbers when the f16 model will not fit in memory or the outputs on disk."""
    from llmlab.runtime import check_memory

    f16 = n_params * 2
    # llama.cpp maps the f16 file and holds one tensor in f32 plus its quantized copy at a time
    check_memory(f16 + 300 * MB, f"the f16 model ({n_params / 1e6:,.0f} M parameters) to quantize it",
                 available=available)
    need = f16 + sum(int(n_params * TYPE_INFO.get(t, (8.5, ""))[0] / 8) for t in types)
    free = shutil.disk_usage(store_root).free
    if need > free:
        raise ResourceError(f"The f16 file and {len(types)} variants need about {need / MB:,.0f} MB of disk but "
                            f"only {free / MB:,.0f} MB is free under {store_root}.",
                            "Free space, or quantize fewer types at a time.")


def calibration_texts(source: str, store: Store, artifact: Artifact) -> list[str]:
    """Calibration texts: 'world' (the training texts of the artifact's world) or a data file."""
    texts = [t for t in datamod.resolve_texts(source, store=store, artifact=artifact, part="train") or [] if t.strip()]
    if not texts:
        raise ConfigError(f"The calibration set '{source}' is empty: an importance matrix needs text to run "
                          "the model on.", "Give a file with some text (a few thousand tokens at least).")
    return texts


# ----- the step -----
def gguf_bpw(path: Path) -> float:
    """Bits per weight of a GGUF file's tensor data (all tensors, as llama.cpp reports it)."""
    from gguf import GGUFReader

    tensors = GGUFReader(path, "r").tensors
    return 8 * sum(int(t.n_bytes) for t in tensors) / max(1, sum(int(t.n_elements) for t in tensors))


def _gguf_info(path: Path, type_name: str) -> dict[str, Any]:
    from llmlab.gguf import read_header

    h = read_header(path)
    return {"type": type_name, "bpw": round(gguf_bpw(path), 3), "size_bytes": h["size_bytes"],
            "n_params": h["n_params"], "arch": h["arch"], "tensor_types": h["tensor_types"],
            "chat_template": h["chat_template"] is not None}


def quantize(config: QuantizeConfig, *, store: Store | None = None, progress: Reporter | None = None,
             overwrite: bool = False, step: StepRecord | None = None) -> dict[str, Any]:
    """Write the f16 GGUF, the imatrix (if asked) and one GGUF artifact per type (see module doc).

    Returns ``{"source", "f16", "imatrix", "variants", "table"}`` (``table`` is empty unless ``score``)."""
    from llmlab import gguf
    from llmlab.store import Parent, Store

    store = store or Store()
    source = store.get(config.model)
    if source.kind not in SOURCE_KINDS:
        raise ConfigError(f"'{source.name}' is a {source.kind} artifact; the Quantize station takes "
                          f"{', '.join(SOURCE_KINDS)} models.",
                          "Quantize the model it came from (adapters: merge them first).")
    types = resolve_types(config.types)
    needs = [t for t in types if t in gguf.IMATRIX_TYPES]
    if needs and config.imatrix in (None, "", "none"):
        raise ConfigError(f"{', '.join(needs)} need an importance matrix: at 1-3 bits per weight, rounding "
                          "without knowing which weights matter most ruins the model (llama.cpp refuses).",
                          "Set imatrix: world (or a calibration text file), or drop those types.")
    shapes = _hf_tensors(source.path)
    check_shapes(shapes, types)
    n_params = sum(math.prod(s) for s in shapes.values())
    _check_resources(n_params, types, store.root)
    calib = calibration_texts(config.imatrix, store, source) if config.imatrix not in (None, "", "none") else None
    for name in [config.variant_name("f16"), *(config.variant_name(t) for t in types)]:
        if store.exists(name) and not overwrite:
            raise StoreError(f"An artifact named '{name}' already exists.",
                             "Choose another name_prefix, remove it, or pass --force / overwrite=True.")
    src_parent = Parent(name=source.name, content_hash=source.content_hash, role="source")

    f16_name = config.variant_name("f16")
    emit(progress, "log", message=f"converting {source.name} to GGUF f16")
    with store.write(f16_name, "gguf", overwrite=overwrite) as w:
        gguf.convert(source.path, w.path / f"{f16_name}.gguf", "f16", progress)  # verifies the tokenizer
        w.parents, w.step = [src_parent], step
        w.info = {**_gguf_info(w.path / f"{f16_name}.gguf", "F16"), "source": source.name}
    f16 = store.get(f16_name)
    f16_file = f16.file(".gguf")
    parents = [src_parent, Parent(name=f16.name, content_hash=f16.content_hash, role="reference")]

    imatrix_name = None
    if calib is not None:
        imatrix_name = f"{config.prefix}-imatrix"
        emit(progress, "log", message=f"computing the importance matrix on {len(calib)} calibration texts")
        with store.write(imatrix_name, "imatrix", overwrite=overwrite) as w:
            facts = gguf.compute_imatrix(f16_file, calib, w.path / "imatrix.gguf", max_chunks=config.imatrix_chunks,
                                         dataset=config.imatrix or "", progress=progress)
            w.parents = [Parent(name=f16.name, content_hash=f16.content_hash, role="model")]
            w.step = step
            w.info = {**facts, "calibration": config.imatrix, "texts": len(calib)}
        im = store.get(imatrix_name)
        parents.append(Parent(name=im.name, content_hash=im.content_hash, role="imatrix"))

    variants = []
    for i, t in enumerate(types):
        name = config.variant_name(t)
        emit(progress, "progress", task="quantize", done=i, total=len(types))
        with store.write(name, "gguf", overwrite=overwrite) as w:
            out = w.path / f"{name}.gguf"
            gguf.quantize(f16_file, out, t, imatrix=store.get(imatrix_name).file("imatrix.gguf")
                          if imatrix_name else None, progress=progress)
            gguf.verify_tokenizer(source.path, out)
            w.parents, w.step = list(parents), step
            w.info = {**_gguf_info(out, t), "source": source.name, "reference": f16.name, "imatrix": imatrix_name}
        variants.append(name)
    emit(progress, "progress", task="quantize", done=len(types), total=len(types))

    table: list[dict[str, Any]] = []
    if config.score:
        texts = datamod.resolve_texts(config.eval_data, store=store, artifact=source)
        qa = datamod.resolve_questions(config.qa, store=store, artifact=source, limit=config.qa_limit)
        reference = None if config.reference == "f16" else config.reference
        # [] (not None) when the config says none: quality_table reads None as "the world's defaults".
        table = quality_table([source.name, f16.name, *variants], store, texts=texts, qa=qa or [],
                              reference=reference, progress=progress)
    return {"source": source.name, "f16": f16.name, "imatrix": imatrix_name, "variants": variants, "table": table}


# ----- the quality table -----
def _reference_of(artifact: Artifact) -> str | None:
    """The parent a variant is compared with: role 'reference' (the f16 GGUF), else 'source'."""
    by_role = {p.role: p.name for p in artifact.manifest.parents}
    return by_role.get("reference") or by_role.get("source")


def quality_table(names: list[str], store: Store, *, texts: list[str] | None = None,
                  qa: list[dict[str, Any]] | None = None, reference: str | None = None, speed: bool = True,
                  progress: Reporter | None = None) -> list[dict[str, Any]]:
    """Score each artifact in ``names`` on the same ``texts`` (default: the world's eval text) and
    ``qa`` (default: the heldout questions) against its reference (``reference``, else its parent
    with role 'reference' or 'source'; none for a model without one). One row per name, also
    merged into the artifact's ``metrics.json``."""
    from llmlab.runtime import load
    from llmlab.scoring import score

    if not names:
        return []
    first = store.get(names[0])
    texts = texts if texts is not None else datamod.resolve_texts("world", store=store, artifact=first)
    qa = qa if qa is not None else datamod.resolve_questions("heldout", store=store, artifact=first, limit=200)
    rows = []
    with contextlib.ExitStack() as stack:
        refs: dict[str, Any] = {}
        for i, name in enumerate(names):
            art = store.get(name)
            ref_name = reference or _reference_of(art)
            if ref_name == name:
                ref_name = None
            if ref_name and ref_name not in refs:
                refs[ref_name] = stack.enter_context(load(ref_name, store=store))
            emit(progress, "log", message=f"scoring {name}" + (f" against {ref_name}" if ref_name else ""))
            m = score(art, store=store, data=texts, qa=qa, reference=refs.get(ref_name), data_label="eval",
                      speed_test=speed)
            info = art.manifest.info
            bpw = info.get("bpw")
            if bpw is None and art.kind in SOURCE_KINDS:
                bpw = 8 * m["size_bytes"] / max(1, m["n_params"])
            row = {"name": name, "kind": art.kind, "type": info.get("type") or art.kind,
                   "reference": ref_name, "size_bytes": m["size_bytes"], "bpw": round(float(bpw or 0), 3),
                   "ppl": m.get("ppl"), "kld_mean": m.get("kld_mean"), "kld_p99": m.get("kld_p99"),
                   "top1": m.get("top1"), "accuracy": m.get("accuracy"), "gen_tok_s": m.get("gen_tok_s"),
                   "prompt_tok_s": m.get("prompt_tok_s"), "peak_rss_mb": m.get("peak_rss_mb")}
            store.record_metrics(name, {"quant_type": row["type"], "bpw": row["bpw"], "kld_reference": ref_name})
            rows.append(row)
            emit(progress, "progress", task="quality", done=i + 1, total=len(names))
    return rows
