"""Searching an index: dense (Chroma), BM25 (bm25s), hybrid fusion, metadata filters, rerank.

```python
from llmlab.rag.search import Searcher
s = Searcher.open("demo-index", store=store)
hits = s.search("Where does Bodo live?", k=5, mode="hybrid")            # weighted fusion of normalised scores
hits = s.search("...", mode="hybrid", fusion="rrf", rrf_k=60)          # reciprocal rank fusion
hits = s.search("...", mode="bm25", filters={"type": "pdf"})           # Chroma `where` syntax
```

Modes: ``dense`` (cosine similarity in the index's Chroma collection), ``bm25``, ``hybrid``
(each retriever returns ``depth`` candidates, 200 by default; they are fused by a weighted sum of
min-max normalised scores, ``weight`` 0.5 on the dense side, the default, or by reciprocal rank,
``sum 1/(rrf_k + rank)``; the defaults won on SciFact's training claims: see
benchmarks/results/retrieval.json) and
``hybrid_rerank`` (hybrid candidates re-scored by a local sentence-transformers CrossEncoder folder
given as ``reranker``; none ships offline, so without one it raises ``RerankerNotAvailable``).

Filters use Chroma's ``where`` syntax on chunk metadata (``{"type": "pdf"}``, ``{"year": {"$gte":
2020}}``, ``$and``/``$or``, ``$eq $ne $gt $gte $lt $lte $in $nin``): Chroma applies them to dense
search, and the same filter is evaluated here on BM25 results. Every chunk has ``doc_id``, ``title``,
``source`` and ``position``, plus ``type`` and, for JSONL documents, their scalar fields.

Chroma rewrites its files whenever a collection is opened, which would break the artifact's
hashes; so searches open a working copy of the artifact's ``chroma/`` folder under the store's
``.cache/chroma/<name>-<content hash>/`` (made once per index version; older copies are removed).
An index is refused when the embedder given to ``open`` (or the one its Chroma collection names)
is not the one it was built with.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError
from llmlab.rag import index as idx

if TYPE_CHECKING:
    import numpy as np

    from llmlab.rag.embedder import Embedder
    from llmlab.store import Artifact, Store

MODES = ("dense", "bm25", "hybrid", "hybrid_rerank")
FUSIONS = ("rrf", "weighted")
_OPS = {"$eq": lambda a, b: a == b, "$ne": lambda a, b: a != b, "$gt": lambda a, b: a is not None and a > b,
        "$gte": lambda a, b: a is not None and a >= b, "$lt": lambda a, b: a is not None and a < b,
        "$lte": lambda a, b: a is not None and a <= b, "$in": lambda a, b: a in b, "$nin": lambda a, b: a not in b}


class RerankerNotAvailable(ConfigError):
    """``hybrid_rerank`` was asked for but no local reranker model was given."""


@dataclass
class Hit:
    chunk_id: str
    doc_id: str
    title: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def matches(meta: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether chunk metadata satisfies a Chroma ``where`` filter (the subset listed in the module doc)."""
    for key, cond in where.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list):
                raise ConfigError(f"'{key}' in a filter needs a list of filters.", 'E.g. {"$or": [{"a": 1}, {"b": 2}]}')
            results = [matches(meta, c) for c in cond]
            if not (all(results) if key == "$and" else any(results)):
                return False
        elif isinstance(cond, dict):
            for op, value in cond.items():
                if op not in _OPS:
                    raise ConfigError(f"Unknown filter operator '{op}'.", f"Use one of: {', '.join(_OPS)}.")
                try:
                    if not _OPS[op](meta.get(key), value):
                        return False
                except TypeError:
                    return False
        elif meta.get(key) != cond:
            return False
    return True


