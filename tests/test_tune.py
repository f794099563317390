"""The Tune station: data formatting and masking, methods, artifacts, backend choice, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

pytest.importorskip("peft")

from llmlab import world  # noqa: E402
from llmlab.errors import ConfigError, NotFoundError, StoreError  # noqa: E402
from llmlab.runtime.adapters import base_of, merged_folder  # noqa: E402
from llmlab.store import Store  # noqa: E402
from llmlab.training.batching import Example, collate, split_indices  # noqa: E402
from llmlab.training.checkpoints import CHECKPOINT  # noqa: E402
from llmlab.tune.anchor import AnchoredLoss  # noqa: E402
from llmlab.tune.config import TuneConfig, select_backend  # noqa: E402
from llmlab.tune.records import (  # noqa: E402
    MASK_CLOSE,
    MASK_OPEN,
    prepare,
    prepare_anchor,
    preview,
    segments,
    tokenize,
    world_pairs,
)
from llmlab.tune.step import tune  # noqa: E402


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def micro_store(store: Store, micro_model_dir: Path, tmp_path: Path) -> tuple[Store, Path]:
    """A store holding the micro model as 'micro', and its world's tuning questions as a file."""
    store.add(micro_model_dir, "micro")
    qa = world.World.load(micro_model_dir / "world").split("tune")
    return store, _jsonl(tmp_path / "qa.jsonl", qa)


@pytest.fixture(scope="module")
def tok(micro_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro_model_dir, local_files_only=True)


def _cfg(data: Path | str, **kw) -> TuneConfig:
    return TuneConfig(**{"name": "t", "model": "micro", "data": str(data), "steps": 3, "batch_size": 8,
                           "rank": 8, "evaluate": False, "eval_every": 2, **kw})


def test_import_does_not_load_torch():
    modules = ("llmlab.tune", "llmlab.tune.step", "llmlab.tune.config", "llmlab.tune.records", "llmlab.tune.model",
               "llmlab.tune.preference", "llmlab.tune.anchor", "llmlab.tune.distill", "llmlab.training",
               "llmlab.training.loop", "llmlab.training.batching", "llmlab.training.losses",
               "llmlab.training.checkpoints", "llmlab.training.distributed")
    code = (f"import sys, {', '.join(modules)}; heavy = {{'torch', 'transformers', 'peft', 'trl'}} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method,kind", [("lora", "adapter"), ("dora", "adapter"), ("full", "full")])
