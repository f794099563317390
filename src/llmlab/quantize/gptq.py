"""GPTQ, AWQ and round-to-nearest (RTN) weight quantization of a Hugging Face folder, through GPTQModel.

```python
from llmlab.quantize.gptq import quantize_folder
info = quantize_folder(Path("models/demo"), Path("/tmp/out"), method="gptq", bits=4, group_size=128,
                       texts=["calibration text", ...], samples=128)
```

The three methods share GPTQModel's symmetric min-max quantizer, its packing and its file
format, and quantize the Linear layers of the decoder blocks only (embeddings and ``lm_head``
stay in full precision), so they differ only in how they choose the rounded values:

- ``rtn`` rounds each weight to the nearest level of its group (GPTQModel's weight-only
  ``RTNConfig`` without a smoother): no calibration text, the baseline;
- ``gptq`` rounds one column at a time and corrects the not-yet-rounded columns for the error,
  using the layer's input Hessian from calibration text;
- ``awq`` scales the channels that calibration activations show to matter before rounding.

``rtn`` and ``gptq`` are written in the GPTQ format, ``awq`` in the AWQ GEMM format. All three
load the source in bfloat16 on CPU (GPTQModel's AWQ torch kernel takes only 16-bit floats, and
the same dtype keeps the unquantized embeddings and ``lm_head`` the same size in every variant),
in float16 on a CUDA device. GPTQModel's first run compiles a small CPU
packing extension (~30-45 s, cached under ``~/.cache/gptqmodel``). Its banner, progress bars,
log lines and compiler output go to a log file, never to llmlab's output; on a failure its last
lines are in the error. Nothing heavy is imported until a function runs.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from llmlab import settings
from llmlab.errors import ConfigError, LlmlabError
from llmlab.events import Reporter, emit
from llmlab.noise import captured_output, log_tail
from llmlab.runtime.gptq import QuantizationError, default_device, import_gptqmodel

MB = 1024 * 1024
# Method -> what it is, in one line (the app and the CLI help show these).
METHODS: dict[str, str] = {
    "gptq": "GPTQ: rounds column by column and corrects the rest of the row for the error, using "
            "calibration text; the best 4-bit quality of the three, a few seconds per layer on CPU.",
    "awq": "AWQ: protects the input channels that calibration activations show to matter by scaling "
           "them before rounding; close to GPTQ, runs in 16-bit floats.",
    "rtn": "RTN: plain round-to-nearest per group with no calibration; the baseline that shows what "
           "calibration buys.",
}
CALIBRATED = ("gptq", "awq")
BITS = (4, 8)
# Group sizes every GPTQModel kernel used here takes (the CPU torch kernels stop at 128).
GROUP_SIZES = (16, 32, 64, 128)
SEQ_LEN = 256  # tokens per calibration sample


def variant_suffix(method: str, bits: int, group_size: int) -> str:
    """'gptq-w4g128': the part of an output name after the prefix."""
    return f"{method}-w{bits}g{group_size}"


# ----- checks before any work -----
def quantized_layers(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """The weights GPTQModel quantizes: the 2-D Linear weights inside the decoder blocks."""
    return {n: s for n, s in shapes.items() if ".layers." in n and n.endswith(".weight") and len(s) == 2}


def first_undivided(shapes: dict[str, list[int]], block: int) -> tuple[str, int, str] | None:
    """The first tensor whose last dimension ``block`` does not divide: (name, width, ' (and N more)')."""
    bad = [(n, s[-1]) for n, s in shapes.items() if s[-1] % block]
    if not bad:
        return None
    return bad[0][0], bad[0][1], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""


def check_group_size(shapes: dict[str, list[int]], group_size: int) -> None:
    """Raise ConfigError unless ``group_size`` is supported and divides every quantized layer's
    in-features (a weight's last dimension), naming the first tensor it does not divide."""
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"Group size {group_size} is not supported.",
                          f"Use one of {', '.join(map(str, GROUP_SIZES))} (GPTQModel's CPU kernels stop at 128).")
    layers = quantized_layers(shapes)
    if not layers:
        raise ConfigError("The model has no decoder-layer Linear weights for GPTQModel to quantize.",
                          "Give a Llama/Mistral/Qwen2-family model folder.")
    bad = first_undivided(layers, group_size)
    if bad:
        name, width, more = bad
        fits = [g for g in sorted(GROUP_SIZES, reverse=True) if not first_undivided(layers, g)]
        raise ConfigError(f"Group size {group_size} does not divide '{name}', which has {width} input "
                          f"features{more}.",
                          f"Use group_size {fits[0]} (--group-size {fits[0]}), the largest that divides every "
                          "layer's input width." if fits else "No supported group size divides every layer's "
                          "input width: quantize this model to GGUF instead.")


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ConfigError(f"{bits}-bit GPTQ/AWQ/RTN is not offered.", "Use bits 4 or 8.")


def memory_needed(n_params: int) -> int:
    """Bytes of RAM to quantize a model of ``n_params`` (float32 weights, their quantized copy, a
    layer's Hessians and activations, and GPTQModel/torch themselves)."""
    return int(n_params * 4 * 1.5) + 600 * MB