class Searcher:
    """Search one index artifact. Open with ``Searcher.open(name, store=store)``."""

    def __init__(self, artifact: Artifact, embedder: Embedder, chunks: list[idx.Chunk], bm25: Any,
                 collection: Any, reranker: str | None = None):
        self.artifact = artifact
        self.embedder = embedder
        self.chunks = chunks
        self.bm25 = bm25
        self.collection = collection
        self.reranker_path = reranker
        self._reranker: Any = None
        self._client: Any = None
        self._row = {c.chunk_id: i for i, c in enumerate(chunks)}
        self._per_doc = max(Counter(c.doc_id for c in chunks).values(), default=1)  # most chunks of one document

    @classmethod
    def open(cls, name: str, *, store: Store | None = None, embedder: str | Any | None = None,
             reranker: str | None = None) -> Searcher:
        """Open index ``name``; ``embedder`` (optional) must be the one it was built with: a name or folder,
        or a loaded embedder object (``name``, ``sha256``, ``path``, ``encode``), such as a bundle's ONNX one."""
        import bm25s

        from llmlab.rag.embedder import load_embedder
        from llmlab.store import Store

        store = store or Store()
        art = idx.index_artifact(store, name)
        info = art.manifest.info
        built = info.get("embedder", {})
        given = embedder if embedder is not None and not isinstance(embedder, str) else None
        if embedder is not None:
            asked = given or load_embedder(embedder)
            if asked.sha256 != built.get("sha256"):
                raise ConfigError(
                    f"Index '{name}' was built with the embedder '{built.get('name')}' (sha256 "
                    f"{str(built.get('sha256'))[:12]}), not {asked.describe()}.",
                    "Search it with its own embedder, or rebuild the index with the new one.")
        emb = given or load_embedder(None if built.get("packaged") else built.get("path"))
        if emb.sha256 != built.get("sha256"):
            raise ConfigError(f"The embedder files of index '{name}' changed since it was built "
                              f"('{built.get('name')}' {str(built.get('sha256'))[:12]} is now {emb.sha256[:12]}).",
                              "Rebuild the index (`llmlab index --force ...`).")
        client, collection = _open_collection(store, art, emb)
        chunks = idx.read_chunks(art.path / idx.CHUNKS)
        bm25 = bm25s.BM25.load(str(art.path / idx.BM25_DIR), mmap=False, allow_pickle=False)
        searcher = cls(art, emb, chunks, bm25, collection, reranker)
        searcher._client = client
        return searcher

    # ----- the retrievers -----
    def dense(self, query: str, n: int, filters: dict[str, Any] | None = None) -> list[tuple[int, float]]:
        """(chunk row, cosine similarity) of the ``n`` nearest chunks."""
        n = min(n, len(self.chunks))
        if n <= 0:
            return []
        vec = self.embedder.encode([query])
        res = self.collection.query(query_embeddings=vec, n_results=n, where=filters or None,
                                    include=["distances"])
        return [(self._row[i], 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0])]

    def bm25_scores(self, query: str) -> np.ndarray | None:
        words = [w for w in idx.bm25_tokenize([query], ids=False)[0] if w]
        return self.bm25.get_scores(words) if words else None

    def bm25_search(self, query: str, n: int, filters: dict[str, Any] | None = None) -> list[tuple[int, float]]:
        """(chunk row, BM25 score) of the ``n`` best chunks with a positive score."""
        import numpy as np

        scores = self.bm25_scores(query)
        if scores is None:
            return []
        if filters:
            mask = np.array([matches(c.metadata, filters) for c in self.chunks])
            scores = np.where(mask, scores, 0.0)
        n = min(n, int((scores > 0).sum()))
        if n <= 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top]

    def search(self, query: str, k: int = 5, mode: str = "hybrid", filters: dict[str, Any] | None = None, *,
               fusion: str = "weighted", rrf_k: float = 60.0, weight: float = 0.5, depth: int = 200) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (see the module doc for modes and options)."""
        if mode not in MODES:
            raise ConfigError(f"Unknown search mode '{mode}'.", f"Use one of: {', '.join(MODES)}.")
        if fusion not in FUSIONS:
            raise ConfigError(f"Unknown fusion '{fusion}'.", f"Use one of: {', '.join(FUSIONS)}.")
        if k < 1 or depth < 1:
            raise ConfigError(f"k ({k}) and depth ({depth}) must be at least 1.")
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"The dense weight {weight} must lie between 0 and 1.")
        if filters is not None and not isinstance(filters, dict):
            raise ConfigError("A filter is a mapping in Chroma's where syntax.", 'E.g. {"type": "pdf"}.')
        if mode == "hybrid_rerank" and not self.reranker_path:
            raise RerankerNotAvailable(
                "hybrid_rerank is not available: no local cross-encoder reranker was given (none ships offline).",
                "Pass reranker=<folder of a sentence-transformers CrossEncoder>, or use mode 'hybrid'.")
        if not query.strip():
            return []
        if mode == "dense":
            ranked = self.dense(query, k, filters)
        elif mode == "bm25":
            ranked = self.bm25_search(query, k, filters)
        else:
            n = max(depth, k)
            ranked = fuse(self.dense(query, n, filters), self.bm25_search(query, n, filters),
                          fusion=fusion, rrf_k=rrf_k, weight=weight)
            if mode == "hybrid_rerank":
                ranked = self._rerank(query, ranked[:n])
        return [self._hit(i, s) for i, s in ranked[:k]]

    def search_documents(self, query: str, k: int = 10, **options: Any) -> list[Hit]:
        """The best chunk of each of the ``k`` best documents (for document-level evaluation)."""
        out: dict[str, Hit] = {}
        for hit in self.search(query, k=k if self._per_doc == 1 else k * min(self._per_doc, 3), **options):
            out.setdefault(hit.doc_id, hit)
        return list(out.values())[:k]

    def _rerank(self, query: str, ranked: list[tuple[int, float]]) -> list[tuple[int, float]]:
        if self._reranker is None:
            from pathlib import Path

            from sentence_transformers import CrossEncoder

            if not Path(self.reranker_path).is_dir():
                raise RerankerNotAvailable(f"The reranker folder '{self.reranker_path}' is not there.",
                                           "Give a local sentence-transformers CrossEncoder folder.")
            self._reranker = CrossEncoder(self.reranker_path, device="cpu", trust_remote_code=False,
                                          local_files_only=True)
        scores = self._reranker.predict([(query, self.chunks[i].indexed_text) for i, _ in ranked],
                                        show_progress_bar=False)
        return sorted(((i, float(s)) for (i, _), s in zip(ranked, scores)), key=lambda t: -t[1])

    def _hit(self, row: int, score: float) -> Hit:
        c = self.chunks[row]
        return Hit(c.chunk_id, c.doc_id, c.title, c.text, round(score, 6), dict(c.metadata))

    def close(self) -> None:
        """Release the Chroma client (its files can then be removed)."""
        if self._client is not None:
            idx.release_chroma(self._client)
            self._client = None


def fuse(dense: list[tuple[int, float]], sparse: list[tuple[int, float]], *, fusion: str = "rrf",
         rrf_k: float = 60.0, weight: float = 0.5) -> list[tuple[int, float]]:
    """Fuse two ranked lists of (row, score): reciprocal rank fusion or weighted normalised scores."""
    total: dict[int, float] = {}
    if fusion == "rrf":
        for ranked, w in ((dense, weight), (sparse, 1.0 - weight)):
            for rank, (row, _) in enumerate(ranked, 1):
                total[row] = total.get(row, 0.0) + 2.0 * w / (rrf_k + rank)
    else:
        for ranked, w in ((dense, weight), (sparse, 1.0 - weight)):
            if not ranked:
                continue
            hi, lo = ranked[0][1], min(s for _, s in ranked)
            span = (hi - lo) or 1.0
            for row, s in ranked:
                total[row] = total.get(row, 0.0) + w * (s - lo) / span
    return sorted(total.items(), key=lambda t: (-t[1], t[0]))


def _open_collection(store: Store, art: Artifact, embedder: Embedder) -> tuple[Any, Any]:
    from llmlab.rag.embedder import chroma_embedding

    chroma = art.manifest.info.get("chroma", {})
    if chroma.get("mode") == "server":
        client = idx.chroma_client(chroma.get("url"))
    else:
        work = store.root / ".cache" / "chroma" / f"{art.name}-{art.content_hash[:24]}"
        if not work.is_dir():  # a private copy, renamed into place so parallel openers never see half of one
            for stale in work.parent.glob(f"{art.name}-*"):  # copies of earlier versions of this index
                if re.fullmatch(r"[0-9a-f]{24}", stale.name[len(art.name) + 1:]):
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = work.with_name(f".{work.name}.{uuid.uuid4().hex[:8]}")
            shutil.copytree(art.path / idx.CHROMA_DIR, tmp)
            try:
                tmp.rename(work)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished its copy first
        client = idx.chroma_client(None, work)
    try:
        col = client.get_collection(chroma.get("collection", idx.COLLECTION),
                                    embedding_function=chroma_embedding(embedder))
    except Exception as e:  # chromadb raises NotFoundError/ValueError depending on the client
        raise ConfigError(f"The Chroma collection of index '{art.name}' cannot be opened ({type(e).__name__}: {e}).",
                          "Rebuild the index (`llmlab index --force ...`).") from None
    made_with = (col.metadata or {}).get("embedder_sha256")
    if made_with != embedder.sha256:
        raise ConfigError(
            f"The Chroma collection of index '{art.name}' was made with the embedder "
            f"'{(col.metadata or {}).get('embedder')}' ({str(made_with)[:12]}), not {embedder.describe()}.",
            "Rebuild the index with one embedder (`llmlab index --force ...`).")
    return client, col
