"""An index (and an agent) inside a bundle, written at export time (``llmlab.serve.bundle.open_rag``
opens them in the bundle's server).

```python
spec.update(add_index(bundle_dir, index_artifact, store))   # index/ + embedder/ (ONNX, checked)
```

``index/`` is a copy of the index artifact's folder (manifest included). ``embedder/`` is the index's
sentence-transformers model exported to ONNX; the export is refused unless the ONNX embeddings of
every chunk match the index's stored vectors (cosine >= 0.999).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit
from llmlab.serve.bundle import EMBEDDER_DIR, INDEX_DIR

if TYPE_CHECKING:
    from llmlab.rag.onnx_embedder import OnnxEmbedder
    from llmlab.store import Artifact, Store



def add_index(bundle: Path, index: Artifact, store: Store, progress: Reporter | None = None) -> dict[str, Any]:
    """Copy ``index`` into ``bundle/index`` and its embedder as ONNX into ``bundle/embedder``; the
    bundle.json entries that describe them."""
    from llmlab.rag.embedder import load_embedder
    from llmlab.rag.index import CHUNKS, VECTORS, load_vectors, read_chunks
    from llmlab.rag.onnx_embedder import MIN_COSINE, EmbedderParityError, OnnxEmbedder, export_onnx
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