def test_methods_write_valid_artifacts(micro_store, method, kind):
    store, qa = micro_store
    events: list[dict] = []
    art = tune(_cfg(qa, name=f"t-{method}", method=method), store=store, progress=events.append)
    assert art.kind == kind and store.verify(art.name) == []
    assert [(p.name, p.role) for p in art.manifest.parents] == [("micro", "base")]
    assert art.manifest.parents[0].content_hash == store.get("micro").content_hash
    assert store.lineage(art.name)["parents"][0]["name"] == "micro"
    files = set(art.manifest.files)
    if kind == "adapter":
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
        cfg = json.loads((art.path / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "micro" and cfg["use_dora"] == (method == "dora")
        # the same training writes the same bytes: peft's set of target modules is written sorted
        assert len(cfg["target_modules"]) == 7 and cfg["target_modules"] == sorted(cfg["target_modules"])
    else:
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
    rows = [json.loads(x) for x in (art.path / "training_log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and set(rows[-1]) == {"step", "loss", "val_loss"}
    assert art.metrics["val_loss_after"] < art.metrics["val_loss_before"]
    assert art.manifest.info["tok_s"] > 0 and 0 <= art.manifest.info["padding_fraction"] < 0.5
    assert any(e["type"] == "metric" and e["task"] == "tune" and "tok_s" in e for e in events)
    assert {"type": "progress", "task": "tune", "done": 3, "total": 3} in events
    assert not (store.root / ".cache" / "tune" / art.name).exists()  # checkpoints go once it is written


def test_evaluation_options_pick_what_base_and_tuned_are_scored_on(micro_store, tmp_path):
    # The shared evaluation options (scoring.EvalOptions): any texts and questions, not only a demo world's.
    store, qa = micro_store
    questions = world.World.load(_micro_dir(store) / "world").split("heldout")[:5]
    texts = _jsonl(tmp_path / "texts.jsonl", [{"text": "Once upon a time there was a baker in Dunmere."}])
    art = tune(_cfg(qa, name="t-eval", evaluate=True, texts=str(texts), qa=str(_jsonl(tmp_path / "q.jsonl", questions))),
               store=store)
    m = art.metrics
    assert m["accuracy_n"] == 5 and {"accuracy", "accuracy_before", "ppl", "ppl_before"} <= set(m)
    assert m["ppl"] != m["ppl_before"]  # the tuned model was scored, not the base twice
    # the defaults on a model imported without a world: perplexity on the shipped prose, the world's
    # questions skipped (and said)
    events: list[dict] = []
    art = tune(_cfg(qa, name="t-noworld", evaluate=True), store=store, progress=events.append)
    assert "accuracy" not in art.metrics and art.metrics["ppl"] != art.metrics["ppl_before"]
    assert any("has no demo world" in e.get("message", "") for e in events)


def _micro_dir(store: Store) -> Path:
    return Path(store.get("micro").manifest.info["source"])


def test_labels_mask_exactly_the_prompt(tok):
    msgs = world.chat_messages("Where does Ada Voss live?", "Dunmere")
    ex = tokenize(tok, msgs, answer_only=True)
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex.labels[:n] == [-100] * n
    assert ex.labels[n:] == ex.input_ids[n:] and -100 not in ex.labels[n:]
    assert tok.decode(ex.input_ids[n:]) == "Dunmere<|end|>\n"
    assert tok.decode(ex.input_ids) == segments(tok, msgs, True)[0][0] + "Dunmere<|end|>\n"
    everything = tokenize(tok, msgs, answer_only=False)
    assert everything.labels == everything.input_ids == ex.input_ids
    text = tokenize(tok, "Plain text to continue.", answer_only=True)
    assert text.labels == text.input_ids and text.input_ids[-1] == tok.eos_token_id


def test_preview_marks_the_masked_part(micro_model_dir):
    rows = preview(TuneConfig(name="p", model=str(micro_model_dir)), 2)
    first = world.World.load(micro_model_dir / "world").split("tune")[0]
    r = rows[0]
    assert len(rows) == 2 and r["text"].startswith("<|bos|><|system|>")
    assert r["marked"] == f"{MASK_OPEN}{r['segments'][0]['text']}{MASK_CLOSE}{first['answer']}<|end|>\n"
    assert [s["trained"] for s in r["segments"]] == [False, True]
    assert first["question"] in r["segments"][0]["text"]
    assert 0 < r["trained_tokens"] < r["tokens"]


def test_bad_data_names_record_and_field(micro_store, tmp_path):
    store, _ = micro_store
    bad = _jsonl(tmp_path / "bad.jsonl", [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say bye"}])
    with pytest.raises(ConfigError, match="Record 2 has 'instruction' but no 'output'"):
        tune(_cfg(bad), store=store)
    odd = _jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(ConfigError, match=r"Record 1 has fields \['bar', 'foo'\]"):
        tune(_cfg(odd), store=store)
    turns = _jsonl(tmp_path / "turns.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ConfigError, match="Record 1: the last turn"):
        tune(_cfg(turns), store=store)
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(ConfigError, match="Record 1 has no 'rejected' field"):
        tune(_cfg(pairs, method="dpo"), store=store)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="holds no records"):
        tune(_cfg(empty), store=store)
    with pytest.raises(NotFoundError, match="no demo world"):
        tune(_cfg("world:tune"), store=store)  # imported without its world/ folder
    with pytest.raises(NotFoundError, match="No artifact named 'nope'"):
        tune(_cfg(bad, model="nope"), store=store)
    assert not store.exists("t")


def test_long_sequences_are_truncated_and_counted(tok):
    records = [{"text": "word " * 200}, {"text": "short"}, {"question": "Q " * 100, "answer": "A"}]
    events: list[dict] = []
    prepared = prepare(_cfg("x", max_len=32, val_fraction=0), tok, records, False, events.append)
    assert prepared.truncated == 2 and prepared.dropped == 1  # the long question lost its answer
    assert all(len(e.input_ids) <= 32 for e in prepared.train) and len(prepared.train) == 2
    assert any(e["type"] == "log" and "2 of 3 sequences" in e["message"] for e in events)


def test_split_is_seeded():
    assert split_indices(50, 0.2, 1) == split_indices(50, 0.2, 1)
    train, val = split_indices(50, 0.2, 1)
    assert len(val) == 10 and not set(train) & set(val) and split_indices(50, 0.2, 2) != (train, val)


@pytest.mark.parametrize("field,value,match", [
    ("rank", 0, "rank must be at least 1"), ("learning_rate", -1e-4, "learning_rate must be positive"),
    ("learning_rate", 0, "learning_rate must be positive"), ("alpha", -2, "alpha must be positive"),
])
def test_bad_options_are_errors_with_hints(field, value, match):
    with pytest.raises(ValidationError, match=match):
        TuneConfig(name="x", model="m", **{field: value})
    with pytest.raises(ValidationError, match="Extra inputs"):
        TuneConfig(name="x", model="m", ranks=8)


def test_target_modules_from_a_flag():
    assert TuneConfig(name="x", model="m", target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]
    assert TuneConfig(name="x", model="m").target_modules == "all-linear"


def test_backend_selection_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = select_backend(TuneConfig(name="x", model="m", method="qlora"))
    assert (plan.backend, plan.method, plan.device) == ("peft", "lora", "cpu")
    assert "pip install 'llmlab[qlora]'" in plan.messages[0] and "NVIDIA GPU" in plan.messages[0]
    assert select_backend(TuneConfig(name="x", model="m")).backend == "peft"
    with pytest.raises(ConfigError, match=r"NVIDIA GPU.*pip install 'llmlab\[unsloth\]'"):
        select_backend(TuneConfig(name="x", model="m", backend="unsloth"))
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        select_backend(TuneConfig(name="x", model="m", device="cuda"))


def test_backend_selection_with_cuda_but_no_extras(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n in ("unsloth", "bitsandbytes") else real(n, *a))
    plan = select_backend(TuneConfig(name="x", model="m", method="qlora"))
    assert (plan.backend, plan.method, plan.device) == ("peft", "lora", "cuda")
    assert "bitsandbytes is not installed" in plan.messages[0]
    with pytest.raises(ConfigError, match="unsloth is not installed"):
        select_backend(TuneConfig(name="x", model="m", backend="unsloth"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "unsloth" else real(n, *a))
    assert select_backend(TuneConfig(name="x", model="m")).backend == "unsloth"
    assert select_backend(TuneConfig(name="x", model="m", method="full")).backend == "peft"


def test_dpo_on_synthetic_pairs(micro_store, tmp_path):
    store, _ = micro_store
    pairs = _jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"What colour is item {i}?", "chosen": "red", "rejected": "I do not know"} for i in range(4)])
    rows = preview(_cfg(pairs, method="dpo"), 1, store=store)
    assert rows[0]["chosen"] == "red" and rows[0]["prompt"].endswith("<|assistant|>\n")
    art = tune(_cfg(pairs, name="t-dpo", method="dpo", steps=2, batch_size=2), store=store)
    assert art.kind == "adapter" and store.verify(art.name) == []
    assert art.manifest.info["method"] == "dpo" and art.manifest.parents[0].role == "base"
    assert len((art.path / "training_log.jsonl").read_text().splitlines()) == 2


def test_dpo_on_world_pairs(store, micro_model_dir):
    import shutil

    with store.write("micro", "base") as w:  # with its world (Store.add leaves it out)
        shutil.copytree(micro_model_dir, w.path, dirs_exist_ok=True)
    qa = world.World.load(micro_model_dir / "world").split("tune")
    pairs = world_pairs(qa, seed=0)
    assert pairs and len(pairs) <= len(qa)
    by_q = {q["question"]: q for q in qa}
    for p in pairs:
        q = by_q[p["prompt"][-1]["content"]]
        assert p["chosen"] == q["answer"] and p["rejected"] != q["answer"]
        assert p["rejected"] in {r["answer"] for r in qa if r["relation"] == q["relation"]}
    cfg = _cfg("world:tune", name="t-wdpo", method="dpo", steps=1, batch_size=2, data_limit=12)
    rows = preview(cfg, 2, store=store)
    assert rows[0]["chosen"] == pairs[0]["chosen"] and rows[0]["rejected"] == pairs[0]["rejected"]
    art = tune(cfg, store=store)
    assert art.manifest.info["method"] == "dpo" and art.manifest.info["pairs"] == 12


class _Stop(Exception):
    pass


def test_resume_continues_from_the_checkpoint(micro_store):
    from safetensors.torch import load_file

    store, qa = micro_store
    cfg = _cfg(qa, name="t-resume", steps=6, checkpoint_every=2)

    def crash_at_5(event: dict) -> None:
        if event["type"] == "progress" and event["task"] == "tune" and event["done"] == 5:
            raise _Stop

    with pytest.raises(_Stop):
        tune(cfg, store=store, progress=crash_at_5)
    assert not store.exists("t-resume")
    assert (store.root / ".cache" / "tune" / "t-resume" / CHECKPOINT).is_file()
    events: list[dict] = []
    resumed = tune(cfg, store=store, progress=events.append)
    assert any("resumed from the checkpoint at step 5" in e.get("message", "") for e in events)
    assert resumed.manifest.info["resumed_from_step"] == 5
    assert [e["done"] for e in events if e["type"] == "progress" and e["task"] == "tune"] == [6]
    straight = tune(cfg.model_copy(update={"name": "t-straight"}), store=store)
    a = load_file(resumed.path / "adapter_model.safetensors")
    b = load_file(straight.path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    log_of = lambda art: [json.loads(x) for x in (art.path / "training_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in log_of(resumed)] == [r["step"] for r in log_of(straight)] == [1, 2, 4, 6]
    assert all(abs(x["loss"] - y["loss"]) < 1e-3 for x, y in zip(log_of(resumed), log_of(straight)))
    # A checkpoint from other settings is not resumed.
    with pytest.raises(_Stop):
        tune(cfg.model_copy(update={"name": "t-other"}), store=store, progress=crash_at_5)
    other = tune(cfg.model_copy(update={"name": "t-other", "learning_rate": 1e-3}), store=store)
    assert other.manifest.info["resumed_from_step"] is None


def test_evaluate_and_adapter_loading(micro_model_dir, store):
    from llmlab.runtime import load

    base = store.add(micro_model_dir, "micro")
    art = tune(TuneConfig(name="t-eval", model=str(micro_model_dir), steps=2, rank=4, qa_limit=3),
                 store=store)
    m = art.metrics
    assert {"accuracy", "accuracy_before", "ppl", "ppl_before", "val_loss_before", "val_loss_after"} <= set(m)
    assert m["accuracy_n"] == 3 and art.manifest.info["base_path"] == str(micro_model_dir)
    # An adapter on a store base loads through merged_folder (what the runtime calls).
    qa = world.World.load(micro_model_dir / "world").split("tune")
    adapter = tune(_cfg(_jsonl(store.root.parent / "qa.jsonl", qa), name="t-ad", steps=1), store=store)
    folder = merged_folder(adapter, store)
    assert merged_folder(adapter, store) == folder  # cached
    with load(folder) as model:
        assert model.chat(world.chat_messages("Hi?"))  # runs
    manifest = json.loads((adapter.path / "manifest.json").read_text())
    manifest["parents"][0]["content_hash"] = "0" * 64
    (adapter.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="the base does not match"):
        base_of(store.get("t-ad"), store)
    assert base.kind == "base"


def _anchor_kl(store: Store, adapter: str, anchor: list[Example]) -> float:
    """KL(base || tuned) on the anchor's answer tokens, for an adapter in the store."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(store.get("micro").path),
                                      store.get(adapter).path)
    probe = AnchoredLoss(anchor, 1.0, len(anchor), 1, 0, "cpu", 0)
    ex = anchor[0]
    probe(model, *collate([ex], 0, "cpu")[:3], 1)
    return probe.kl[-1]


def test_anchor_keeps_the_base_on_the_anchor_data(micro_store, micro_model_dir, tok, tmp_path):
    store, _ = micro_store
    qa = world.World.load(micro_model_dir / "world").split("tune")
    people = _jsonl(tmp_path / "people.jsonl", [r for r in qa if world.RELATION_GROUP[r["relation"]] == "people"])
    places = _jsonl(tmp_path / "places.jsonl", [r for r in qa if world.RELATION_GROUP[r["relation"]] != "people"])
    opts = {"steps": 12, "learning_rate": 1e-2, "val_fraction": 0}
    tune(_cfg(people, name="t-plain", **opts), store=store)
    events: list[dict] = []
    anchored = tune(_cfg(people, name="t-anchored", anchor=str(places), anchor_weight=5.0, **opts), store=store,
                      progress=events.append)
    info = anchored.manifest.info["anchor"]
    assert info["records"] > 0 and info["weight"] == 5.0 and info["kl_end"] >= 0
    assert any("anchored on" in e.get("message", "") for e in events)
    cfg = _cfg(people, anchor=str(places))
    anchor = prepare_anchor(cfg, tok, store)
    assert len(anchor) == info["records"]
    kl_plain, kl_anchored = _anchor_kl(store, "t-plain", anchor), _anchor_kl(store, "t-anchored", anchor)
    # Without the anchor, training on people moves the answers to places questions; with it, far less.
    assert kl_plain > 0.05 and kl_anchored < kl_plain / 3, (kl_plain, kl_anchored)


def test_an_anchored_run_resumes_to_the_same_weights(micro_store, micro_model_dir, tmp_path):
    from safetensors.torch import load_file

    store, qa = micro_store
    places = _jsonl(tmp_path / "places.jsonl", world.World.load(micro_model_dir / "world").split("tune:places"))
    cfg = _cfg(qa, name="t-aresume", steps=6, checkpoint_every=2, anchor=str(places), batch_size=4)

    def crash_at_5(event: dict) -> None:
        if event["type"] == "progress" and event["task"] == "tune" and event["done"] == 5:
            raise _Stop

    with pytest.raises(_Stop):
        tune(cfg, store=store, progress=crash_at_5)
    resumed = tune(cfg, store=store)
    straight = tune(cfg.model_copy(update={"name": "t-astraight"}), store=store)
    assert resumed.manifest.info["resumed_from_step"] == 5
    a = load_file(resumed.path / "adapter_model.safetensors")
    b = load_file(straight.path / "adapter_model.safetensors")
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_anchor_needs_a_lora_type_method():
    for method in ("full", "dpo"):
        with pytest.raises(ValidationError, match="anchor needs a LoRA-type method"):
            TuneConfig(name="x", model="m", method=method, anchor="world:tune:people")
    assert TuneConfig(name="x", model="m", method="dora", anchor="world:tune:people").anchor_weight == 1.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_sets_the_matmul_dtype_on_cpu_and_the_model_still_learns(micro_store, monkeypatch, precision):
    import torch

    store, qa = micro_store
    seen: set[torch.dtype] = set()
    original = torch.nn.functional.linear

    def linear(x, w, b=None):  # what the training passes multiply in (validation runs under no_grad)
        out = original(x, w, b)
        if torch.is_grad_enabled():
            seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    monkeypatch.setattr("llmlab.training.loop.cpu_has_bf16", lambda: True)  # whatever this CPU has
    art = tune(_cfg(qa, name=f"t-{precision}", precision=precision, steps=4), store=store)
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert art.metrics["val_loss_after"] < art.metrics["val_loss_before"]
    assert TuneConfig(name="a", model="m", precision="bf16").fingerprint() != \
        TuneConfig(name="a", model="m").fingerprint()  # a checkpoint of one never resumes the other


def test_bf16_on_a_cpu_without_it_runs_in_fp32_with_a_warning(tmp_path, monkeypatch, caplog):
    """Emulated bf16 matmuls are ~60x slower than fp32 on an AVX2-only CPU: bf16 there trains in fp32."""
    from llmlab.training import loop

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n")
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert not loop.cpu_has_bf16(avx2) and loop.cpu_has_bf16(amx)
    assert loop.cpu_has_bf16(tmp_path / "absent")  # not Linux: the user's word is taken

    config = TuneConfig(name="a", model="m", precision="bf16")
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    loop._warn_no_bf16.cache_clear()  # warned once a process: maybe already, by another test
    with caplog.at_level("WARNING", logger="llmlab"):
        assert not config.bf16("cpu")
    assert "no AVX512-BF16 or AMX" in caplog.text
    assert config.bf16("cuda")
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert config.bf16("cpu")
