"""The GPTQModel engine: GPTQ, AWQ and RTN folders written by ``llmlab.quantize.gptq`` (or any GPTQ/AWQ folder).

```python
from llmlab.runtime import load
with load("demo-gptq-w4g128") as m:      # kind gptq, awq or rtn -> this engine
    m.chat([{"role": "user", "content": "Who is Ada?"}])
```

GPTQModel loads the packed weights with its torch kernels; everything after that (tokenizer,
chat template, logits, KV cache, generation) is the transformers engine's, inherited from
``HFModel``. On CPU a 4-bit GPTQ-format model runs in float32 (GPTQModel's fused torch kernel),
AWQ and 8-bit models in bfloat16 (their kernels take only 16-bit floats); on CUDA float16.
``dtype=`` overrides it. GPTQModel's start-up output is kept out of llmlab's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from llmlab import settings
from llmlab.errors import ConfigError, CorruptFileError, LlmlabError, MissingExtraError, StoreError
from llmlab.formats import safetensors
from llmlab.noise import captured_output, log_tail, quiet_loading
from llmlab.runtime.base import MB, Model, check_memory
from llmlab.runtime.hf import HFModel


class QuantizationError(LlmlabError):
    """GPTQModel failed to quantize, save or load a model."""



def default_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"



def run_dtype(method: str, bits: int, where: str) -> str:
    """The float type GPTQModel runs a method in: float16 on CUDA; on CPU float32 where a float32
    kernel exists (4-bit GPTQ format), else bfloat16 (AWQ, 8-bit)."""
    if where.startswith("cuda"):
        return "float16"
    return "float32" if method != "awq" and bits == 4 else "bfloat16"



def import_gptqmodel() -> Any:
    """GPTQModel, imported with its start-up output kept out of llmlab's."""
    # GPTQModel refuses a CPU pool of one worker ("requests 2 workers but parent 'cpu' only has 1").
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    try:
        with captured_output():
            import gptqmodel
    except ImportError as e:
        raise MissingExtraError("GPTQ/AWQ/RTN quantization", "lab", "gptqmodel") from e
    return gptqmodel



def quantization_config(folder: Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of a folder's config.json when GPTQModel can load it, else None."""
    try:
        cfg = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, json.JSONDecodeError):
        return None
    return cfg if str(cfg.get("quant_method", "")).lower() in ("gptq", "awq") else None


def quantized_params(folder: Path, bits: int) -> int:
    """Number of weights a quantized folder stands for: plain tensors as stored, packed ``qweight``
    tensors unpacked (32 / bits values per int32); scales, zeros and group indices not counted."""
    total = 0
    for k, shape in safetensors.shapes(folder).items():
        if not k.endswith((".qzeros", ".scales", ".g_idx")):
            total += math.prod(shape) * (32 // bits if k.endswith(".qweight") else 1)
    return total


class GPTQModelEngine(HFModel):
    """A GPTQ- or AWQ-format causal LM loaded through GPTQModel."""

    engine = "gptqmodel"

    def __init__(self, path: Path, *, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None):
        Model.__init__(self, path)
        from llmlab.formats.hf import check_hf_folder

        try:
            config = check_hf_folder(path)
        except StoreError as e:
            raise CorruptFileError(e.message, e.hint) from None
        qcfg = quantization_config(path)
        if qcfg is None:
            raise ConfigError(f"'{path.name}' is not a GPTQ or AWQ model (config.json has no GPTQ/AWQ "
                              "quantization_config).", "Load it with the transformers engine.")
        gptqmodel = import_gptqmodel()
        import torch
        from transformers import AutoTokenizer

        self._torch = torch
        self.device = device or default_device()
        method = "awq" if str(qcfg.get("quant_method")).lower() == "awq" else "gptq"
        bits = int(qcfg.get("bits", 4))
        self.dtype = dtype or run_dtype(method, bits, self.device)
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"Unknown dtype '{self.dtype}'.", "Use float32, float16 or bfloat16.")
        self._n_params = quantized_params(path, bits)
        self._n_ctx = n_ctx or int(config.get("max_position_embeddings") or 2048)
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        # packed weights, their dequantized working copies for one layer, activations, torch + GPTQModel
        check_memory(int(size * 1.5) + 600 * MB, f"'{path.name}'",
                     **({"available": torch.cuda.mem_get_info()[0], "where": "GPU memory"}
                        if self.device.startswith("cuda") else {}))
        if self.device == "cpu":
            torch.set_num_threads(settings.threads())
        backend = gptqmodel.BACKEND.AWQ_TORCH if method == "awq" and self.device == "cpu" else gptqmodel.BACKEND.AUTO
        log = None
        try:
            with quiet_loading(), captured_output() as log:
                wrapped = gptqmodel.GPTQModel.load(str(path), device=self.device, dtype=getattr(torch, self.dtype),
                                                   backend=backend, trust_remote_code=False)
        except Exception as e:
            tail = log_tail(log) if log else ""
            raise QuantizationError(f"GPTQModel could not load '{path.name}': {type(e).__name__}: {e}",
                                         f"GPTQModel's last output: {tail} (full log: {log})." if tail else None
                                         ) from e
        self.model = wrapped.model.eval()
        # transformers' own tokenizer class (GPTQModel wraps it), exactly as the source model had it
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        eos: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            eos.update([src] if isinstance(src, int) else (src or []))
        self._eos = eos
        self._cache = None
        self.format = method  # rtn is stored in the GPTQ format
        self.bits = bits
        self.group_size = int(qcfg.get("group_size", -1))

    @property
    def info(self) -> dict:
        return {**super().info, "format": self.format, "bits": self.bits, "group_size": self.group_size}
