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
``KIND_ENGINES``. Nothing heavy is imported until a model is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError, NotFoundError
from llmlab.runtime.base import CorruptFileError, Message, Model, SamplingParams, check_memory

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

__all__ = ["ENGINES", "KIND_ENGINES", "CorruptFileError", "Engine", "Message", "Model", "SamplingParams",
           "check_memory", "load", "resolve"]


@dataclass(frozen=True)
class Engine:
    """Where an engine's Model class lives and what it loads."""

    cls: str  # "module:Class", imported on first use
    target: str  # "file:.gguf" (one file with this suffix) or "folder" (a model folder)
    summary: str

    def load_class(self) -> type[Model]:
        module, _, name = self.cls.partition(":")
        return getattr(importlib.import_module(module), name)


ENGINES: dict[str, Engine] = {
    "transformers": Engine("llmlab.runtime.hf:HFModel", "folder",
                           "Hugging Face folders with safetensors (CPU fp32, CUDA bf16)"),
    "llama.cpp": Engine("llmlab.runtime.llamacpp:LlamaCppModel", "file:.gguf",
                        "GGUF files through llama-cpp-python"),
    "gptqmodel": Engine("llmlab.runtime.gptq:GPTQModelEngine", "folder",
                        "GPTQ, AWQ and RTN folders through GPTQModel (CPU torch kernels, CUDA)"),
}
# Artifact kind -> engine; kinds not listed are decided by their files.
KIND_ENGINES: dict[str, str] = {
    "base": "transformers", "full": "transformers", "merged": "transformers", "distilled": "transformers",
    "adapter": "transformers", "gguf": "llama.cpp", "gguf-adapter": "llama.cpp",
    "gptq": "gptqmodel", "awq": "gptqmodel", "rtn": "gptqmodel",
}
_ALIASES = {"hf": "transformers", "llamacpp": "llama.cpp", "llama_cpp": "llama.cpp", "gguf": "llama.cpp",
            "gptq": "gptqmodel", "awq": "gptqmodel"}


def _engine_for_path(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".gguf":
            return "llama.cpp"
        raise ConfigError(f"'{path}' is not a model llmlab can load.",
                          "Give a .gguf file, a Hugging Face folder with safetensors, or an artifact name.")
    if any(path.glob("*.safetensors")):
        from llmlab.gptq import quantization_config

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
    if artifact is not None:
        path = artifact.path
        if artifact.kind == "adapter":  # base + adapter merged once, cached by content hash
            from llmlab.tune import merged_folder

            path = merged_folder(artifact, store or Store(artifact.path.parent))
        elif artifact.kind == "gguf-adapter":  # its base GGUF; load() passes the adapter as lora_path
            from llmlab.gguf_adapter import base_file

            path = base_file(artifact, store or Store(artifact.path.parent))
    if engine is not None:
        name = _ALIASES.get(engine, engine)
        if name not in ENGINES:
            raise ConfigError(f"Unknown engine '{engine}'.", f"Use one of: {', '.join(ENGINES)}.")
    elif artifact is not None and artifact.kind in KIND_ENGINES:
        name = KIND_ENGINES[artifact.kind]
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
    ``lora_scale``)."""
    path, name, artifact = resolve(source, store=store, engine=engine)
    if artifact is not None and artifact.kind == "gguf-adapter":
        options.setdefault("lora_path", artifact.file(".gguf"))
    model = ENGINES[name].load_class()(path, **options)
    model.artifact = artifact
    return model
