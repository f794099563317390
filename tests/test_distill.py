"""The Distill station: a student trained on a teacher's logits, its lineage, metrics and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

pytest.importorskip("transformers")

from llmlab import recipes  # noqa: E402
from llmlab.tune.distill import DistillConfig, distill, kd_loss  # noqa: E402
from llmlab.errors import ConfigError  # noqa: E402
from llmlab.store import Store  # noqa: E402

FAST = {"steps": 4, "batch_size": 8, "eval_every": 2, "max_len": 64}


@pytest.fixture
def teacher_store(store: Store, micro_model_dir: Path) -> Store:
    """The micro model as 'teacher', with its world (which ``Store.add`` would leave out)."""
    with store.write("teacher", "base") as w:
        shutil.copytree(micro_model_dir, w.path, dirs_exist_ok=True)
    return store


def test_student_is_stored_with_lineage_and_compared_to_teacher(teacher_store):
    events: list[dict] = []
    art = distill(DistillConfig(name="student", teacher="teacher", qa_limit=8, **FAST), store=teacher_store,
                  progress=events.append)
    assert art.kind == "distilled" and teacher_store.verify("student") == []
    assert [(p.name, p.role) for p in art.manifest.parents] == [("teacher", "teacher")]
    assert {"model.safetensors", "config.json", "tokenizer.json", "training_log.jsonl"} <= set(art.manifest.files)
    m = art.metrics
    assert m["val_loss_after"] < m["val_loss_before"]
    assert m["kld_mean"] > 0 and 0 <= m["top1"] <= 1
    assert m["ppl"] > 0 and m["ppl_teacher"] > 0 and m["gen_tok_s"] > 0 and m["gen_tok_s_teacher"] > 0
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["accuracy_teacher"] <= 1
    assert m["params"] == art.manifest.info["n_params"] and m["size_ratio"] == pytest.approx(
        m["params"] / m["params_teacher"], abs=1e-4)
    assert {"type": "progress", "task": "distill", "done": 4, "total": 4} in events
    assert any(e["type"] == "metric" and e["task"] == "distill" for e in events)
    assert not (teacher_store.root / ".cache" / "tune" / "student").exists()
    # The student can be tuned or distilled further: it is a complete model folder with the teacher's tokenizer.
    assert art.manifest.files["tokenizer.json"] == teacher_store.get("teacher").manifest.files["tokenizer.json"]


def test_given_student_is_a_parent(teacher_store, micro_model_dir, tmp_path):
    teacher_store.add(micro_model_dir, "init")
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Line {i} of a small text about towns."}) + "\n" for i in range(20)))
    art = distill(DistillConfig(name="s2", teacher="teacher", student="init", data=str(texts), evaluate=False,
                                **FAST), store=teacher_store)
    assert [(p.name, p.role) for p in art.manifest.parents] == [("teacher", "teacher"), ("init", "student")]
    assert art.manifest.info["records"] == 20


def test_student_with_another_tokenizer_is_refused(teacher_store, micro_model_dir, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(micro_model_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(other)
    n = len(tok)
    with pytest.raises(ConfigError, match=rf"vocabulary of {n} tokens and the teacher 'teacher' {n - 1}"):
        distill(DistillConfig(name="bad", teacher="teacher", student=str(other), **FAST), store=teacher_store)
    assert not teacher_store.exists("bad")


def test_kd_loss_is_zero_against_itself_and_plain_cross_entropy_at_alpha_0(micro_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model_dir).eval()
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[0, :2] = -100
    n = int((labels[:, 1:] != -100).sum())
    with torch.no_grad():
        assert float(kd_loss(model, 2.0, 1.0)(model, ids, mask, labels, n)) == pytest.approx(0.0, abs=1e-5)
        plain = float(model(input_ids=ids, labels=labels).loss)
        assert float(kd_loss(model, 2.0, 0.0)(model, ids, mask, labels, n)) == pytest.approx(plain, rel=1e-5)


def test_bad_options_and_missing_world(store, micro_model_dir):
    with pytest.raises(ValidationError, match="temperature"):
        DistillConfig(name="s", teacher="t", temperature=0)
    with pytest.raises(ValidationError, match="alpha"):
        DistillConfig(name="s", teacher="t", alpha=1.5)
    with pytest.raises(ValidationError, match="learning_rate must be positive"):
        DistillConfig(name="s", teacher="t", learning_rate=-1)
    store.add(micro_model_dir, "plain")  # imported without its world
    with pytest.raises(ConfigError, match="no demo world") as e:
        distill(DistillConfig(name="s", teacher="plain", **FAST), store=store)
    assert e.value.hint and "data" in e.value.hint
    step = recipes.make_step("distill", {"name": "s", "teacher": "plain", "temperature": 3})
    assert step.input_names() == ["plain"] and step.output_names() == ["s"]
