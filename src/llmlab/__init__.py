"""llmlab: a workbench for open LLMs.

A notebook needs one import line:

```python
import llmlab
store = llmlab.Store()                                              # ./models (or $LLMLAB_HOME)
llmlab.open_or_build("demo", size="micro", store=store)             # the demo base model, built on CPU
llmlab.tune.tune(llmlab.TuneConfig(model="demo", name="demo-lora", steps=20), store=store)  # a LoRA adapter
print(llmlab.score("demo-lora", store=store, data=["Ada lives in Oslo."], speed_test=False))  # ppl, size
```

``import llmlab`` is cheap: it imports no torch and no engine. The names in ``__all__`` are
imported on first use (PEP 562) from their homes, listed in ``_PUBLIC`` below: the store, the
runtime (``load``, ``SamplingParams``), the scorer, recipes, and each station's config and entry
point, the same ones a recipe step runs (``llmlab.recipes.STEPS``). A station whose entry point has
the station's own name (``tune``, ``merge``, ``quantize``, ``evaluate``, ``export``, ``serve``) is
offered as its package, since ``llmlab.tune`` is that package once it is imported anywhere:
``llmlab.tune.tune(...)``, ``llmlab.merge.merge(...)``, ``llmlab.evaluate.evaluate(...)``.

Each station lives in its own module and imports its heavy dependencies when called:

- ``llmlab.store``: the artifact store (manifests, lineage, atomic writes)
- ``llmlab.world``: the seeded synthetic demo world (facts, texts, questions, documents)
- ``llmlab.build``: the demo tokenizer and model, trained from scratch on CPU
- ``llmlab.runtime``: one interface to load and run any artifact (transformers, llama.cpp)
- ``llmlab.scoring``: perplexity, KL divergence, token agreement, accuracy, speed, memory
- ``llmlab.recipes``: typed YAML pipelines, ``llmlab run`` and ``llmlab export-script``
- ``llmlab.jobs``: out-of-process jobs with progress events, queue and cancel
- ``llmlab.tracking``: MLflow runs
"""

__version__ = "0.1.0"

import importlib as _importlib
import logging as _logging

from llmlab.noise import NOISY_LOGGERS as _NOISY, quiet_loggers as _quiet_loggers

# torchao (brought in by GPTQModel) logs "Failed to load ..." for its CUDA-only kernels on every
# CPU import of transformers, and torch warns about its enums: noise, not news, for our users.
_quiet_loggers(*_NOISY, level=_logging.ERROR)

# The public names: "module:attribute", or "module" for a station package. Stations are named by
# their package, which re-exports the step's config and function (the same objects as STEPS).
_PUBLIC: dict[str, str] = {
    # the store, the runtime, the scorer
    "Store": "llmlab.store:Store",
    "load": "llmlab.runtime:load",
    "SamplingParams": "llmlab.runtime:SamplingParams",
    "score": "llmlab.scoring:score",
    # recipes
    "load_recipe": "llmlab.recipes:load",
    "run_recipe": "llmlab.recipes:run",
    "export_script": "llmlab.recipes:export_script",
    # build: the demo model
    "BuildDemoConfig": "llmlab.build:BuildDemoConfig",
    "build_demo": "llmlab.build:build_demo",
    "open_or_build": "llmlab.build:open_or_build",
    # tune and distill
    "tune": "llmlab.tune",
    "TuneConfig": "llmlab.tune:TuneConfig",
    "DistillConfig": "llmlab.tune:DistillConfig",
    "distill": "llmlab.tune.distill:distill",
    # merge
    "merge": "llmlab.merge",
    "MergeConfig": "llmlab.merge:MergeConfig",
    # dequantize: a GGUF made trainable
    "dequantize": "llmlab.dequantize",
    "DequantizeConfig": "llmlab.dequantize:DequantizeConfig",
    # quantize and GGUF adapters
    "quantize": "llmlab.quantize",
    "QuantizeConfig": "llmlab.quantize:QuantizeConfig",
    "GGUFAdapterConfig": "llmlab.quantize:GGUFAdapterConfig",
    "convert_adapter": "llmlab.quantize:convert_adapter",
    # retrieval and agents
    "IndexConfig": "llmlab.rag.index:IndexConfig",
    "build_index": "llmlab.rag.index:build_index",
    "AgentConfig": "llmlab.agents.step:AgentConfig",
    "build_agent": "llmlab.agents.step:build_agent",
    "Agent": "llmlab.agents:Agent",
    # evaluate, export, serve
    "evaluate": "llmlab.evaluate",
    "EvaluateConfig": "llmlab.evaluate:EvaluateConfig",
    "export": "llmlab.export",
    "ExportConfig": "llmlab.export:ExportConfig",
    "serve": "llmlab.serve",
    "ServeConfig": "llmlab.serve:ServeConfig",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'llmlab' has no attribute '{name}'")
    module, _, attr = target.partition(":")
    value = _importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
        globals()[name] = value  # a station package binds itself here when imported
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
