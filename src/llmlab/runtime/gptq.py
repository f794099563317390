"""The GPTQModel engine: GPTQ, AWQ and RTN folders written by ``llmlab.gptq`` (or any GPTQ/AWQ folder).

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

from pathlib import Path

from llmlab import settings
from llmlab.errors import ConfigError, StoreError
from llmlab.runtime.base import MB, CorruptFileError, Model, check_memory
from llmlab.runtime.hf import HFModel, _quiet_loading


class GPTQModelEngine(HFModel):
    """A GPTQ- or AWQ-format causal LM loaded through GPTQModel."""

    engine = "gptqmodel"

    def __init__(self, path: Path, *, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None):
        Model.__init__(self, path)
        from llmlab import gptq
        from llmlab.importing import check_hf_folder

        try:
            config = check_hf_folder(path)
        except StoreError as e:
            raise CorruptFileError(e.message, e.hint) from None
        qcfg = gptq.quantization_config(path)
        if qcfg is None:
            raise ConfigError(f"'{path.name}' is not a GPTQ or AWQ model (config.json has no GPTQ/AWQ "
                              "quantization_config).", "Load it with the transformers engine.")
        gptqmodel = gptq._import_gptqmodel()
        import torch
        from transformers import AutoTokenizer

        self._torch = torch
        self.device = device or gptq.device()
        method = "awq" if str(qcfg.get("quant_method")).lower() == "awq" else "gptq"
        bits = int(qcfg.get("bits", 4))
        self.dtype = dtype or gptq.run_dtype(method, bits, self.device)
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"Unknown dtype '{self.dtype}'.", "Use float32, float16 or bfloat16.")
        self._n_params = gptq.quantized_params(path, bits)
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
            with _quiet_loading(), gptq.captured_output() as log:
                wrapped = gptqmodel.GPTQModel.load(str(path), device=self.device, dtype=getattr(torch, self.dtype),
                                                   backend=backend, trust_remote_code=False)
        except Exception as e:
            tail = gptq.log_tail(log) if log else ""
            raise gptq.QuantizationError(f"GPTQModel could not load '{path.name}': {type(e).__name__}: {e}",
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
