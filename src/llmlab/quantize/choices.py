"""What a model lets the Quantize station make, worked out before any job starts.

The app's Quantize page, the notebook and the CLI ask the same questions of a model's tensor shapes
(read from its safetensors headers by ``llmlab.quantize.step.tensor_shapes``, no weights loaded):

- ``type_choices``: every GGUF quant type with its bits per weight, explanation, expected size
  (parameters x bits / 8), the ``reason`` it cannot be picked (a row width that is not a multiple
  of 32, which no type fits, or no importance matrix for the types that need one) and a ``note``
  when some tensors fall back to a 32-block type (a 576-wide model takes Q4_K_M with those tensors
  in Q5_0, as llama.cpp does);
- ``method_choices``: GPTQ, AWQ and RTN at a bit width and group size, with their expected size
  and why a group size does not fit (a layer whose input width it does not divide);
- ``FORM_TYPES`` / ``form_problems`` / ``form_config`` / ``existing_outputs``: the types a form
  ticks at first, what it still lacks (a file, a world to draw texts from), the ``quantize`` step
  config it stands for, and which of its outputs the store already holds: made alike (a job
  reuses them, and their scores) or otherwise (a job replaces them, saying what differs);
- ``quality_axes`` / ``plottable`` / ``quality_front``: which quality numbers a table of variants
  has, and its Pareto front of size against one of them.

```python
from llmlab.quantize.choices import type_choices
from llmlab.quantize.step import tensor_shapes
for c in type_choices(tensor_shapes(art.path), imatrix=False):
    print(c.type, c.expected_bytes, c.reason or "available")
```

Everything here is pure: no store writes, no model loads, no front-end imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlab.data import SPLITS
from llmlab.errors import LlmlabError
from llmlab.quantize.gguf import IMATRIX_TYPES, QUANT_TYPES
from llmlab.quantize.gptq import CALIBRATED, METHODS, check_group_size, expected_bytes
from llmlab.quantize.fallback import fallback_note
from llmlab.quantize.step import (TYPE_INFO, QuantizeConfig, calibration_sets, check_shapes, compare_outputs,
                                  matrix_rows, output_keys)
from llmlab.scoring import is_number, pareto_front
from llmlab.store import Store

Shapes = dict[str, list[int]]

# The types a quantize form ticks at first: the practically lossless one and the usual best trade-off.
FORM_TYPES = ("Q8_0", "Q4_K_M")
# Where an importance matrix can come from (a QuantizeConfig.imatrix value, "file" standing for a path).
IMATRIX_SOURCES = ("none", "world", "file")
# Quality numbers of a variant row -> what they measure (lower is better for each).
QUALITY_AXES: dict[str, str] = {
    "kld_mean": "mean KL divergence vs the reference",
    "kld_p99": "99th-percentile KL divergence",
    "ppl": "perplexity on the held-out text",
}


def n_params(shapes: Shapes) -> int:
    """How many numbers the tensors of ``shapes`` hold."""
    return sum(math.prod(s) for s in shapes.values())


def gguf_expected_bytes(type_name: str, params: int) -> int:
    """About how large a GGUF of ``type_name`` is for ``params`` weights: parameters x bits / 8
    (the real file adds metadata and keeps a few small tensors at higher precision)."""
    return int(params * TYPE_INFO[type_name.upper()][0] / 8)


def imatrix_reason(type_name: str) -> str:
    """Why ``type_name`` (one of ``IMATRIX_TYPES``) is not offered without an importance matrix."""
    return (f"{type_name} needs an importance matrix: at 1-3 bits per weight, rounding without knowing "
            "which weights matter most ruins the model. Choose an imatrix source to enable it.")


@dataclass(frozen=True)
class TypeChoice:
    """One GGUF quant type for one model."""

    type: str
    bits: float  # about how many bits per weight
    explanation: str
    needs_imatrix: bool
    expected_bytes: int
    reason: str | None  # why it cannot be picked; None when it can
    note: str | None = None  # which tensors fall back to which type (rows its blocks do not divide)

    @property
    def available(self) -> bool:
        return self.reason is None


def type_choices(shapes: Shapes, *, imatrix: bool) -> list[TypeChoice]:
    """One entry per quant type, in ``TYPE_INFO`` order (most bits first): its bits per weight,
    explanation, expected size for a model of these ``shapes``, ``reason`` why it cannot be picked
    (rows not a multiple of 32, or no importance matrix when ``imatrix`` is False) and ``note``
    naming the type the tensors its blocks do not divide fall back to."""
    params = n_params(shapes)
    rows = matrix_rows(shapes)
    out = []
    for name, (bits, explanation) in TYPE_INFO.items():
        if name not in QUANT_TYPES:
            continue
        reason = None
        try:
            check_shapes(shapes, [name])
        except LlmlabError as e:
            reason = e.message
        if reason is None and name in IMATRIX_TYPES and not imatrix:
            reason = imatrix_reason(name)
        out.append(TypeChoice(type=name, bits=bits, explanation=explanation, needs_imatrix=name in IMATRIX_TYPES,
                              expected_bytes=gguf_expected_bytes(name, params), reason=reason,
                              note=None if reason else fallback_note(rows, name)))
    return out


@dataclass(frozen=True)
class MethodChoice:
    """One GPTQModel method (gptq, awq, rtn) at a bit width and group size, for one model."""

    method: str
    explanation: str
    calibrated: bool  # needs calibration text
    expected_bytes: int
    reason: str | None  # why it cannot be picked; None when it can

    @property
    def available(self) -> bool:
        return self.reason is None


def method_choices(shapes: Shapes, bits: int, group_size: int) -> list[MethodChoice]:
    """One entry per GPTQModel method: its explanation, expected size at ``bits`` and ``group_size``,
    and ``reason`` why it cannot be picked (a layer the group size does not divide)."""
    try:
        check_group_size(shapes, group_size)
        reason = None
    except LlmlabError as e:
        reason = e.message
    size = expected_bytes(shapes, bits, group_size)
    return [MethodChoice(method=m, explanation=text, calibrated=m in CALIBRATED, expected_bytes=size, reason=reason)
            for m, text in METHODS.items()]


def needs_calibration(methods: Sequence[str]) -> bool:
    """Whether any of ``methods`` calibrates on text (GPTQ, AWQ; not RTN)."""
    return bool(set(methods) & set(CALIBRATED))


# ----- a quantize form -----
def world_needs(*, imatrix: str | None, calibration: str | None, score: bool, texts: str | None,
                qa: str | None) -> list[str]:
    """Which of a form's inputs would come from the model's demo world ("the importance matrix",
    "the GPTQ/AWQ calibration", "the evaluation texts", "the questions")."""
    needs = []
    if imatrix == "world":
        needs.append("the importance matrix")
    if calibration == "world":
        needs.append("the GPTQ/AWQ calibration")
    if score and texts == "world":
        needs.append("the evaluation texts")
    if score and (qa == "world" or qa in SPLITS):
        needs.append("the questions")
    return needs


def form_problems(model: str, *, types: Sequence[str], methods: Sequence[str], imatrix_source: str,
                  imatrix: str | None, calibration: str | None, score: bool, texts: str, qa: str,
                  has_world: bool) -> list[str]:
    """What stops a quantize form from starting, one sentence each (empty when it can start).

    ``imatrix_source`` is one of ``IMATRIX_SOURCES``; ``imatrix`` the value it gives (None, "world"
    or the file typed in); ``calibration`` the GPTQ/AWQ text source ("" when a file is still to be
    given, None when no calibrated method is ticked)."""
    problems = []
    if not types and not methods:
        problems.append("Tick at least one type.")
    if calibration == "":
        problems.append("Give the calibration file for GPTQ/AWQ, or choose the world's texts.")
    if imatrix_source == "file" and not imatrix:
        problems.append("Give the calibration file for the importance matrix, or choose another source.")
    if score and not texts:
        problems.append("Give the evaluation texts (a .txt or .jsonl file) for the quality table, or untick "
                        "scoring.")
    needs = world_needs(imatrix=imatrix, calibration=calibration, score=score, texts=texts, qa=qa)
    if needs and not has_world:
        problems.append(f"'{model}' has no demo world, so {' and '.join(needs)} cannot come from it: give a "
                        "file instead.")
    return problems


def form_config(model: str, *, types: Sequence[str], methods: Sequence[str], imatrix: str | None,
                imatrix_chunks: int, score: bool, texts: str, qa: str, name_prefix: str = "",
                method_options: dict[str, Any] | None = None, redo: bool = False) -> dict[str, Any]:
    """The ``quantize`` step config a form stands for: GGUF ``types`` (any case) then ``methods``, the
    evaluation ``texts`` (default the world's) and questions, ``method_options`` (bits,
    group_size, calibration...) when GPTQ/AWQ/RTN are ticked, and ``redo`` (make and score again
    what the store holds made alike) only when asked."""
    config: dict[str, Any] = {"model": model, "types": [t.lower() for t in types] + list(methods),
                              "imatrix": imatrix, "imatrix_chunks": int(imatrix_chunks), "score": score,
                              "texts": texts or "auto", "qa": qa or None,
                              **{k: v for k, v in (method_options or {}).items() if v is not None}}
    if name_prefix:
        config["name_prefix"] = name_prefix
    if redo:
        config["redo"] = True
    return config


def existing_outputs(config: dict[str, Any], store: Store) -> dict[str, list[str]]:
    """The outputs of a ``quantize`` config that the store already holds, each with what it was made
    with otherwise, in words (``llmlab.quantize.step.compare_outputs``): an empty list when made
    from the same source with the same settings, so a job reuses it (unless ``redo``); else a job
    replaces it. Raises (``LlmlabError``, pydantic's ``ValueError``) when the config is invalid,
    e.g. a name prefix that is no artifact name, or its calibration text cannot be read."""
    cfg = QuantizeConfig.model_validate(config)
    if not any(store.exists(o) for o in cfg.outputs):
        return {}
    source = store.get(cfg.model)
    calib, method_calib = calibration_sets(cfg, store, source)
    return compare_outputs(output_keys(cfg, source, calib=calib, method_calib=method_calib), store)


# ----- a table of variants -----
def quality_axes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The ``QUALITY_AXES`` that at least one row has a number for, in that order."""
    return [a for a in QUALITY_AXES if any(is_number(r.get(a)) for r in rows)]


def plottable(rows: Sequence[dict[str, Any]], y: str, *, x: str = "size_mb", log: bool = False
              ) -> list[dict[str, Any]]:
    """The rows with a number for both ``x`` and ``y`` (and ``y`` > 0 on a log scale)."""
    return [r for r in rows if is_number(r.get(x)) and is_number(r.get(y)) and (not log or r[y] > 0)]


def quality_front(rows: Sequence[dict[str, Any]], y: str, *, x: str = "size_mb", log: bool = False
                  ) -> list[dict[str, Any]]:
    """The plottable rows no other row beats on both ``x`` (size) and ``y`` (lower is better), smallest first."""
    return pareto_front(plottable(rows, y, x=x, log=log), x, y)
