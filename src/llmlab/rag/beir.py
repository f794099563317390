"""Retrieval evaluation on a BEIR-layout set: ``llmlab eval retrieval --corpus --queries --qrels``.

```python
from llmlab.rag.beir import RetrievalEvalConfig, evaluate_retrieval
report = evaluate_retrieval(RetrievalEvalConfig(
    corpus="data/scifact/corpus.jsonl.gz", queries="data/scifact/dev_queries.jsonl",
    qrels="data/scifact/qrels/dev.tsv", modes=["bm25", "dense", "hybrid"]), store=store)
report["results"]["hybrid"]["ndcg_at_10"]
```

BEIR layout: a corpus JSONL (plain or ``.gz``) of ``{_id, title, text}``, queries JSONL of
``{_id, text}``, and a qrels TSV ``query-id<TAB>corpus-id<TAB>score`` (a header line is allowed).
The corpus is indexed once with the given settings into an ``index`` artifact (default name
``beir-<hash of corpus and settings>``, reused when it exists) unless ``index`` names one; every
mode is then measured at the document level (a document's rank is that of its best chunk):
nDCG@10, recall@k for each ``k`` in ``recall_at``, MRR@10, and query time percentiles.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, NotFoundError
from llmlab.events import Reporter, emit
from llmlab.rag import metrics

if TYPE_CHECKING:
    from llmlab.store import Store


class RetrievalEvalConfig(BaseModel):
    """Options of ``llmlab eval retrieval``."""

    model_config = ConfigDict(extra="forbid")
    corpus: str | None = Field(None, description="BEIR corpus.jsonl(.gz); needed unless 'index' names an index")
    queries: str = Field(description="BEIR queries JSONL ({_id, text} per line)")
    qrels: str = Field(description="BEIR qrels TSV (query-id, corpus-id, score)")
    index: str | None = Field(None, description="an existing index artifact to evaluate instead of indexing the corpus")
    modes: list[str] = Field(["bm25", "dense", "hybrid"], description="search modes to measure")
    fusion: str = Field("weighted", description="hybrid fusion: weighted (min-max normalised scores) or rrf")
    rrf_k: float = Field(60.0, gt=0, description="the k of reciprocal rank fusion")
    weight: float = Field(0.5, ge=0, le=1, description="the dense side's weight in hybrid fusion")
    depth: int = Field(200, ge=1, description="candidates per retriever before fusion")
    recall_at: list[int] = Field([10, 100], description="cut-offs for recall@k")
    embedder: str | None = Field(None, description="embedding model for a new index (default all-MiniLM-L6-v2)")
    chunk_size: int = Field(0, ge=0, description="chunk length in words for a new index (0: whole documents)")
    chunk_overlap: int = Field(0, ge=0, description="chunk overlap in words for a new index")
    reranker: str | None = Field(None, description="a local CrossEncoder folder for hybrid_rerank")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N queries that have judgements")


def _open_text(path: str | Path) -> str:
    from llmlab.data import read_text

    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"The file {p} does not exist.", "Give the path of a BEIR-layout file.")
    return read_text(p)


def load_queries(path: str | Path) -> dict[str, str]:
    """``{query id: text}`` from a BEIR queries JSONL (plain or .gz)."""
    from llmlab.data import parse_jsonl

    out = {}
    for n, rec in enumerate(parse_jsonl(_open_text(path), Path(path)), 1):
        if "_id" not in rec or not isinstance(rec.get("text"), str):
            raise ConfigError(f"{path}: query {n} is not a BEIR query ({{\"_id\": ..., \"text\": ...}}).")
        out[str(rec["_id"])] = rec["text"]
    if not out:
        raise ConfigError(f"{path} holds no queries.")
    return out


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: grade}}`` from a BEIR qrels TSV (header line optional)."""
    out: dict[str, dict[str, int]] = {}
    for n, line in enumerate(_open_text(path).splitlines(), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if not parts or not line.strip():
            continue
        if n == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue  # header
        if len(parts) not in (3, 4) or not parts[-1].lstrip("-").isdigit():
            raise ConfigError(f"{path} line {n} is not 'query-id<TAB>corpus-id<TAB>score'.")
        qid, did, grade = parts[0], parts[-2], int(parts[-1])
        out.setdefault(qid, {})[did] = grade
    if not out:
        raise ConfigError(f"{path} holds no judgements.")
    return out


def corpus_index(cfg: RetrievalEvalConfig, store: Store, progress: Reporter | None = None) -> str:
    """The name of an index of ``cfg.corpus`` with ``cfg``'s settings (built once, then reused)."""
    from llmlab.rag.embedder import load_embedder
    from llmlab.rag.index import IndexConfig, build_index

    if cfg.index:
        return cfg.index
    if not cfg.corpus:
        raise ConfigError("Give either 'corpus' (a BEIR corpus.jsonl(.gz)) or 'index' (an index artifact).")
    path = Path(cfg.corpus).expanduser()
    if not path.is_file():
        raise NotFoundError(f"The corpus file {path} does not exist.", "Give a BEIR corpus.jsonl or corpus.jsonl.gz.")
    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps([load_embedder(cfg.embedder).sha256, cfg.chunk_size, cfg.chunk_overlap]).encode())
    name = f"beir-{h.hexdigest()[:12]}"
    if not store.exists(name):
        build_index(IndexConfig(name=name, source=str(path), embedder=cfg.embedder, chunk_size=cfg.chunk_size,
                                chunk_overlap=cfg.chunk_overlap), store=store, progress=progress)
    return name


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def score_run(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]],
              recall_at: list[int]) -> dict[str, float]:
    """Mean nDCG@10, recall@k and MRR@10 of ranked document ids per query."""
    n = len(rankings)
    out = {"ndcg_at_10": sum(metrics.ndcg_at_k(r, qrels[q], 10) for q, r in rankings.items()) / n}
    for k in recall_at:
        out[f"recall_at_{k}"] = sum(metrics.recall_at_k(r, qrels[q], k) for q, r in rankings.items()) / n
    out["mrr_at_10"] = sum(metrics.mrr(r, qrels[q], 10) for q, r in rankings.items()) / n
    return {k: round(v, 4) for k, v in out.items()}


