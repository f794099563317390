"""The synthetic world: deterministic, with disjoint splits, and saved/loaded losslessly."""

from __future__ import annotations

import re
import sys
import subprocess

from llmlab import world
from llmlab.world import N_TUNE, QUESTIONS, RELATION_GROUP, World, generate


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text))


def test_same_seed_same_world_and_different_seed_differs() -> None:
    a, b, c = generate(0, "small"), generate(0, "small"), generate(1, "small")
    assert a.texts == b.texts and a.qa == b.qa and a.documents == b.documents and a.grounded == b.grounded
    assert a.eval_text == b.eval_text
    assert a.texts != c.texts and a.qa != c.qa


def test_heldout_phrasings_never_used_in_tune_and_cover_the_same_facts() -> None:
    w = generate(0, "small")
    tune, heldout = w.split("tune"), w.split("heldout")
    assert {q["phrasing"] for q in tune} == set(range(N_TUNE))
    assert all(q["phrasing"] >= N_TUNE for q in heldout)
    tune_templates = {QUESTIONS[q["relation"]][q["phrasing"]] for q in tune}
    heldout_templates = {QUESTIONS[q["relation"]][q["phrasing"]] for q in heldout}
    assert not tune_templates & heldout_templates
    assert {(q["entity"], q["relation"]) for q in tune} == {(q["entity"], q["relation"]) for q in heldout}
    # Grounded reading examples only use tune phrasings: held-out phrasings are never trained on.
    heldout_questions = {q["question"] for q in heldout}
    assert not heldout_questions & {g["question"] for g in w.grounded}


def test_rag_entities_appear_only_in_documents() -> None:
    w = generate(0, "small")
    rag = w.split("rag")
    assert rag
    rag_entities = {q["entity"] for q in rag}
    trained = " ".join(w.texts + w.stories) + " " + w.eval_text + " ".join(
        q["question"] for q in w.qa if q["split"] != "rag")
    trained += " ".join(g["context"] + g["question"] for g in w.grounded)
    for name in rag_entities:
        assert not _words(name) & _words(trained), name
    docs = {d["id"]: d for d in w.documents}
    for q in rag:
        assert q["entity"] == docs[q["gold_doc"]]["title"]
        assert q["answer"] in docs[q["gold_doc"]]["text"]


def test_records_have_the_documented_fields_and_short_answers() -> None:
    w = generate(0, "micro")
    for q in w.qa:
        assert {"id", "question", "answer", "split", "entity", "relation", "phrasing"} <= set(q)
        assert len(q["answer"].split()) == 1
        assert q["relation"] in RELATION_GROUP
    assert len({q["id"] for q in w.qa}) == len(w.qa)
    assert set(RELATION_GROUP.values()) == {"people", "places", "objects"}
    assert {d.keys() >= {"id", "title", "text"} for d in w.documents} == {True}


def test_eval_text_is_held_out_stories_true_to_the_world() -> None:
    w = generate(0, "small")
    held_out = w.eval_text.splitlines()
    assert len(held_out) >= 30 and not set(held_out) & set(w.stories)
    pets = {e.name: e.facts["pet"] for e in w.entities if e.kind == "person"}
    for story in held_out + w.stories:  # a story never contradicts a fact
        for m in re.finditer(r"([A-Z][a-z]+ [A-Z][a-z]+) fed the (\w+)", story):
            assert pets[m.group(1)] == m.group(2)


def test_unseen_fact_text_uses_phrasings_absent_from_texts() -> None:
    w = generate(0, "small")
    sentences = w.unseen_fact_text().splitlines()
    assert len(sentences) == len(w.facts(doc_only=False)) and not set(w.texts) & set(sentences)


def test_save_load_roundtrip(tmp_path) -> None:
    w = generate(3, "micro")
    w.save(tmp_path / "w")
    for f in ("texts.jsonl", "qa.jsonl", "documents.jsonl", "eval.txt", "meta.json"):
        assert (tmp_path / "w" / f).is_file()
    back = World.load(tmp_path / "w")
    assert back == w
    assert back.stats() == w.stats()


def test_sizes_grow_and_small_stays_memorizable() -> None:
    facts = {s: generate(0, s).stats()["facts"] for s in ("micro", "small", "large")}
    assert facts["micro"] < facts["small"] < facts["large"]
    assert facts["small"] <= 130


def test_prompts_helpers() -> None:
    msgs = world.chat_messages("Where?", "Here", context="Ctx.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"] == "Context: Ctx.\n\nQuestion: Where?"


def test_importing_world_data_build_does_not_import_torch() -> None:
    code = "import sys, llmlab.world, llmlab.data, llmlab.build; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
