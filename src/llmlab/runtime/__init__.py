"""One interface to load and run any model artifact.

```python
from llmlab.runtime import load, SamplingParams
with load("demo") as m:                              # store name, Artifact, HF folder or .gguf path
    m.chat([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))
    m.logprobs(m.tokenize("Once upon a time", add_special=True))
```

The engine is chosen from the artifact's kind, else from the files (a ``.gguf`` file goes to
llama.cpp, a folder of safetensors to transformers), or forced with ``engine=``. Engines live in
``ENGINES``: adding one (GPTQModel for ``gptq``/``awq``) is one entry there, plus its kinds in
``KIND_LOADERS``. A kind that is not one plain set of weights names, in its loader, the runtime
function that finds what to load (an adapter merged into its base, a GGUF adapter's base file):
the runtime never calls back into the station that made the artifact. Nothing heavy is imported
until a model is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError, CorruptFileError, NotFoundError
from llmlab.runtime.base import Message, Model, SamplingParams, check_memory

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

__all__ = ["ENGINES", "KIND_ENGINES", "KIND_LOADERS", "KindLoader", "CorruptFileError", "Engine", "Message", "Model", "SamplingParams",
           "check_memory", "load", "resolve"]


@dataclass(frozen=True)
class Engine:
    """Where an engine's Model class lives and what it loads."""

    cls: str  # "module:Class", imported on first use
    target: str  # "file:.gguf" (one file with this suffix) or "folder" (a model folder)
    summary: str

    def load_class(self) -> type[Model]:
        return _import(self.cls)


@dataclass(frozen=True)
class KindLoader:
    """How the runtime loads an artifact of one kind: its engine, and for kinds that are not one plain
    set of weights, the function that finds what to load (``"module:function"``, called with the
    artifact and its store) and whether the artifact itself is a llama.cpp LoRA applied on top."""

    engine: str
    locate: str | None = None
    lora: bool = False

    def path(self, artifact: Artifact, store: Store) -> Path:
        return _import(self.locate)(artifact, store) if self.locate else artifact.path


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


ENGINES: dict[str, Engine] = {
    "transformers": Engine("llmlab.runtime.hf:HFModel", "folder",
                           "Hugging Face folders with safetensors (CPU fp32, CUDA bf16)"),
    "llama.cpp": Engine("llmlab.runtime.llamacpp:LlamaCppModel", "file:.gguf",
                        "GGUF files through llama-cpp-python"),
    "gptqmodel": Engine("llmlab.runtime.gptq:GPTQModelEngine", "folder",
                        "GPTQ, AWQ and RTN folders through GPTQModel (CPU torch kernels, CUDA)"),
}
# Artifact kind -> how to load it; kinds not listed are decided by their files.
KIND_LOADERS: dict[str, KindLoader] = {
    **{kind: KindLoader("transformers") for kind in ("base", "full", "merged", "distilled")},
    "adapter": KindLoader("transformers", "llmlab.runtime.adapters:merged_folder"),  # merged once, cached
    "gguf": KindLoader("llama.cpp"),
    "gguf-adapter": KindLoader("llama.cpp", "llmlab.runtime.adapters:gguf_adapter_base", lora=True),
    **{kind: KindLoader("gptqmodel") for kind in ("gptq", "awq", "rtn")},
}
KIND_ENGINES: dict[str, str] = {kind: loader.engine for kind, loader in KIND_LOADERS.items()}
_ALIASES = {"hf": "transformers", "llamacpp": "llama.cpp", "llama_cpp": "llama.cpp", "gguf": "llama.cpp",
            "gptq": "gptqmodel", "awq": "gptqmodel"}


def _engine_for_path(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".gguf":
            return "llama.cpp"
        raise ConfigError(f"'{path}' is not a model llmlab can load.",
                          "Give a .gguf file, a Hugging Face folder with safetensors, or an artifact name.")
    if any(path.glob("*.safetensors")):
        from llmlab.runtime.gptq import quantization_config

        return "gptqmodel" if quantization_config(path) else "transformers"
    if len(list(path.glob("*.gguf"))) == 1:
        return "llama.cpp"
    raise ConfigError(f"'{path}' holds neither safetensors weights nor a single .gguf file.",
                      "Give a Hugging Face model folder, a .gguf file or an artifact name.")


def resolve(source: str | Path | Artifact, *, store: Store | None = None,
            engine: str | None = None) -> tuple[Path, str, Artifact | None]:
    """Where ``source`` lives on disk, which engine runs it, and its store artifact (if any)."""
    from llmlab.store import Artifact, Store

    artifact: Artifact | None = None
    if isinstance(source, Artifact):
        artifact = source
    elif isinstance(source, Path) or "/" in str(source) or str(source).endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.exists():
            raise NotFoundError(f"'{path}' does not exist.", "Give an artifact name, a model folder or a .gguf file.")
    else:
        store = store or Store()
        if store.exists(str(source)) or not Path(source).exists():
            artifact = store.get(str(source))  # raises NotFoundError listing known names
        else:
            path = Path(source)
    loader = KIND_LOADERS.get(artifact.kind) if artifact is not None else None
    if artifact is not None:
        path = loader.path(artifact, store or Store(artifact.path.parent)) if loader else artifact.path
    if engine is not None:
        name = _ALIASES.get(engine, engine)
        if name not in ENGINES:
            raise ConfigError(f"Unknown engine '{engine}'.", f"Use one of: {', '.join(ENGINES)}.")
    elif loader is not None:
        name = loader.engine
    else:
        name = _engine_for_path(path)
    target = ENGINES[name].target
    if target.startswith("file:") and path.is_dir():
        suffix = target[5:]
        files = [path / rel for rel in artifact.manifest.files if rel.endswith(suffix)] if artifact \
            else sorted(path.glob(f"*{suffix}"))
        if len(files) != 1:
            raise ConfigError(f"The {name} engine needs one '{suffix}' file in '{path}', found {len(files)}.",
                              "Convert the model first (the Quantize station) or point at the file.")
        path = files[0]
    elif target == "folder" and path.is_file():
        raise ConfigError(f"The {name} engine loads model folders, not the file '{path.name}'.",
                          "Use the llama.cpp engine for .gguf files.")
    return path, name, artifact


def load(source: str | Path | Artifact, *, engine: str | None = None, store: Store | None = None,
         **options: Any) -> Model:
    """Load a model: an artifact name (in ``store``, default ``Store()``), an Artifact, a Hugging Face
    folder or a ``.gguf`` file. ``engine`` forces ``transformers`` or ``llama.cpp``; ``options`` go to
    the engine (``n_ctx``; transformers: ``device``, ``dtype``; llama.cpp: ``n_gpu_layers``, ``lora_path``,
    ``lora_scale``, ``flash_attn``)."""
    path, name, artifact = resolve(source, store=store, engine=engine)
    loader = KIND_LOADERS.get(artifact.kind) if artifact is not None else None
    if artifact is not None and loader is not None and loader.lora:
        options.setdefault("lora_path", artifact.file(".gguf"))
    if name != "llama.cpp" and options.pop("flash_attn", False):  # off: transformers' own attention
        raise ConfigError(f"flash_attn is a llama.cpp option, and '{path.name}' runs on {name}.",
                          "Serve a GGUF export of the model, or leave flash attention off.")
    model = ENGINES[name].load_class()(path, **options)
    model.artifact = artifact
    return model