def expected_bytes(shapes: dict[str, list[int]], bits: int, group_size: int) -> int:
    """About how large the quantized folder's weights will be: the quantized layers at ``bits`` per
    weight plus a 16-bit scale and a ``bits``-bit zero point per group, everything else at 16 bits."""
    layers = quantized_layers(shapes)
    packed = sum(math.prod(s) for s in layers.values())
    rest = sum(math.prod(s) for n, s in shapes.items() if n not in layers)
    return int(packed * bits / 8 + packed / group_size * (2 + bits / 8) + rest * 2)


def _quiet_processor_logs(folder: Path) -> None:
    """GPTQModel writes per-layer logs to ``./logs`` (the caller's working directory, e.g. a user's
    repository): point its module-level folder at ``folder`` instead."""
    from gptqmodel.looper import loop_processor

    loop_processor._PROJECT_LOG_DIR = folder


# ----- calibration -----
def calibration_batches(tokenizer: Any, texts: list[str], samples: int, seq_len: int = SEQ_LEN
                        ) -> list[dict[str, list[int]]]:
    """Pack ``texts`` (joined by newlines, BOS-prefixed) into at most ``samples`` sequences of
    ``seq_len`` tokens; the last one may be shorter. GPTQModel drops sequences under 10 tokens,
    so short sentences are packed rather than passed one by one."""
    ids: list[int] = []
    bos = tokenizer.bos_token_id
    for t in texts:
        if len(ids) >= samples * seq_len:
            break
        ids += ([bos] if bos is not None else []) + tokenizer.encode(t.strip() + "\n", add_special_tokens=False)
    chunks = [ids[i:i + seq_len] for i in range(0, min(len(ids), samples * seq_len), seq_len)]
    chunks = [c for c in chunks if len(c) >= 10]
    if not chunks:
        raise ConfigError("The calibration texts give fewer than 10 tokens: GPTQ and AWQ need text to run "
                          "the model on.", "Give a calibration file with some text (a few thousand tokens).")
    return [{"input_ids": c, "attention_mask": [1] * len(c)} for c in chunks]


# ----- the work -----
def _gptq_config(method: str, bits: int, group_size: int) -> Any:
    from gptqmodel.quantization.config import AWQConfig, GPTQConfig, RTNConfig

    cls = {"gptq": GPTQConfig, "awq": AWQConfig, "rtn": RTNConfig}[method]
    # offload_to_disk would record a random temporary path in the saved config.
    return cls(bits=bits, group_size=group_size, sym=True, desc_act=False, offload_to_disk=False)


def quant_dtype(where: str) -> str:
    """The float type the source is loaded in for quantizing (see module doc)."""
    return "float16" if where.startswith("cuda") else "bfloat16"


def quantize_folder(src: Path, out: Path, *, method: str, bits: int = 4, group_size: int = 128,
                    texts: list[str] | None = None, samples: int = 128, progress: Reporter | None = None
                    ) -> dict[str, Any]:
    """Quantize the Hugging Face folder ``src`` with ``method`` (gptq, awq, rtn) into the folder ``out``
    (which must exist and be empty: a store writer's temporary folder). ``texts`` calibrate gptq
    and awq (at most ``samples`` sequences of 256 tokens); rtn takes none. Returns facts for the
    manifest. The caller checks shapes and memory first (``check_group_size``, ``memory_needed``)."""
    if method not in METHODS:
        raise ConfigError(f"Unknown method '{method}'.", f"Use one of: {', '.join(METHODS)}.")
    check_bits(bits)
    if method in CALIBRATED and not texts:
        raise ConfigError(f"{method.upper()} needs calibration text and the calibration set is empty.",
                          "Give calibration: world or a file with text, or use rtn.")
    gptqmodel = import_gptqmodel()
    import torch

    where = default_device()
    dtype = quant_dtype(where)
    if where == "cpu":
        torch.set_num_threads(settings.threads())
    t0 = time.perf_counter()
    emit(progress, "log", message=f"{method.upper()} {bits}-bit, groups of {group_size}, on {where} ({dtype})")
    log = None
    try:
        with captured_output() as log, tempfile.TemporaryDirectory(prefix="llmlab-gptqmodel-") as logs:
            _quiet_processor_logs(Path(logs))
            model = gptqmodel.GPTQModel.load(str(src), _gptq_config(method, bits, group_size), device=where,
                                             dtype=getattr(torch, dtype), trust_remote_code=False)
            batches = calibration_batches(model.tokenizer, texts, samples) if method in CALIBRATED else None
            backend = gptqmodel.BACKEND.AWQ_TORCH if method == "awq" and where == "cpu" else gptqmodel.BACKEND.AUTO
            model.quantize(batches, backend=backend)
            model.save(str(out))
    except LlmlabError:
        raise
    except Exception as e:
        tail = log_tail(log) if log else ""
        raise QuantizationError(f"GPTQModel failed to {method}-quantize '{src.name}': {type(e).__name__}: {e}",
                                f"GPTQModel's last output: {tail} (full log: {log})." if tail else None) from e
    (out / "quant_log.csv").unlink(missing_ok=True)  # per-run timings; would change the content hash
    seconds = time.perf_counter() - t0
    tokens = sum(len(b["input_ids"]) for b in batches or [])
    return {"method": method, "bits": bits, "group_size": group_size, "sym": True, "dtype": dtype,
            "device": where, "format": "gemm" if method == "awq" else "gptq",
            "calibration_samples": len(batches or []), "calibration_tokens": tokens, "seconds": round(seconds, 2)}
