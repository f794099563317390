"""Retrieval evaluation: the pure metrics against hand-computed values, BEIR loaders (plain and
gzipped), and `llmlab eval retrieval` end to end on a tiny BEIR-layout set."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from llmlab.errors import ConfigError
from llmlab.rag import beir
from llmlab.rag.metrics import exact_match, f1, mrr, ndcg_at_k, recall_at_k


def test_ranking_metrics_match_hand_computed_values() -> None:
    rel = {"a": 1, "b": 2, "z": 0}
    ranked = ["x", "b", "y", "a"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(ranked, rel, 1) == 0.0
    assert ndcg_at_k(["b", "a"], rel, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "b", "a"], rel, 10) == pytest.approx(1.0)  # a repeated id counts once
    assert recall_at_k(ranked, rel, 2) == 0.5 and recall_at_k(ranked, rel, 4) == 1.0
    assert mrr(ranked, rel) == 0.5 and mrr(ranked, rel, 1) == 0.0 and mrr(["x"], rel) == 0.0
    assert ndcg_at_k(ranked, {"z": 0}, 10) == 0.0 and recall_at_k(ranked, {}, 10) == 0.0


def test_answer_metrics_follow_squad_normalisation() -> None:
    assert exact_match("The Paris.", ["paris", "Lyon"]) == 1.0
    assert exact_match("Paris France", "Paris") == 0.0
    assert f1("in the city of Paris", "Paris") == pytest.approx(2 * (1 / 4) * 1 / (1 / 4 + 1))
    assert f1("blue cheese", ["red wine", "cheese blue"]) == 1.0
    assert f1("", "") == 1.0 and f1("x", "") == 0.0


def write_beir(root: Path) -> tuple[Path, Path, Path]:
    docs = [("d1", "Kelmar", "Bodo the baker lives in Kelmar, a mill town."),
            ("d2", "Dunmere", "Dunmere is a port famous for blue cheese."),
            ("d3", "Mount Vel", "Mount Vel is the highest snowy mountain."),
            ("d4", "Ostra", "The river Ostra floods in spring.")]
    corpus = root / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt") as f:
        f.writelines(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in
                               [("1", "Where does the baker Bodo live?"), ("2", "Which port has blue cheese?"),
                                ("3", "highest snowy mountain"), ("4", "a query without judgements")]))
    qrels = root / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n3\td3\t1\n")
    return corpus, queries, qrels


def test_beir_loaders_and_their_errors(tmp_path: Path) -> None:
    _, queries, qrels = write_beir(tmp_path)
    assert beir.load_queries(queries)["2"] == "Which port has blue cheese?"
    assert beir.load_qrels(qrels) == {"1": {"d1": 1}, "2": {"d2": 1}, "3": {"d3": 1}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\td1\n")
    with pytest.raises(ConfigError, match="line 1 is not 'query-id"):
        beir.load_qrels(bad)
    bad.write_text('{"text": "no id"}\n')
    with pytest.raises(ConfigError, match="query 1 is not a BEIR query"):
        beir.load_queries(bad)


def test_eval_retrieval_cli_prints_json_for_every_mode(tmp_path: Path, capsys, monkeypatch) -> None:
    from llmlab.cli import main

    corpus, queries, qrels = write_beir(tmp_path)
    monkeypatch.setenv("LLMLAB_TRACKING_URI", "off")
    code = main(["--home", str(tmp_path / "home"), "eval", "retrieval", "--corpus", str(corpus),
                 "--queries", str(queries), "--qrels", str(qrels), "--recall-at", "[1, 3]"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == 3 and set(report["results"]) == {"bm25", "dense", "hybrid"}
    for mode, r in report["results"].items():
        assert r["ndcg_at_10"] == 1.0 and r["recall_at_1"] == 1.0 and r["mrr_at_10"] == 1.0, mode
        assert r["query_ms_p95"] >= r["query_ms_p50"] > 0
    # The corpus index is reused on a second run; an unknown mode is a clear error.
    code = main(["--home", str(tmp_path / "home"), "eval", "retrieval", "--corpus", str(corpus),
                 "--queries", str(queries), "--qrels", str(qrels), "--modes", "[dense, fuzzy]"])
    assert code == 2 and "Unknown search mode 'fuzzy'" in capsys.readouterr().err
