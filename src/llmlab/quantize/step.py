"""The Quantize station: GGUF variants, GPTQ/AWQ/RTN variants, an importance matrix, a quality table.

```python
from llmlab.quantize.step import QuantizeConfig, quantize, quality_table
summary = quantize(QuantizeConfig(model="demo", types=["q8_0", "q4_k_m"], imatrix="world"), store=store)
rows = quality_table(summary["variants"], store)
quantize(QuantizeConfig(model="demo", types=["gptq", "rtn"], bits=4, group_size=128), store=store)
```

``quantize`` converts the source (a ``base``, ``full``, ``merged`` or ``distilled`` artifact) once to
an f16 GGUF artifact (``<prefix>-f16``), optionally computes an importance matrix from calibration
text (``<prefix>-imatrix``), then writes one ``gguf`` artifact per type (``<prefix>-q4_k_m``...)
whose parents are the source, the f16 file (the ``reference``) and the imatrix. The types
``gptq``, ``awq`` and ``rtn`` go through GPTQModel (``llmlab.quantize.gptq``) straight from the source, at
``bits`` and ``group_size``, into artifacts of those kinds named ``<prefix>-gptq-w4g128``...
whose one parent (role ``source``) is also their reference; GPTQ and AWQ calibrate on
``calibration`` text, RTN on none, so GPTQ vs RTN shows what calibration buys. Everything that
can be checked is checked before the first artifact is written: type names, row widths (a
multiple of 32 for every GGUF type; tensors whose rows a type's 256-blocks do not divide fall back
to a 32-block type, as llama.cpp does, counted in the variant's ``fallback``), the group size against every layer's input width, imatrix-only types,
the calibration text, memory and disk space.

Nothing is made twice: each output records in its manifest info (``output_key``) what it was made
from (the source's content hash, the settings that determine that one output, the libraries'
versions), and an existing output with the same key is reused, with a ``log`` event, whatever else
the earlier step made (``reused`` in the result); ``redo`` makes them again. An existing output
made otherwise is replaced only with ``overwrite`` (a recipe step, ``--force``).

The quality table scores every variant with the scoring core on the same held-out text (the
world's ``eval_text``, which no calibration set contains): perplexity, KL divergence and top-1
agreement against the reference named in the row (the f16 GGUF, as llama.cpp measures it),
world-question accuracy, size, bits per weight and speed (with when, and beside what load, it was
measured); each row also goes to the variant's ``metrics.json`` and, when MLflow tracking is on, to
MLflow (``log_quality_table``). Scores are kept by content (``llmlab.scoring.ScoreCache``): an
unchanged artifact scored on the same texts against the same reference is not scored again.
``stored_table`` (``llmlab.scoring``, importable from here) reads the rows back without scoring
(``pareto_front`` then picks the rows no other row beats on size and quality). Nothing heavy is
imported until a function runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from llmlab import data as datamod
from llmlab.errors import ConfigError, ResourceError, StoreError
from llmlab.events import Reporter, emit
from llmlab.quantize import gptq
from llmlab.quantize.gguf import QUANT_TYPES
from llmlab.scoring import (TEXTS_TOKENS, EvalOptions, ScoreCache, digest, log_quality_table, score_key,
                            stored_table)  # noqa: F401  (stored_table: imported from here too, where it lived)
from llmlab.store import MODEL_KINDS, library_versions

if TYPE_CHECKING:
    from llmlab.store import Artifact, StepRecord, Store, Writer

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


ALL_TYPES = (*QUANT_TYPES, *gptq.METHODS)


def resolve_types(types: list[str]) -> list[str]:
    """Canonical (de-duplicated, ordered) type names: GGUF types upper-case, the GPTQModel methods
    (gptq, awq, rtn) lower-case; unknown names raise ConfigError."""
    if not types:
        raise ConfigError("No quant types given.", f"Pick from: {', '.join(ALL_TYPES)}.")
    out: list[str] = []
    for t in types:
        name = str(t).strip().upper()
        if name.lower() in gptq.METHODS:
            name = name.lower()
        elif name not in QUANT_TYPES:
            raise ConfigError(f"Unknown quant type '{t}'.", f"Valid types: {', '.join(ALL_TYPES)}.")
        if name not in out:
            out.append(name)
    return out


class QuantizeConfig(EvalOptions):
    """Options of the Quantize station (``llmlab quantize``, a recipe's ``quantize`` step, the app page)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="Artifact to quantize (kind base, full, merged or distilled).")
    types: list[str] = Field(list(DEFAULT_TYPES), description="GGUF quant types, case-insensitive (q8_0, "
                             "q4_k_m, iq4_xs...; the IQ1/IQ2/IQ3 types and Q2_K_S need an imatrix) and/or "
                             "gptq, awq, rtn (through GPTQModel, at bits and group_size).")
    name_prefix: str | None = Field(None, description="Outputs are named <prefix>-f16, <prefix>-imatrix, "
                                    "<prefix>-<type> (e.g. demo-q4_k_m) and <prefix>-gptq-w4g128; default: the "
                                    "model's name.")
    bits: int = Field(4, description="gptq/awq/rtn: bits per quantized weight, 4 or 8.")
    group_size: int = Field(128, description="gptq/awq/rtn: weights sharing one scale along a row (16, 32, 64 or "
                            "128); must divide every layer's input width.")
    calibration: str = Field("auto", description="gptq/awq calibration text: 'auto' (the world's training texts "
                             "for a demo-world model, else 'calibration': public-domain text shipped with llmlab, "
                             "disjoint from the 'prose' it is scored on), 'world', or a data file; rtn uses none.")
    calibration_samples: int = Field(128, ge=1, description="gptq/awq: most calibration sequences (of 256 "
                                     "tokens) to run.")
    imatrix: str | None = Field(None, description="Calibration text for an importance matrix: 'world' (the demo "
                                "world's training texts, disjoint from the eval text), a .txt/.jsonl file, or "
                                "none.")
    imatrix_chunks: int = Field(64, ge=1, description="Most calibration chunks (of up to 512 tokens) to run.")
    reference: str = Field("f16", description="What KL divergence and top-1 compare with: 'f16' (the f16 GGUF "
                           "this step writes, as llama.cpp does) or an artifact name.")
    score: bool = Field(True, description="Compute the quality table (perplexity, KL, top-1, accuracy, size, "
                        "speed) and store each row in the variant's metrics.")
    redo: bool = Field(False, description="Make and score every output again, even those the store holds made "
                       "from the same source with the same settings (by default they and their scores are "
                       "reused).")
    # "eval_data", the name this had before the evaluation options were shared, still works.
    texts: str | None = Field("auto", validation_alias=AliasChoices("texts", "eval_data"),
                              description=EvalOptions.model_fields["texts"].description)

    @model_validator(mode="after")
    def _some_eval_text(self) -> QuantizeConfig:
        if self.score and (self.texts is None or self.texts.strip().lower() in ("", "none", "off")):
            raise ValueError("the quality table needs held-out text (texts): use 'auto', 'world', 'prose', a "
                             "data file, or score: false")
        return self

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        try:
            return [t.lower() for t in resolve_types(v)]
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if v not in gptq.BITS:
            raise ValueError(f"bits must be 4 or 8 (GPTQ/AWQ/RTN), got {v}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        if v not in gptq.GROUP_SIZES:
            raise ValueError(f"group_size must be one of {', '.join(map(str, gptq.GROUP_SIZES))}, got {v}")
        return v

    @property
    def prefix(self) -> str:
        return self.name_prefix or self.model

    @property
    def gguf_types(self) -> list[str]:
        return [t for t in self.types if t not in gptq.METHODS]

    @property
    def methods(self) -> list[str]:
        """The GPTQModel methods among ``types`` (gptq, awq, rtn)."""
        return [t for t in self.types if t in gptq.METHODS]

    def variant_name(self, type_name: str) -> str:
        if type_name.lower() in gptq.METHODS:
            return f"{self.prefix}-{gptq.variant_suffix(type_name.lower(), self.bits, self.group_size)}"
        return f"{self.prefix}-{type_name.lower()}"

    @property
    def outputs(self) -> list[str]:
        """Every artifact this config writes, in order (a recipe skips the step when all are current)."""
        names = []
        if self.gguf_types:
            names = [f"{self.prefix}-f16"] + ([f"{self.prefix}-imatrix"] if self.imatrix not in (None, "none")
                                               else [])
        return names + [self.variant_name(t) for t in self.types]


# ----- checks before any work -----
def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape from a Hugging Face folder's safetensors headers (validated first; no
    weights are read). PyTorch order: a Linear weight is [out_features, in_features]."""
    from llmlab.formats.hf import check_hf_folder

    check_hf_folder(folder)
    shapes: dict[str, list[int]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def matrix_rows(shapes: dict[str, list[int]]) -> list[tuple[str, int]]:
    """(name, row length) of every weight matrix of a Hugging Face folder's ``tensor_shapes``
    (PyTorch order: the row length is the last dimension)."""
    return [(n, s[-1]) for n, s in shapes.items() if len(s) >= 2]


def check_shapes(shapes: dict[str, list[int]], types: list[str]) -> None:
    """Raise ConfigError, naming the tensor, when a weight matrix's rows are not a multiple of 32:
    no GGUF type fits them. Rows that only a type's 256-blocks do not divide fall back to a
    32-block type, as llama.cpp does (``llmlab.quantize.fallback``)."""
    from llmlab.quantize.fallback import check_rows

    rows = matrix_rows(shapes)
    for t in resolve_types(types):
        if t not in gptq.METHODS:  # their group size is checked by gptq.check_group_size
            check_rows(rows, t)


def _check_resources(n_params: int, types: list[str], store_root: Path, *, available: int | None = None,
                     bits: int = 4) -> None:
    """Refuse with numbers when the model will not fit in memory (as f16 for llama.cpp, in float32
    for GPTQModel) or the outputs on disk."""
    from llmlab.runtime import check_memory

    gguf_types = [t for t in types if t.lower() not in gptq.METHODS]
    methods = [t for t in types if t.lower() in gptq.METHODS]
    f16 = n_params * 2 if gguf_types else 0
    if gguf_types:
        # llama.cpp maps the f16 file and holds one tensor in f32 plus its quantized copy at a time
        check_memory(f16 + 300 * MB, f"the f16 model ({n_params / 1e6:,.0f} M parameters) to quantize it",
                     available=available)
    if methods:
        check_memory(gptq.memory_needed(n_params), f"the model ({n_params / 1e6:,.0f} M parameters) into "
                     "GPTQModel to quantize it", available=available)
    # GPTQModel keeps embeddings and lm_head in full precision: count them at 16 bits, generously
    need = f16 + sum(int(n_params * TYPE_INFO.get(t, (8.5, ""))[0] / 8) for t in gguf_types) + \
        len(methods) * int(n_params * max(bits, 16) / 8)
    free = shutil.disk_usage(store_root).free
    if need > free:
        raise ResourceError(f"The {len(types)} variants need about {need / MB:,.0f} MB of disk but "
                            f"only {free / MB:,.0f} MB is free under {store_root}.",
                            "Free space, or quantize fewer types at a time.")


def calibration_texts(source: str, store: Store, artifact: Artifact, *, purpose: str = "an importance matrix"
                      ) -> list[str]:
    """Calibration texts: 'world' (the training texts of the artifact's world), 'auto' (those, or the
    shipped 'calibration' text for a model without a world) or a data file."""
    texts = [t for t in datamod.resolve_texts(source, store=store, artifact=artifact, part="train") or [] if t.strip()]
    if not texts:
        raise ConfigError(f"The calibration set '{source}' is empty: {purpose} needs text to run "
                          "the model on.", "Give a file with some text (a few thousand tokens at least).")
    return texts


def calibration_sets(config: QuantizeConfig, store: Store, source: Artifact) -> tuple[list[str] | None,
                                                                                      list[str] | None]:
    """The importance matrix's calibration texts and GPTQ/AWQ's (None where none is needed)."""
    calib = calibration_texts(config.imatrix, store, source) \
        if config.gguf_types and config.imatrix not in (None, "", "none") else None
    method_calib = calibration_texts(config.calibration, store, source, purpose="GPTQ/AWQ calibration") \
        if set(config.methods) & set(gptq.CALIBRATED) else None
    return calib, method_calib


# ----- what each output is made from (``output_key``): an output made alike is reused -----
# Libraries whose versions can change the bytes of a GGUF output, of a GPTQModel output.
GGUF_LIBRARIES = ("llmlab", "llama_cpp_python", "gguf", "transformers", "tokenizers")
METHOD_LIBRARIES = ("llmlab", "torch", "transformers", "gptqmodel", "optimum")
KEY_PARTS = {"source": "another source model", "output": "another type", "imatrix": "another importance matrix",
             "calibration": "another calibration", "versions": "other library versions"}


def output_keys(config: QuantizeConfig, source: Artifact, *, calib: list[str] | None,
                method_calib: list[str] | None) -> dict[str, dict[str, Any]]:
    """Each output's ``output_key`` (in ``config.outputs`` order): the source's content hash, what
    determines that one output (its type; the calibration texts and chunks of the importance matrix
    it was made with; bits, group size and calibration of a method) and its libraries' versions."""
    keys: dict[str, dict[str, Any]] = {}
    if config.gguf_types:
        made = {"source": source.content_hash, "versions": library_versions(GGUF_LIBRARIES)}
        keys[config.variant_name("f16")] = {**made, "output": "F16"}
        imatrix = None if calib is None else {"texts": digest(calib), "chunks": config.imatrix_chunks}
        if imatrix is not None:
            keys[f"{config.prefix}-imatrix"] = {**made, "output": "imatrix", "imatrix": imatrix}
        keys.update({config.variant_name(t): {**made, "output": t.upper(), "imatrix": imatrix}
                     for t in config.gguf_types})
    made = {"source": source.content_hash, "versions": library_versions(METHOD_LIBRARIES)}
    for m in config.methods:
        calibration = {"texts": digest(method_calib), "samples": config.calibration_samples} \
            if m in gptq.CALIBRATED else None
        keys[config.variant_name(m)] = {**made, "output": m, "bits": config.bits, "group_size": config.group_size,
                                        "calibration": calibration}
    return keys


def recorded_key(art: Artifact) -> dict[str, Any] | None:
    """What an output was made from: its ``output_key``, or for a GGUF made without an importance
    matrix before keys were recorded, the same worked out from its manifest; None when unknown."""
    info = art.manifest.info
    if "output_key" in info:
        return info["output_key"]
    source = next((p.content_hash for p in art.manifest.parents if p.role == "source"), None)
    if art.kind != "gguf" or source is None or info.get("imatrix") or not info.get("type"):
        return None
    key = {"source": source, "versions": {k: v for k, v in art.manifest.versions.items() if k in GGUF_LIBRARIES},
           "output": info["type"]}
    return key if info["type"] == "F16" else {**key, "imatrix": None}


def compare_outputs(keys: dict[str, dict[str, Any]], store: Store) -> dict[str, list[str]]:
    """For each output in ``keys`` the store already holds, what it was made with otherwise, in words
    (``KEY_PARTS``: "another importance matrix"...); an empty list: the same source and settings, so
    it can be reused."""
    out: dict[str, list[str]] = {}
    for name, key in keys.items():
        if store.exists(name):
            old = recorded_key(store.get(name))
            out[name] = ["unrecorded settings"] if old is None else \
                [KEY_PARTS.get(k, f"another {k}") for k in dict.fromkeys([*key, *old]) if key.get(k) != old.get(k)]
    return out


def reusable_outputs(keys: dict[str, dict[str, Any]], store: Store, *, redo: bool, overwrite: bool) -> list[str]:
    """The outputs to reuse (none with ``redo``); raises StoreError for one made otherwise, which only
    ``overwrite`` or ``redo`` replaces."""
    differ = compare_outputs(keys, store)
    for name, why in differ.items():
        if why and not (overwrite or redo):
            raise StoreError(f"An artifact named '{name}' already exists, made with {', '.join(why)}: this "
                             "step cannot reuse it.", "Choose another name_prefix, remove it, or pass --force / "
                             "overwrite=True (redo: true) to replace it.")
    return [] if redo else [n for n, why in differ.items() if not why]


# ----- the step -----
def gguf_bpw(path: Path) -> float:
    """Bits per weight of a GGUF file's tensor data (all tensors, as llama.cpp reports it)."""
    from llmlab.formats.gguf_header import parse

    tensors = parse(path).tensors
    return 8 * sum(t.n_bytes for t in tensors) / max(1, sum(t.n_elements for t in tensors))


def gguf_info(path: Path, type_name: str) -> dict[str, Any]:
    """A GGUF variant's manifest info; ``fallback``: how many tensors llama.cpp stored in which other
    type because ``type_name``'s blocks do not divide their rows (empty when none)."""
    from llmlab.formats.gguf import tensor_list
    from llmlab.quantize.fallback import fallback_counts
    from llmlab.quantize.gguf import read_header

    h = read_header(path)
    return {"type": type_name, "bpw": round(gguf_bpw(path), 3), "size_bytes": h["size_bytes"],
            "n_params": h["n_params"], "arch": h["arch"], "tensor_types": h["tensor_types"],
            "fallback": fallback_counts(tensor_list(path), type_name), "chat_template": h["chat_template"] is not None}


def quantize(config: QuantizeConfig, *, store: Store | None = None, progress: Reporter | None = None,
             overwrite: bool = False, step: StepRecord | None = None) -> dict[str, Any]:
    """Write the f16 GGUF, the imatrix (if asked) and one GGUF artifact per GGUF type, then one
    gptq/awq/rtn artifact per method (see module doc).

    Returns ``{"source", "f16", "imatrix", "variants", "reused", "table"}``: ``variants`` lists every
    quantized artifact (GGUF first, then GPTQModel's); ``f16`` is None when no GGUF type was asked;
    ``reused`` the outputs the store already held made alike (not made again); ``table`` is empty
    unless ``score``."""
    from llmlab.quantize import gguf
    from llmlab.store import Parent, Store

    store = store or Store()
    source = store.get(config.model)
    if source.kind not in MODEL_KINDS:
        raise ConfigError(f"'{source.name}' is a {source.kind} artifact; the Quantize station takes "
                          f"{', '.join(MODEL_KINDS)} models.",
                          "Quantize the model it came from (adapters: merge them first).")
    types = resolve_types(config.types)
    gguf_types = [t for t in types if t not in gptq.METHODS]
    methods = [t for t in types if t in gptq.METHODS]
    needs = [t for t in gguf_types if t in gguf.IMATRIX_TYPES]
    if needs and config.imatrix in (None, "", "none"):
        raise ConfigError(f"{', '.join(needs)} need an importance matrix: at 1-3 bits per weight, rounding "
                          "without knowing which weights matter most ruins the model (llama.cpp refuses).",
                          "Set imatrix: world (or a calibration text file), or drop those types.")
    shapes = tensor_shapes(source.path)
    if gguf_types:
        check_shapes(shapes, gguf_types)
    if methods:
        gptq.check_group_size(shapes, config.group_size)
    n_params = sum(math.prod(s) for s in shapes.values())
    _check_resources(n_params, types, store.root, bits=config.bits)
    calib, method_calib = calibration_sets(config, store, source)
    keys = output_keys(config, source, calib=calib, method_calib=method_calib)
    reused = reusable_outputs(keys, store, redo=config.redo, overwrite=overwrite)
    for name in reused:
        emit(progress, "log", message=f"reusing {name}: same source and settings")
    made = _Made(keys, reused, store=store, replace=overwrite or config.redo, step=step)
    src_parent = Parent(name=source.name, content_hash=source.content_hash, role="source")

    f16_name = imatrix_name = None
    variants: list[str] = []
    if gguf_types:
        f16_name, imatrix_name, variants = _write_gguf(config, gguf_types, source, src_parent, calib, made=made,
                                                       progress=progress)
    todo = [m for m in methods if config.variant_name(m) not in reused]
    for i, method in enumerate(todo):
        name = config.variant_name(method)
        emit(progress, "progress", task="gptqmodel", done=i, total=len(todo))
        with made.write(name, method) as w:
            facts = gptq.quantize_folder(source.path, w.path, method=method, bits=config.bits,
                                         group_size=config.group_size, progress=progress,
                                         texts=method_calib if method in gptq.CALIBRATED else None,
                                         samples=config.calibration_samples)
            size = sum(f.stat().st_size for f in w.path.glob("*.safetensors"))
            w.parents = [src_parent]
            w.info = {**w.info, **facts, "type": gptq.variant_suffix(method, config.bits, config.group_size),
                      "source": source.name, "reference": source.name, "size_bytes": size, "n_params": n_params,
                      "bpw": round(8 * size / n_params, 3),
                      "calibration": config.calibration if method in gptq.CALIBRATED else None}
    variants += [config.variant_name(m) for m in methods]
    if todo:
        emit(progress, "progress", task="gptqmodel", done=len(todo), total=len(todo))

    table: list[dict[str, Any]] = []
    if config.score:
        texts, qa = config.eval_inputs(store=store, artifact=source, progress=progress)
        reference = None if config.reference == "f16" else config.reference
        # [] (not None) when the config says none: quality_table reads None as "the defaults".
        table = quality_table([source.name, *([f16_name] if f16_name else []), *variants], store, texts=texts or [],
                              qa=qa or [], reference=reference, progress=progress, max_tokens=config.texts_tokens,
                              redo=config.redo)
        log_quality_table(table, store=store, new_run=False)  # into the recipe's run, when tracked
    return {"source": source.name, "f16": f16_name, "imatrix": imatrix_name, "variants": variants,
            "reused": reused, "table": table}


class _Made:
    """Writes the outputs that are not reused, each with its ``output_key`` and the step record."""

    def __init__(self, keys: dict[str, dict[str, Any]], reused: list[str], *, store: Store, replace: bool,
                 step: StepRecord | None):
        self.keys, self.reused, self.store, self.replace, self.step = keys, reused, store, replace, step

    @contextlib.contextmanager
    def write(self, name: str, kind: str) -> Iterator[Writer]:
        with self.store.write(name, kind, overwrite=self.replace) as w:
            w.step, w.info = self.step, {"output_key": self.keys[name]}
            yield w


def _write_gguf(config: QuantizeConfig, types: list[str], source: Artifact, src_parent: Any,
                calib: list[str] | None, *, made: _Made, progress: Reporter | None) -> tuple[str, str | None, list[str]]:
    """The f16 GGUF, the imatrix (when ``calib``) and one GGUF per type, each unless reused: their names."""
    from llmlab.quantize import gguf
    from llmlab.store import Parent

    store = made.store
    f16_name = config.variant_name("f16")
    if f16_name not in made.reused:
        emit(progress, "log", message=f"converting {source.name} to GGUF f16")
        with made.write(f16_name, "gguf") as w:
            gguf.convert(source.path, w.path / f"{f16_name}.gguf", "f16", progress)  # verifies the tokenizer
            w.parents = [src_parent]
            w.info.update(gguf_info(w.path / f"{f16_name}.gguf", "F16"), source=source.name)
    f16 = store.get(f16_name)
    f16_file = f16.file(".gguf")
    parents = [src_parent, Parent(name=f16.name, content_hash=f16.content_hash, role="reference")]

    imatrix_name = None
    if calib is not None:
        imatrix_name = f"{config.prefix}-imatrix"
        if imatrix_name not in made.reused:
            emit(progress, "log", message=f"computing the importance matrix on {len(calib)} calibration texts")
            with made.write(imatrix_name, "imatrix") as w:
                facts = gguf.compute_imatrix(f16_file, calib, w.path / "imatrix.gguf",
                                             max_chunks=config.imatrix_chunks, dataset=config.imatrix or "",
                                             progress=progress)
                w.parents = [Parent(name=f16.name, content_hash=f16.content_hash, role="model")]
                w.info.update(facts, calibration=config.imatrix, texts=len(calib))
        im = store.get(imatrix_name)
        parents.append(Parent(name=im.name, content_hash=im.content_hash, role="imatrix"))

    todo = [t for t in types if config.variant_name(t) not in made.reused]
    for i, t in enumerate(todo):
        name = config.variant_name(t)
        emit(progress, "progress", task="quantize", done=i, total=len(todo))
        with made.write(name, "gguf") as w:
            out = w.path / f"{name}.gguf"
            gguf.quantize(f16_file, out, t, imatrix=store.get(imatrix_name).file("imatrix.gguf")
                          if imatrix_name else None, progress=progress)
            gguf.verify_tokenizer(source.path, out)
            w.parents = list(parents)
            w.info.update(gguf_info(out, t), source=source.name, reference=f16.name, imatrix=imatrix_name)
    if todo:
        emit(progress, "progress", task="quantize", done=len(todo), total=len(todo))
    return f16_name, imatrix_name, [config.variant_name(t) for t in types]


# ----- the quality table -----
def _reference_of(artifact: Artifact) -> str | None:
    """The parent a variant is compared with: role 'reference' (the f16 GGUF), else 'source'."""
    by_role = {p.role: p.name for p in artifact.manifest.parents}
    return by_role.get("reference") or by_role.get("source")


def quality_table(names: list[str], store: Store, *, texts: list[str] | None = None,
                  qa: list[dict[str, Any]] | None = None, reference: str | None = None, speed: bool = True,
                  progress: Reporter | None = None, max_tokens: int | None = TEXTS_TOKENS,
                  redo: bool = False) -> list[dict[str, Any]]:
    """Score each artifact in ``names`` on the same ``texts`` (default: the world's eval text, or the
    shipped prose for a model without a world; at most ``max_tokens`` tokens of them) and ``qa``
    (default: the world's heldout questions, if any) against its reference (``reference``, else its
    parent with role 'reference' or 'source'; none for a model without one). One row per name, also
    merged into the artifact's ``metrics.json``; gptq/awq/rtn rows also carry ``bits``,
    ``group_size`` and ``seconds`` (the time quantizing took). Scores come from the store's
    ``ScoreCache`` when nothing they depend on changed (``cached`` in the row), unless ``redo``;
    ``scored_at`` says when they were measured, ``measured_at`` and ``load_avg`` when speed was."""
    from llmlab.runtime import load
    from llmlab.scoring import score

    if not names:
        return []
    if texts is None or qa is None:
        defaults = EvalOptions(qa_limit=200).eval_inputs(store=store, artifact=store.get(names[0]), progress=progress)
        texts = texts if texts is not None else defaults[0]
        qa = qa if qa is not None else defaults[1]
    rows = []
    cache = ScoreCache(store)
    with contextlib.ExitStack() as stack:
        refs: dict[str, Any] = {}
        for i, name in enumerate(names):
            art = store.get(name)
            ref_name = reference or _reference_of(art)
            if ref_name == name:
                ref_name = None
            key = score_key(art, reference=store.get(ref_name) if ref_name and texts else None, texts=texts, qa=qa,
                            max_tokens=max_tokens, speed_test=speed)
            m = None if redo else cache.get(key)
            cached = m is not None
            if cached:
                emit(progress, "log", message=f"reusing the scores of {name} from {m['scored_at']}: same content, "
                     "texts and reference")
                store.record_metrics(name, m)
            else:
                if ref_name and texts and ref_name not in refs:
                    refs[ref_name] = stack.enter_context(load(ref_name, store=store))
                emit(progress, "log", message=f"scoring {name}" + (f" against {ref_name}" if ref_name else ""))
                m = cache.put(key, score(art, store=store, data=texts, qa=qa, data_label="eval", speed_test=speed,
                                         reference=refs.get(ref_name) if texts else None, progress=progress,
                                         max_tokens=max_tokens))
            info = art.manifest.info
            bpw = info.get("bpw")
            if bpw is None and art.kind in MODEL_KINDS:
                bpw = 8 * m["size_bytes"] / max(1, m["n_params"])
            row = {"name": name, "kind": art.kind, "type": info.get("type") or art.kind,
                   "reference": ref_name, "size_bytes": m["size_bytes"], "bpw": round(float(bpw or 0), 3),
                   "ppl": m.get("ppl"), "kld_mean": m.get("kld_mean"), "kld_p99": m.get("kld_p99"),
                   "top1": m.get("top1"), "accuracy": m.get("accuracy"), "gen_tok_s": m.get("gen_tok_s"),
                   "prompt_tok_s": m.get("prompt_tok_s"), "peak_rss_mb": m.get("peak_rss_mb"),
                   "fallback": dict(info.get("fallback") or {}), "scored_at": m.get("scored_at"),
                   "measured_at": m.get("measured_at"), "load_avg": m.get("load_avg"), "cached": cached}
            # gptq/awq/rtn rows: their settings and how long quantizing took
            row.update({k: info[k] for k in ("bits", "group_size", "seconds") if k in info})
            store.record_metrics(name, {"quant_type": row["type"], "bpw": row["bpw"], "kld_reference": ref_name})
            rows.append(row)
            emit(progress, "progress", task="quality", done=i + 1, total=len(names))
    return rows
