"""The Quantize station: GGUF (every llama.cpp type, importance matrix), GPTQ, AWQ, RTN, GGUF adapters.

```python
from llmlab.quantize import QuantizeConfig, quantize
quantize(QuantizeConfig(model="demo-merged", types=["q8_0", "q4_k_m", "gptq"]), store=store)
```

- ``step``: the config, ``quantize`` (the recipe step) and the quality table of the variants;
- ``gguf``: the HF -> GGUF converter (from llama-cpp-python's sdist), llama.cpp's quantizer, the
  importance matrix;
- ``gptq``: GPTQ, AWQ and RTN through GPTQModel;
- ``adapter``: a LoRA adapter as a GGUF adapter that llama.cpp applies to a base GGUF (``gguf-adapter``).
"""

from llmlab.quantize.adapter import GGUFAdapterConfig, convert_adapter
from llmlab.quantize.step import QuantizeConfig, quality_table, quantize

__all__ = ["GGUFAdapterConfig", "QuantizeConfig", "convert_adapter", "quality_table", "quantize"]
