"""Retrieval quality and speed on SciFact (809 claims, 5,183 abstracts) and on the demo world.

Usage: LLMLAB_THREADS=1 python benchmarks/retrieval.py [--demo-home DIR] [--cache DIR]
Writes benchmarks/results/retrieval.json:

- ``scifact``: ``ndcg_at_10``, ``recall_at_100``, ``mrr_at_10`` and ``query_ms_p50/p95`` for ``bm25``,
  ``dense``, ``hybrid`` (the library's default fusion: min-max normalised scores, weight 0.5, 200
  candidates per retriever) and ``hybrid_rrf60`` (plain reciprocal rank fusion, k=60, for
  reference); ``hybrid_rerank`` only if a local reranker exists (none ships: reported as not
  available); ``index_seconds`` for the 5,183 abstracts (from the first build of the cached index);
  ``fusion_grid``: every fusion setting tried on these claims (they are SciFact's training split,
  so tuning on them is fair) with its nDCG@10.
- ``demo_world``: recall@3 of the gold document for the world's ``rag`` questions, per mode.
- ``settings``: embedder identity, threads, library versions, machine load at start and end.

The SciFact index is cached under ``--cache`` (default ``/tmp/llmlab-retrieval-bench``) keyed by the
embedder's sha256, so a rerun does not embed the abstracts again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_HOME = "/tmp/demo-home"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/tmp/llmlab-retrieval-bench")
    parser.add_argument("--demo-home", default=DEMO_HOME, help="a store holding the demo model 'demo' (read only)")
    parser.add_argument("--rebuild", action="store_true", help="embed the abstracts again (a fresh index_seconds)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrieval.json"))
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")
    load_start = os.getloadavg()

    from llmlab import settings
    from llmlab.data import public_path
    from llmlab.rag import beir
    from llmlab.rag.embedder import load_embedder
    from llmlab.rag.index import HNSW, IndexConfig, build_index
    from llmlab.rag.search import Searcher, fuse
    from llmlab.store import Store, library_versions

    embedder = load_embedder(None)
    store = Store(Path(args.cache) / embedder.sha256[:16])
    corpus = public_path("scifact-corpus")
    queries = beir.load_queries(public_path("scifact-queries"))
    qrels = beir.load_qrels(public_path("scifact-queries").parent / "qrels" / "dev.tsv")
    judged = [q for q in queries if q in qrels]
    name = "scifact"
    cfg = IndexConfig(name=name, source=str(corpus), chunk_size=0, chunk_overlap=0)
    first_build = Path(args.cache) / embedder.sha256[:16] / "first_build.json"
    if args.rebuild or not store.exists(name):
        if store.exists(name):
            store.rm(name)  # a fresh build: no stored embedding is reused
        load = [round(x, 2) for x in os.getloadavg()]
        built = build_index(cfg, store=store)
        built.update(load_avg_start=load, load_avg_end=[round(x, 2) for x in os.getloadavg()])
        first_build.write_text(json.dumps(built))
    elif store.get(name).manifest.info["chroma"].get("hnsw") != HNSW:
        build_index(cfg, store=store, overwrite=True)  # new Chroma settings: stored embeddings are reused
    index_metrics = json.loads(first_build.read_text()) if first_build.is_file() else store.get(name).metrics
    searcher = Searcher.open(name, store=store)

    # Timed runs through the public API, one mode at a time.
    scifact: dict = {"queries": len(judged), "documents": index_metrics["documents"],
                     "index_seconds": index_metrics["index_seconds"], "embed_seconds": index_metrics["embed_seconds"],
                     "index_load_avg": [index_metrics.get("load_avg_start"), index_metrics.get("load_avg_end")]}
    modes = {"bm25": {"mode": "bm25"}, "dense": {"mode": "dense"},
             "hybrid": {"mode": "hybrid", "fusion": "weighted", "weight": 0.5, "depth": 200},
             "hybrid_rrf60": {"mode": "hybrid", "fusion": "rrf", "rrf_k": 60.0, "weight": 0.5, "depth": 100}}
    for label, opts in modes.items():
        rankings, times = {}, []
        for q in judged:
            t0 = time.perf_counter()
            hits = searcher.search(queries[q], k=100, **opts)
            times.append((time.perf_counter() - t0) * 1000)
            rankings[q] = [h.doc_id for h in hits]
        scifact[label] = {**beir.score_run(rankings, qrels, [10, 100]), "settings": opts,
                          "query_ms_p50": round(beir.percentile(times, 0.5), 2),
                          "query_ms_p95": round(beir.percentile(times, 0.95), 2)}
        print(label, scifact[label], flush=True)
    scifact["hybrid_rerank"] = {"available": False,
                                "why": "no cross-encoder reranker ships offline; pass reranker=<folder> to use one"}

    # Fusion grid on candidate lists computed once per claim.
    depth_max = 200
    cands = {q: (searcher.dense(queries[q], depth_max), searcher.bm25_search(queries[q], depth_max)) for q in judged}
    doc_of = [c.doc_id for c in searcher.chunks]
    grid = []
    for depth in (50, 100, 200):
        for fusion, params in (("rrf", [(k, w) for k in (10, 30, 60, 100) for w in (0.4, 0.5, 0.6)]),
                               ("weighted", [(60.0, w) for w in (0.3, 0.4, 0.5, 0.6, 0.7)])):
            for rrf_k, weight in params:
                rankings = {q: [doc_of[i] for i, _ in fuse(d[:depth], b[:depth], fusion=fusion, rrf_k=rrf_k,
                                                          weight=weight)[:100]] for q, (d, b) in cands.items()}
                s = beir.score_run(rankings, qrels, [100])
                grid.append({"fusion": fusion, "rrf_k": rrf_k if fusion == "rrf" else None, "weight": weight,
                             "depth": depth, **s})
    grid.sort(key=lambda r: -r["ndcg_at_10"])
    scifact["fusion_grid"] = grid
    print("best fusion", grid[:3], flush=True)
    searcher.close()

    # The demo world: recall@3 of the gold document for the rag questions.
    demo_world: dict = {}
    demo_src = Path(args.demo_home) / "demo"
    if demo_src.is_dir():
        wstore = Store(Path(args.cache) / "demo-world")
        if not wstore.exists("demo"):
            shutil.copytree(demo_src, wstore.root / "demo")
        build_index(IndexConfig(name="demo-index", source="world", world_of="demo"), store=wstore, overwrite=True)
        from llmlab.world import find_world

        world = find_world(wstore, wstore.get("demo"))
        questions = world.split("rag")
        ws = Searcher.open("demo-index", store=wstore)
        for mode in ("bm25", "dense", "hybrid"):
            found = sum(q["gold_doc"] in [h.doc_id for h in ws.search(q["question"], k=3, mode=mode)]
                        for q in questions)
            demo_world[mode] = {"recall_at_3": round(found / len(questions), 4), "questions": len(questions)}
        ws.close()
        demo_world["documents"] = len(world.documents)

    out = {
        "scifact": scifact,
        "demo_world": demo_world,
        "reference": {"bm25s_english_stemmer": 0.696, "minilm_dense": 0.660, "rrf_k60": 0.721,
                      "goal_hybrid_ndcg_at_10": 0.73},
        "settings": {
            "embedder": embedder.identity(), "threads": settings.threads(),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "versions": library_versions(("llmlab", "torch", "sentence_transformers", "chromadb", "bm25s",
                                          "PyStemmer", "numpy")),
            "index": {"chunk_size": 0, "chunk_overlap": 0, "bm25_text": "title + text", "hnsw": HNSW},
            "load_avg_start": [round(x, 2) for x in load_start],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
