"""An index (and an agent) inside a bundle: written at export time, opened by the bundle's server.

```python
spec.update(add_index(bundle_dir, index_artifact, store))   # index/ + embedder/ (ONNX, checked)
parts = open_rag(bundle_dir, spec, model)                    # in the server: embedder, searcher, agent
parts.embedder.encode(["a query"]); parts.agent.ask("Where does Bodo live?")
```

``index/`` is a copy of the index artifact's folder (manifest included). ``embedder/`` is the index's
sentence-transformers model exported to ONNX; the export is refused unless the ONNX embeddings of
every chunk match the index's stored vectors (cosine >= 0.999). The server opens the index as an
artifact of a private working store under ``$LLMLAB_HOME/.serve/bundles/`` (Chroma rewrites files
it opens, and a bundle's files must stay as hashed) and searches it with the ONNX embedder.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab import settings
from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.export.onnx_embedder import OnnxEmbedder
    from llmlab.runtime import Model
    from llmlab.store import Artifact, Store

INDEX_DIR = "index"
EMBEDDER_DIR = "embedder"


def add_index(bundle: Path, index: Artifact, store: Store, progress: Reporter | None = None) -> dict[str, Any]:
    """Copy ``index`` into ``bundle/index`` and its embedder as ONNX into ``bundle/embedder``; the
    bundle.json entries that describe them."""
    from llmlab.export.onnx_embedder import MIN_COSINE, EmbedderParityError, OnnxEmbedder, export_onnx
    from llmlab.rag.embedder import load_embedder
    from llmlab.rag.index import CHUNKS, VECTORS, load_vectors, read_chunks
    from llmlab.store import METRICS

    built = index.manifest.info.get("embedder", {})
    embedder = load_embedder(None if built.get("packaged") else built.get("path"))
    if embedder.sha256 != built.get("sha256"):
        raise ConfigError(f"The embedder files of index '{index.name}' changed since it was built.",
                          "Rebuild the index (`llmlab index --force ...`), then export again.")
    shutil.copytree(index.path, bundle / INDEX_DIR, ignore=shutil.ignore_patterns(METRICS))
    chunks = read_chunks(index.path / CHUNKS)
    emit(progress, "log", message=f"embedder {embedder.describe()} -> ONNX, checked on {len(chunks)} chunks")
    info = export_onnx(embedder, bundle / EMBEDDER_DIR)
    onnx = OnnxEmbedder.open(bundle / EMBEDDER_DIR)
    worst = lowest_cosine(load_vectors(index.path / VECTORS), onnx, [c.indexed_text for c in chunks], progress)
    if worst < MIN_COSINE:
        raise EmbedderParityError(
            f"The ONNX embedder gives other vectors than index '{index.name}' holds (lowest cosine {worst:.5f} "
            f"< {MIN_COSINE}).", "Nothing was exported. Rebuild the index, or check onnxruntime.")
    return {"index": {"folder": INDEX_DIR, "name": index.name, "content_hash": index.content_hash,
                      "chunks": len(chunks)},
            "embedder": {"folder": EMBEDDER_DIR, "name": info["name"], "sha256": info["sha256"],
                         "runtime": "onnxruntime", "dim": info["dim"], "min_cosine_seen": round(worst, 6)}}


def lowest_cosine(vectors: Any, onnx: OnnxEmbedder, texts: list[str], progress: Reporter | None = None,
                  batch: int = 256) -> float:
    """The lowest cosine between the stored ``vectors`` and ``onnx``'s embeddings of ``texts`` (same order)."""
    import numpy as np

    worst = 1.0
    for start in range(0, len(texts), batch):
        got = onnx.encode(texts[start:start + batch])
        worst = min(worst, float(np.min(np.sum(got * vectors[start:start + len(got)], axis=1))))
        emit(progress, "progress", task="check embedder", done=start + len(got), total=len(texts))
    return worst


@dataclass
class BundleRag:
    """What a bundle with an index serves beside its model."""

    embedder: OnnxEmbedder
    searcher: Any  # llmlab.rag.search.Searcher
    agent: Any = None  # llmlab.agents.graph.Agent
    agent_name: str | None = None


def open_rag(bundle: Path, spec: dict[str, Any], model: Model) -> BundleRag:
    """The ONNX embedder, the searcher over the bundled index and the agent (if any) of a verified bundle."""
    from llmlab.export.onnx_embedder import OnnxEmbedder
    from llmlab.rag.search import Searcher
    from llmlab.store import Store

    embedder = OnnxEmbedder.open(bundle / spec["embedder"]["folder"])
    index = spec["index"]
    store = Store(_work_store(bundle, spec))
    searcher = Searcher.open(index["name"], store=store, embedder=embedder)
    if "agent" not in spec:
        return BundleRag(embedder, searcher)
    import yaml

    from llmlab.agents.chat_model import RuntimeChatModel
    from llmlab.agents.graph import Agent
    from llmlab.agents.spec import parse_spec

    agent_spec = parse_spec(yaml.safe_load((bundle / spec["agent"]["spec"]).read_text()),
                            source=f"bundle '{spec['name']}' agent spec")
    llm = RuntimeChatModel(model=model, temperature=agent_spec.model.temperature,
                           max_tokens=agent_spec.model.max_tokens)
    agent = Agent(agent_spec, store=store, llm=llm, searcher=searcher, memory=False)
    return BundleRag(embedder, searcher, agent, spec["agent"]["name"])


def _work_store(bundle: Path, spec: dict[str, Any]) -> Path:
    """A private store holding the bundled index (copied once per index version)."""
    index = spec["index"]
    root = settings.home() / ".serve" / "bundles" / f"{spec['name']}-{index['content_hash'][:16]}"
    target = root / index["name"]
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{index['name']}.{uuid.uuid4().hex[:8]}"
        shutil.copytree(bundle / index["folder"], tmp)
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another server finished its copy first
    return root
