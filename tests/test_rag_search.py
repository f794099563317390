"""Search: dense, BM25, hybrid fusion (RRF and weighted), metadata filters, rerank honestly unavailable,
and an index refused for another embedder (naming both)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmlab.errors import ConfigError
from llmlab.rag.index import IndexConfig, build_index
from llmlab.rag.search import RerankerNotAvailable, Searcher, fuse, matches
from llmlab.store import Store

DOCS = [
    {"_id": "kelmar", "title": "Kelmar", "region": "north", "year": 2019,
     "text": "Kelmar is a mill town on the river Ostra. Bodo the baker lives there."},
    {"_id": "dunmere", "title": "Dunmere", "text": "Dunmere is a port famous for blue cheese and salted fish.",
     "region": "south", "year": 2021},
    {"_id": "vel", "title": "Mount Vel", "text": "Mount Vel is the highest mountain, covered in snow all year.",
     "region": "north", "year": 2023},
    {"_id": "ostra", "title": "Ostra", "text": "The river Ostra floods every spring near the mills.",
     "region": "south", "year": 2020},
]


@pytest.fixture(scope="module")
def searcher(tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    root = tmp_path_factory.mktemp("search")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    store = Store(root / "home")
    build_index(IndexConfig(name="towns", source=str(corpus), chunk_size=0, chunk_overlap=0), store=store)
    s = Searcher.open("towns", store=store)
    yield s
    s.close()


def test_each_mode_finds_the_obvious_document(searcher: Searcher) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        hits = searcher.search("Where does Bodo the baker live?", k=2, mode=mode)
        assert hits[0].doc_id == "kelmar", mode
        assert hits[0].title == "Kelmar" and "Bodo" in hits[0].text and hits[0].metadata["region"] == "north"
    dense = searcher.search("snowy peak", k=4, mode="dense")
    assert dense[0].doc_id == "vel" and [h.score for h in dense] == sorted((h.score for h in dense), reverse=True)
    assert searcher.search("the of and", k=3, mode="bm25") == []  # only stop words
    assert searcher.search("   ", k=3) == []


def test_filters_apply_to_dense_and_bm25_alike(searcher: Searcher) -> None:
    south = {"region": "south"}
    for mode in ("dense", "bm25", "hybrid"):
        hits = searcher.search("river Ostra mills", k=4, mode=mode, filters=south)
        assert hits and {h.metadata["region"] for h in hits} == {"south"}, mode
    recent = {"$and": [{"year": {"$gte": 2020}}, {"region": {"$in": ["north", "south"]}}]}
    assert {h.doc_id for h in searcher.search("town", k=4, mode="dense", filters=recent)} <= {"dunmere", "vel", "ostra"}
    assert {h.doc_id for h in searcher.search("river Ostra", k=4, mode="bm25", filters=recent)} == {"ostra"}
    assert matches({"a": 1}, {"$or": [{"a": 2}, {"a": {"$ne": 3}}]}) and not matches({"a": 1}, {"a": {"$gt": 1}})
    with pytest.raises(ConfigError, match="Unknown filter operator"):
        matches({"a": 1}, {"a": {"$like": 1}})


def test_fusion_rrf_and_weighted() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    sparse = [(3, 12.0), (1, 6.0)]
    rrf = fuse(dense, sparse, fusion="rrf", rrf_k=60)
    assert [r for r, _ in rrf] == [1, 3, 2]
    assert rrf[0][1] == pytest.approx(1 / 61 + 1 / 62)
    weighted = fuse(dense, sparse, fusion="weighted", weight=0.5)
    assert dict(weighted) == pytest.approx({1: 0.5 + 0.0, 3: 0.0 + 0.5, 2: 0.5 * 0.875})
    assert [r for r, _ in fuse(dense, sparse, fusion="weighted", weight=0.9)][0] == 1
    assert [r for r, _ in fuse(dense, sparse, fusion="weighted", weight=0.1)][0] == 3


def test_rerank_is_reported_unavailable_and_bad_options_are_refused(searcher: Searcher) -> None:
    with pytest.raises(RerankerNotAvailable, match="hybrid_rerank is not available"):
        searcher.search("cheese", mode="hybrid_rerank")
    with pytest.raises(ConfigError, match="Unknown search mode 'fuzzy'"):
        searcher.search("cheese", mode="fuzzy")
    with pytest.raises(ConfigError, match="Unknown fusion"):
        searcher.search("cheese", fusion="max")
    with pytest.raises(ConfigError, match="weight"):
        searcher.search("cheese", weight=2.0)


def test_an_index_is_refused_for_another_embedder_naming_both(searcher: Searcher, tmp_path: Path) -> None:
    from llmlab.rag.embedder import default_embedder_path

    other = tmp_path / "other-embedder"
    other.mkdir()
    for p in default_embedder_path().rglob("*"):
        target = other / p.relative_to(default_embedder_path())
        if p.is_dir():
            target.mkdir(exist_ok=True)
        elif p.name == "config_sentence_transformers.json":
            target.write_text(p.read_text() + "\n")  # same weights, different files: another identity
        else:
            os.symlink(p, target)
    store = Store(searcher.artifact.path.parent)
    with pytest.raises(ConfigError, match=r"built with the embedder 'all-MiniLM-L6-v2'.*not 'other-embedder'"):
        Searcher.open("towns", store=store, embedder=str(other))
    with pytest.raises(ConfigError, match="not an index"):
        with store.write("plain", "base") as w:
            (w.path / "x.txt").write_text("x")
        Searcher.open("plain", store=store)


def test_a_chroma_collection_made_with_another_embedder_is_refused(searcher: Searcher) -> None:
    from llmlab.rag.embedder import Embedder
    from llmlab.rag.search import _open_collection

    stranger = Embedder(name="stranger", path=searcher.embedder.path, sha256="0" * 64)
    store = Store(searcher.artifact.path.parent)
    with pytest.raises(ConfigError, match=r"made with the embedder 'all-MiniLM-L6-v2'.*not 'stranger'"):
        _open_collection(store, searcher.artifact, stranger)