def evaluate_retrieval(cfg: RetrievalEvalConfig, *, store: Store | None = None,
                       progress: Reporter | None = None) -> dict[str, Any]:
    """Index the corpus (or use ``cfg.index``) and measure every mode; a JSON-ready report."""
    from llmlab.rag.search import MODES, Searcher
    from llmlab.store import Store

    store = store or Store()
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise ConfigError(f"Unknown search mode '{bad[0]}'.", f"Use any of: {', '.join(MODES)}.")
    queries = load_queries(cfg.queries)
    qrels = load_qrels(cfg.qrels)
    judged = [q for q in queries if q in qrels]
    if not judged:
        raise ConfigError(f"No query in {cfg.queries} has a judgement in {cfg.qrels}.",
                          "Check that both files come from the same set and split.")
    judged = judged[:cfg.limit]
    name = corpus_index(cfg, store, progress)
    searcher = Searcher.open(name, store=store, reranker=cfg.reranker)
    k = max([*cfg.recall_at, 10])
    results: dict[str, Any] = {}
    for mode in cfg.modes:
        rankings: dict[str, list[str]] = {}
        times: list[float] = []
        for i, q in enumerate(judged):
            t0 = time.perf_counter()
            hits = searcher.search_documents(queries[q], k=k, mode=mode, fusion=cfg.fusion, rrf_k=cfg.rrf_k,
                                             weight=cfg.weight, depth=cfg.depth)
            times.append((time.perf_counter() - t0) * 1000)
            rankings[q] = [h.doc_id for h in hits]
            emit(progress, "progress", task=f"eval {mode}", done=i + 1, total=len(judged))
        results[mode] = {**score_run(rankings, qrels, cfg.recall_at),
                         "query_ms_p50": round(percentile(times, 0.5), 2),
                         "query_ms_p95": round(percentile(times, 0.95), 2)}
    searcher.close()
    return {"index": name, "queries": len(judged), "settings": cfg.model_dump(mode="json"), "results": results}


def eval_retrieval_step(cfg: RetrievalEvalConfig, *, store: Store | None = None, progress: Reporter | None = None,
                        overwrite: bool = False, step: Any = None) -> dict[str, Any]:
    """The ``eval-retrieval`` recipe step: ``evaluate_retrieval`` with the step runner's signature."""
    return evaluate_retrieval(cfg, store=store, progress=progress)
