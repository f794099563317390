"""Nothing made or scored twice: quantize reuses each output made from the same source with the same
settings, whatever else the earlier step made; scores are kept by what they depend on (content
hashes, texts, questions, token budget, versions); a recipe step and the app's Quantize page get the
same, and Redo (``redo``, ``--force``) makes and scores everything again.

One module store is quantized once (micro -> f16, q8_0, q4_k_m, q2_k, scored); each test works on a
copy of it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from llmlab import recipes, scoring
from llmlab.errors import StoreError
from llmlab.quantize.step import QuantizeConfig, quantize
from llmlab.store import MANIFEST, Parent, StepRecord, Store

QA = [{"question": "Where does Ana live?", "answer": "Dunmere"},
      {"question": "What does Bo keep on his boat?", "answer": "a red lantern"}]
FIRST_TYPES = ["q8_0", "q4_k_m", "q2_k"]  # what the quickstart-like first run made


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> dict[str, Any]:
    """The first quantize, as a recipe step: three types, scored on a text file and two questions (the
    imported micro model has no demo world), with how long it took."""
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("reuse")
    texts, qa = root / "eval.txt", root / "qa.jsonl"
    texts.write_text((micro_model_dir / "world" / "eval.txt").read_text()[:2000])
    qa.write_text("".join(json.dumps(q) + "\n" for q in QA))
    store = Store(root / "models")
    store.add(micro_model_dir, "micro")
    options = {"model": "micro", "texts": str(texts), "qa": str(qa)}
    config = QuantizeConfig(types=FIRST_TYPES, **options)
    made_by = StepRecord(kind="quantize", config=config.model_dump(mode="json"), config_hash="an earlier recipe step")
    started = time.perf_counter()
    summary = quantize(config, store=store, step=made_by)
    return {"store": store, "summary": summary, "seconds": time.perf_counter() - started, "options": options}


@pytest.fixture
def lab(first: dict[str, Any], tmp_path: Path) -> Store:
    """A copy of the first run's store (with its score cache), for a test to change."""
    return Store(shutil.copytree(first["store"].root, tmp_path / "models"))


def hashes(store: Store) -> dict[str, str]:
    return {a.name: a.content_hash for a in store.list()}


def run_with_events(config: QuantizeConfig, store: Store, **kw: Any) -> tuple[dict, list[dict], float]:
    events: list[dict] = []
    started = time.perf_counter()
    summary = quantize(config, store=store, progress=events.append, **kw)
    return summary, events, time.perf_counter() - started


def work_done(events: list[dict]) -> dict[str, list]:
    """What a run did, from its events: conversion/quantization progress and models scored."""
    return {"made": [e for e in events if e["type"] == "progress" and e.get("task") in ("convert", "quantize")],
            "scored": [e["message"] for e in events if e["type"] == "log" and e["message"].startswith("scoring")]}


def logs(events: list[dict]) -> list[str]:
    return [e["message"] for e in events if e["type"] == "log"]


# ----- quantize reuses what was made alike -----
def test_fewer_types_again_reuse_outputs_and_scores(first: dict[str, Any], lab: Store):
    before = hashes(lab)
    summary, events, seconds = run_with_events(QuantizeConfig(types=["q8_0"], **first["options"]), lab)
    assert work_done(events) == {"made": [], "scored": []}
    assert summary["reused"] == ["micro-f16", "micro-q8_0"]
    assert "reusing micro-q8_0: same source and settings" in logs(events)
    assert hashes(lab) == before  # nothing rewritten
    # the same numbers as the first run's rows, marked as cached, with when they were measured
    old = {r["name"]: r for r in first["summary"]["table"]}
    for row in summary["table"]:
        assert row["cached"] and row["ppl"] == old[row["name"]]["ppl"] and row["kld_mean"] == old[row["name"]]["kld_mean"]
        assert row["scored_at"] and row["measured_at"] and row["gen_tok_s"] == old[row["name"]]["gen_tok_s"]
    assert [r["name"] for r in summary["table"]] == ["micro", "micro-f16", "micro-q8_0"]
    assert seconds < first["seconds"] / 3, (seconds, first["seconds"])


def test_the_first_run_records_keys_speed_context_and_fresh_scores(first: dict[str, Any]):
    store, summary = first["store"], first["summary"]
    assert summary["reused"] == [] and not any(r["cached"] for r in summary["table"])
    q8 = store.get("micro-q8_0").manifest.info["output_key"]
    assert q8["source"] == store.get("micro").content_hash and q8["output"] == "Q8_0" and q8["imatrix"] is None
    for row in summary["table"]:
        assert row["measured_at"] and row["load_avg"] is not None and row["gen_tok_s"] > 0
    assert store.get("micro-q8_0").metrics["load_avg"] == summary["table"][2]["load_avg"]


def test_a_new_type_is_made_and_only_it_is_scored(first: dict[str, Any], lab: Store):
    summary, events, _ = run_with_events(QuantizeConfig(types=["q8_0", "q5_0"], **first["options"]), lab)
    assert summary["reused"] == ["micro-f16", "micro-q8_0"]
    done = work_done(events)
    assert {e["task"] for e in done["made"]} == {"quantize"}  # no conversion: the f16 was reused
    assert done["scored"] == ["scoring micro-q5_0 against micro-f16"]


def test_an_output_made_otherwise_needs_overwrite(first: dict[str, Any], lab: Store, tmp_path: Path):
    calib = tmp_path / "calib.txt"
    calib.write_text(Path(first["options"]["texts"]).read_text())
    config = QuantizeConfig(types=["q4_k_m"], imatrix=str(calib), imatrix_chunks=2, **first["options"])
    with pytest.raises(StoreError, match="'micro-q4_k_m' already exists, made with another importance matrix") as e:
        quantize(config, store=lab)
    assert "--force" in e.value.hint
    before = hashes(lab)
    summary, events, _ = run_with_events(config, lab, overwrite=True)
    assert summary["reused"] == ["micro-f16"]
    assert lab.get("micro-q4_k_m").content_hash != before["micro-q4_k_m"]  # made again, with the imatrix
    assert work_done(events)["scored"] == ["scoring micro-q4_k_m against micro-f16"]  # the others: cached


def test_redo_makes_and_scores_everything_again(first: dict[str, Any], lab: Store):
    summary, events, _ = run_with_events(QuantizeConfig(types=["q8_0"], redo=True, **first["options"]), lab)
    assert summary["reused"] == []
    done = work_done(events)
    assert {e["task"] for e in done["made"]} == {"convert", "quantize"}
    assert done["scored"] == ["scoring micro", "scoring micro-f16 against micro", "scoring micro-q8_0 against micro-f16"]
    assert not any(r["cached"] for r in summary["table"])


def test_outputs_made_before_keys_were_recorded_are_reused(first: dict[str, Any], lab: Store):
    # a store quantized by an earlier llmlab: GGUFs without an importance matrix carry no output_key
    for name in ("micro-f16", "micro-q8_0"):
        path = lab.path(name) / MANIFEST
        manifest = json.loads(path.read_text())
        del manifest["info"]["output_key"]
        path.write_text(json.dumps(manifest))
    summary, events, _ = run_with_events(QuantizeConfig(types=["q8_0"], **first["options"]), lab)
    assert summary["reused"] == ["micro-f16", "micro-q8_0"] and work_done(events)["made"] == []


def test_another_source_is_not_reused(first: dict[str, Any], lab: Store, micro_model_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    shutil.copytree(micro_model_dir, other)
    (other / "generation_config.json").write_text('{"max_new_tokens": 7}')  # another content hash
    lab.add(other, "micro2")
    with pytest.raises(StoreError, match="'micro-f16' already exists, made with another source model"):
        quantize(QuantizeConfig(model="micro2", name_prefix="micro", types=["q8_0"], score=False), store=lab)


# ----- a recipe step -----
def test_a_recipe_step_with_another_config_reuses_outputs_and_force_redoes_them(first: dict[str, Any],
                                                                                lab: Store):
    recipe = recipes.load({"name": "again", "steps": [{"quantize": {"types": ["q8_0"], **first["options"]}}]})
    events: list[dict] = []
    [result] = recipes.run(recipe, store=lab, progress=events.append, track=False)
    assert result.status == "done" and work_done(events) == {"made": [], "scored": []}
    assert "reusing micro-q8_0: same source and settings" in logs(events)
    events.clear()
    recipes.run(recipe, store=lab, progress=events.append, track=False, force=True)
    assert {e["task"] for e in work_done(events)["made"]} == {"convert", "quantize"}
    assert len(work_done(events)["scored"]) == 3


# ----- the score cache -----
def fake(store: Store, name: str, content: str, parent: str | None = None) -> None:
    with store.write(name, "gguf") as w:
        (w.path / "model.gguf").write_text(content)
        if parent:
            w.parents = [Parent(name=parent, content_hash=store.get(parent).content_hash, role="reference")]


def test_score_keys_follow_content_texts_reference_and_budget(store: Store):
    fake(store, "ref", "r")
    fake(store, "a", "x", parent="ref")
    fake(store, "b", "x", parent="ref")  # the same bytes under another name
    ref, a, b = store.get("ref"), store.get("a"), store.get("b")
    key = scoring.score_key(a, reference=ref, texts=["t"], qa=QA, max_tokens=100, speed_test=True)
    assert scoring.score_key(b, reference=ref, texts=["t"], qa=QA, max_tokens=100, speed_test=True) == key
    for other in (dict(texts=["u"]), dict(qa=QA[:1]), dict(max_tokens=99), dict(speed_test=False),
                  dict(reference=None)):
        assert scoring.score_key(a, **{"reference": ref, "texts": ["t"], "qa": QA, "max_tokens": 100,
                               "speed_test": True, **other}) != key, other
    cache = scoring.ScoreCache(store)
    assert cache.get(key) is None
    kept = cache.put(key, {"ppl": 3.0})
    assert cache.get(key) == kept and kept["ppl"] == 3.0 and kept["scored_at"]
    with store.write("ref", "gguf", overwrite=True) as w:  # the reference changes: the key does too
        (w.path / "model.gguf").write_text("r2")
    assert cache.get(scoring.score_key(a, reference=store.get("ref"), texts=["t"], qa=QA, max_tokens=100,
                               speed_test=True)) is None
