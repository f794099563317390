"""What the front ends show, worked out by the library: the quant types and methods a model allows, what a
job is about, a merge's lineage, the exportable models and server metrics, a tuning report, the agent
choices, the leaderboard's Pareto points and the store's summary rows.

Every test builds what it reads (tensor shapes, fake artifacts with manifests and metrics, a job folder
with its recorded recipe): no model is loaded and no job process runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab import recipes
from llmlab.errors import LlmlabError
from llmlab.store import Parent, StepRecord, Store


def fake(store: Store, name: str, kind: str, *, parents: list[tuple[str, str | None]] = (), info: dict | None = None,
         step: StepRecord | None = None, files: dict[str, str] | None = None, metrics: dict | None = None):
    """An artifact of ``kind`` holding ``files`` (default one small file), with manifest facts and metrics."""
    with store.write(name, kind) as w:
        for rel, text in (files or {"weights.bin": "x" * 2000}).items():
            (w.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (w.path / rel).write_text(text)
        w.parents = [Parent(name=p, content_hash=store.get(p).content_hash, role=role) for p, role in parents]
        w.info = dict(info or {})
        w.step = step
    if metrics:
        store.record_metrics(name, metrics)
    return store.get(name)


# ----- quantize: which types and methods a model allows -----
WIDE_576 = {"model.embed_tokens.weight": [1000, 576], "model.layers.0.self_attn.q_proj.weight": [576, 576],
            "model.layers.0.mlp.down_proj.weight": [576, 1536], "model.norm.weight": [576]}


def test_a_576_wide_model_takes_the_256_block_types_with_fallbacks():
    from llmlab.quantize.choices import gguf_expected_bytes, n_params, type_choices

    choices = {c.type: c for c in type_choices(WIDE_576, imatrix=False)}
    q4, q8, q5 = choices["Q4_K_M"], choices["Q8_0"], choices["Q5_0"]
    # as llama.cpp does: the 576-wide tensors (embeddings, q_proj) go to Q5_0; down_proj (1536) stays Q4_K
    assert q4.available and q4.reason is None
    assert "2 tensors" in q4.note and "rows of 576" in q4.note and "fall back to Q5_0" in q4.note
    assert "Q8_0" in choices["Q6_K"].note and "Q5_1" in choices["Q5_K_M"].note
    assert q8.available and q8.reason is None and q8.note is None and q5.available  # blocks of 32 divide 576
    params = 1000 * 576 + 576 * 576 + 576 * 1536 + 576
    assert n_params(WIDE_576) == params
    assert q8.expected_bytes == gguf_expected_bytes("q8_0", params) == int(params * 8.5 / 8)
    assert q4.bits == 4.9 and q4.expected_bytes < q8.expected_bytes
    # IQ types fall back to IQ4_NL; the imatrix ones still wait for an importance matrix
    assert "needs an importance matrix" in choices["IQ2_XS"].reason and choices["IQ2_XS"].note is None
    with_imatrix = {c.type: c for c in type_choices(WIDE_576, imatrix=True)}
    assert with_imatrix["IQ2_XS"].available and "IQ4_NL" in with_imatrix["IQ2_XS"].note
    assert "IQ4_NL" in choices["IQ4_XS"].note and with_imatrix["IQ4_NL"].note is None
    # rows that are not a multiple of 32 fit no type: llama.cpp would leave them at F16
    odd = {c.type: c for c in type_choices({**WIDE_576, "model.layers.0.mlp.up_proj.weight": [1536, 100]},
                                          imatrix=True)}
    assert all(not c.available and "rows of 100" in c.reason and "multiple of 32" in c.reason
               for c in odd.values())


def test_imatrix_types_wait_for_an_importance_matrix():
    from llmlab.quantize.choices import imatrix_reason, type_choices

    wide = {"w": [512, 256]}
    without = {c.type: c for c in type_choices(wide, imatrix=False)}
    assert without["IQ2_XS"].needs_imatrix and without["IQ2_XS"].reason == imatrix_reason("IQ2_XS")
    assert not without["Q4_K_M"].needs_imatrix and without["Q4_K_M"].available
    assert [c.type for c in type_choices(wide, imatrix=False)][0] == "Q8_0"  # most bits first
    assert all(c.available for c in type_choices(wide, imatrix=True))


def test_method_choices_follow_the_group_size():
    from llmlab.quantize.choices import method_choices, needs_calibration

    fine = method_choices(WIDE_576, 4, 64)  # 64 divides 576 and 1536
    assert [c.method for c in fine] == ["gptq", "awq", "rtn"] and all(c.available for c in fine)
    assert [c.calibrated for c in fine] == [True, True, False]
    assert fine[0].expected_bytes == method_choices(WIDE_576, 4, 64)[2].expected_bytes > 0
    assert method_choices(WIDE_576, 8, 64)[0].expected_bytes > fine[0].expected_bytes  # more bits, larger
    coarse = method_choices(WIDE_576, 4, 128)  # 576 = 4.5 x 128
    assert all(not c.available and "Group size 128 does not divide" in c.reason for c in coarse)
    assert needs_calibration(["rtn", "awq"]) and not needs_calibration(["rtn"]) and not needs_calibration([])


def test_form_problems_name_what_is_missing():
    from llmlab.quantize.choices import form_problems

    ok = dict(types=["Q8_0"], methods=[], imatrix_source="none", imatrix=None, calibration=None, score=True,
              texts="world", qa="heldout", has_world=True)
    assert form_problems("m", **ok) == []
    assert form_problems("m", **{**ok, "types": []}) == ["Tick at least one type."]
    assert form_problems("m", **{**ok, "types": [], "methods": ["rtn"]}) == []
    assert "calibration file for GPTQ/AWQ" in form_problems("m", **{**ok, "calibration": ""})[0]
    assert "importance matrix" in form_problems("m", **{**ok, "imatrix_source": "file", "imatrix": ""})[0]
    assert "evaluation texts" in form_problems("m", **{**ok, "texts": ""})[0]
    assert form_problems("m", **{**ok, "texts": "", "score": False}) == []
    # without a world, everything that would come from it is named, in one sentence
    [problem] = form_problems("m", **{**ok, "imatrix_source": "world", "imatrix": "world", "calibration": "world",
                                      "has_world": False})
    assert problem == ("'m' has no demo world, so the importance matrix and the GPTQ/AWQ calibration and the "
                       "evaluation texts and the questions cannot come from it: give a file instead.")
    files = {**ok, "texts": "eval.txt", "qa": "none", "has_world": False}
    assert form_problems("m", **files) == []
    assert form_problems("m", **{**files, "qa": "heldout"}) == form_problems("m", **{**files, "qa": "world"}) != []


def test_form_config_and_existing_outputs(store: Store):
    from llmlab.quantize.choices import existing_outputs, form_config

    form = {"types": ["Q8_0", "Q4_K_M"], "methods": ["rtn"], "imatrix": None, "imatrix_chunks": 8, "score": True,
            "texts": "", "qa": "", "method_options": {"bits": 4, "group_size": 64, "calibration": None}}
    config = form_config("m", **form)
    assert config == {"model": "m", "types": ["q8_0", "q4_k_m", "rtn"], "imatrix": None, "imatrix_chunks": 8,
                      "score": True, "texts": "auto", "qa": None, "bits": 4, "group_size": 64}
    assert "name_prefix" not in config
    assert form_config("m", types=["Q8_0"], methods=[], imatrix="world", imatrix_chunks=1, score=False,
                       texts="x", qa="none", name_prefix="p")["name_prefix"] == "p"
    assert "redo" not in config and form_config("m", **{**form, "redo": True})["redo"] is True
    assert existing_outputs(config, store) == {}
    fake(store, "m", "base")
    fake(store, "m-q8_0", "gguf")  # no record of how it was made: a job replaces it
    # made from m without an importance matrix (as recorded before output keys): a job reuses it
    fake(store, "m-q4_k_m", "gguf", parents=[("m", "source")], info={"type": "Q4_K_M", "imatrix": None})
    assert existing_outputs(config, store) == {"m-q8_0": ["unrecorded settings"], "m-q4_k_m": []}
    fake(store, "other", "base", files={"weights.bin": "y" * 2000})
    fake(store, "m-f16", "gguf", parents=[("other", "source")], info={"type": "F16"})
    assert existing_outputs(config, store)["m-f16"] == ["another source model"]
    with pytest.raises(LlmlabError, match="not a valid artifact name"):
        existing_outputs({**config, "name_prefix": "not a name/"}, store)


def test_quality_axes_and_front():
    from llmlab.quantize.choices import plottable, quality_axes, quality_front

    rows = [{"name": "f16", "size_mb": 2.0, "kld_mean": 1e-6, "ppl": 20.0},
            {"name": "q8", "size_mb": 1.1, "kld_mean": 1e-4, "ppl": 20.1},
            {"name": "q5", "size_mb": 0.9, "kld_mean": 0.05, "ppl": 20.5},
            {"name": "q4", "size_mb": 0.6, "kld_mean": 0.01, "ppl": 21.0},
            {"name": "src", "size_mb": 4.0, "kld_mean": None, "ppl": 19.9},
            {"name": "zero", "size_mb": 0.5, "kld_mean": 0.0}]
    assert quality_axes(rows) == ["kld_mean", "ppl"]  # no row has kld_p99
    assert [r["name"] for r in plottable(rows, "kld_mean", log=True)] == ["f16", "q8", "q5", "q4"]
    assert [r["name"] for r in quality_front(rows, "kld_mean", log=True)] == ["q4", "q8", "f16"]  # smallest first
    assert [r["name"] for r in quality_front(rows, "kld_mean")] == ["zero"]  # 0 counts on a linear scale
    assert [r["name"] for r in quality_front(rows, "ppl")] == ["q4", "q5", "q8", "f16", "src"]


# ----- jobs: what a job is about, read from its recorded recipe -----
def recorded_job(queue, steps: list[dict], events: list[dict] = ()) -> str:
    job = queue.create(recipes.load({"name": "t", "steps": steps}))
    (Path(job.dir) / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return job.id


def test_a_jobs_steps_inputs_and_outputs(store: Store, monkeypatch: pytest.MonkeyPatch):
    from llmlab import jobs
    from llmlab.jobs import JobQueue, job_outputs, jobs_with_step, latest_job, step_of

    ids = iter(f"20260101-00000{i}-abcdef" for i in range(10))  # ids sort by time: one job per "second"
    monkeypatch.setattr(jobs, "time_id", lambda: next(ids))
    queue = JobQueue(store)
    quantize = recorded_job(queue, [{"quantize": {"model": "m", "types": ["q8_0"], "imatrix": "world"}}])
    tune = recorded_job(queue, [{"tune": {"name": "m-lora", "model": "m"}},
                                {"merge": {"name": "mix", "method": "linear", "models": ["m-lora", "other"]}}])
    [step] = queue.steps(quantize)
    assert step.kind == "quantize" and step.input_names() == ["m"]
    assert step.output_names() == ["m-f16", "m-imatrix", "m-q8_0"]
    assert job_outputs(queue, tune) == ["m-lora", "mix"]
    assert step_of(queue, tune, "merge").input_names() == ["m-lora", "other"]
    assert step_of(queue, quantize, "tune") is None
    assert [(j.id, s.kind) for j, s in jobs_with_step(queue, "tune")] == [(tune, "tune")]
    assert latest_job(queue, "quantize", reads="m").id == quantize
    assert latest_job(queue, "quantize", reads="other") is None
    assert latest_job(queue, "merge", reads="other").id == tune
    newer = recorded_job(queue, [{"quantize": {"model": "m", "types": ["q4_k_m"]}}])
    assert latest_job(queue, "quantize", reads="m").id == newer  # the newest first
    assert [j.id for j, _ in jobs_with_step(queue, "quantize", limit=1)] == [newer]


def test_unreadable_recipes_and_steps_are_left_out(store: Store):
    from llmlab.jobs import JobQueue, job_outputs

    queue = JobQueue(store)
    job = recorded_job(queue, [{"tune": {"name": "a", "model": "m"}}])
    recipe = Path(queue.get(job).dir) / "recipe.yaml"
    recipe.write_text("name: t\nsteps:\n  - bake: {x: 1}\n  - tune: {name: a, model: m, rank: 0}\n"
                      "  - tune: {name: b, model: m}\n  - just a string\n")
    assert job_outputs(queue, job) == ["b"]  # an unknown kind and an invalid config are skipped
    recipe.write_text("name: [oops")
    assert queue.steps(job) == []


def test_task_events_and_the_last_log(store: Store):
    from llmlab.jobs import JobQueue, last_log, task_events

    queue = JobQueue(store)
    job = recorded_job(queue, [{"tune": {"name": "a", "model": "m"}}], events=[
        {"type": "log", "message": "loading"},
        {"type": "progress", "task": "tune", "done": 1, "total": 4},
        {"type": "metric", "task": "tune", "step": 1, "loss": 2.0},
        {"type": "progress", "task": "accuracy", "done": 3, "total": 9},
        {"type": "progress", "task": "tune", "done": 2, "total": 4},
        {"type": "log", "message": "scoring"},
        {"type": "metric", "task": "tune", "step": 2, "loss": 1.5}])
    metrics, last = task_events(queue, job, "tune")
    assert [m["loss"] for m in metrics] == [2.0, 1.5] and last["done"] == 2
    assert task_events(queue, job, "distill") == ([], None)
    assert last_log(queue, job) == "scoring"
    assert last_log(queue, recorded_job(queue, [{"tune": {"name": "b", "model": "m"}}])) is None


# ----- merge: lineage from manifests -----
def merge_family(store: Store) -> None:
    fake(store, "base", "base")
    for name, anchor in (("spec-a", None), ("spec-b", "world:tune:people")):
        fake(store, name, "adapter", parents=[("base", "base")],
             step=StepRecord(kind="tune", config={"name": name, "model": "base", "anchor": anchor}, config_hash=name))
    fake(store, "mix", "merged", parents=[("spec-a", "adapter"), ("spec-b", "adapter")],
         info={"method": "task_arithmetic", "inputs": ["spec-a", "spec-b"]},
         metrics={"ppl": 30.0, "accuracy_people": 0.3, "accuracy_places": 0.8,
                  "parents": {"spec-a": {"ppl": 31.0, "accuracy_people": 0.75}, "spec-b": {"accuracy_places": 0.8}},
                  "retention": {"spec-a:people": 0.4, "spec-b:places": 1.0}})
    fake(store, "cat", "adapter", parents=[("spec-b", "adapter")], info={"method": "peft_cat"})


def test_merge_lineage_reads_parents_scores_and_anchors(store: Store):
    from llmlab.merge.lineage import (accuracy_by_skill, comparison_rows, merged_artifacts, parents_in_store,
                                      retention, suggests_anchor, unanchored)

    merge_family(store)
    assert sorted(a.name for a in merged_artifacts(store)) == ["cat", "mix"]  # an adapter the station combined counts
    mix = store.get("mix")
    rows = comparison_rows(mix)
    assert [(r["model"], r["role"]) for r in rows] == [("mix", "merge"), ("spec-a", "adapter"), ("spec-b", "adapter")]
    assert rows[1]["ppl"] == 31.0 and rows[1]["accuracy_people"] == 0.75 and rows[2]["ppl"] is None
    assert {"model": "spec-a", "skill": "people", "accuracy": 0.75} in accuracy_by_skill(rows)
    assert not any(r["skill"] == "objects" for r in accuracy_by_skill(rows))  # nothing measured there
    assert retention(mix) == {"spec-a:people": 0.4, "spec-b:places": 1.0}
    assert unanchored(mix, store) == ["spec-a"] and suggests_anchor(mix, store)
    assert not suggests_anchor(mix, store, threshold=0.3)
    store.rm("spec-a", force=True)
    assert parents_in_store(mix, store) == ["spec-b"] and not suggests_anchor(mix, store)  # no unanchored left


def test_merge_form_choices():
    from llmlab.merge.choices import (config_from_form, default_name, default_weight, takes_base, takes_densities,
                                      takes_t, takes_weights, writes_adapter_or_model)
    from llmlab.merge.methods import MethodInfo

    ties = MethodInfo("ties", "mergekit", "TIES", "required", per_model=("weight", "density"))
    slerp = MethodInfo("slerp", "mergekit", "SLERP", "required", shared={"t": None})
    peft = MethodInfo("peft_cat", "peft", "peft cat", "optional", per_model=("weight",))
    assert takes_base(ties) and takes_weights(ties) and takes_densities(ties) and not takes_t(ties)
    assert takes_t(slerp) and not takes_weights(slerp)
    assert not takes_base(peft) and writes_adapter_or_model(peft) and not writes_adapter_or_model(ties)
    assert not takes_base(MethodInfo("model_stock", "mergekit", "x", "ignored"))
    assert default_weight("linear", 3) == 0.33 and default_weight("ties", 3) == 1.0
    assert default_name(["a_b", "c", "d"], "task_arithmetic") == "a-b-c-task-arithmetic"
    assert default_name([], "ties") == "merge-ties"
    assert config_from_form("x", "ties", ["a", "b"], None, [1.0, 0.5], None, {}, None, "adapter") == {
        "name": "x", "method": "ties", "models": ["a", "b"], "weights": [1.0, 0.5]}
    assert config_from_form("x", "peft_cat", ["a"], "base", None, [0.7], {"t": 0.5}, "union", "adapter") == {
        "name": "x", "method": "peft_cat", "models": ["a"], "base": "base", "densities": [0.7],
        "tokenizer_source": "union", "parameters": {"t": 0.5}, "output": "adapter"}


# ----- export: what can be exported, and a server's metrics -----
def test_exportable_models_best_accuracy_first(store: Store):
    from llmlab.export.choices import accuracy_of, exportable, parity_applies

    fake(store, "plain", "gguf")
    fake(store, "good", "gguf", metrics={"accuracy": {"heldout": 0.8, "tune": 0.9}})
    fake(store, "fair", "base", metrics={"accuracy": 0.5})
    fake(store, "odd", "gguf", metrics={"accuracy": True})  # a bool is no score
    fake(store, "idx", "index")  # not a model
    assert [a.name for a in exportable(store)] == ["good", "fair", "odd", "plain"]
    assert accuracy_of(store.get("good")) == 0.8 and accuracy_of(store.get("odd")) is None
    assert parity_applies(store.get("good")) and not parity_applies(store.get("fair"))


def test_bundle_facts_and_server_metrics(store: Store):
    from llmlab.export.choices import bundle_files, parity_source, served_over_http, server_metric_rows

    fake(store, "src", "gguf")
    bundle = fake(store, "src-bundle", "bundle", files={"model/m.gguf": "g" * 3000, "Dockerfile": "FROM x"},
                  info={"source": "src", "format": "gguf"})
    rows = bundle_files(bundle)
    assert [r["file"] for r in rows] == ["Dockerfile", "model/m.gguf"] and rows[1]["size_kb"] == 3.0
    assert rows[1]["sha256"] == bundle.manifest.files["model/m.gguf"][:16]
    assert parity_source(bundle, store) == "src" and served_over_http(bundle)
    store.rm("src", force=True)
    assert parity_source(bundle, store) is None
    metrics = server_metric_rows({'llmlab_tokens_total{type="prompt"}': 7.0,
                                  'llmlab_request_latency_seconds_sum{endpoint="chat"}': 1.0,
                                  'llmlab_request_latency_seconds_count{endpoint="chat"}': 4.0,
                                  'llmlab_request_latency_seconds_sum{endpoint="completions"}': 2.0})
    assert metrics[0] == {"metric": "chat requests answered", "value": 0}  # absent counters show 0
    assert {"metric": "prompt tokens", "value": 7.0} in metrics
    assert {"metric": 'mean latency {endpoint="chat"} (ms)', "value": 250.0} in metrics
    assert {"metric": 'mean latency {endpoint="completions"} (ms)', "value": 0} in metrics  # no count yet


# ----- tune: the report of a tuned artifact -----
def test_tune_report_reads_metrics_facts_and_log(store: Store):
    from llmlab.tune.report import before_after, example_question, run_facts, student_vs_teacher, training_log

    art = fake(store, "lora", "adapter", info={"method": "lora", "steps": 10, "tok_s": None, "device": "cpu"},
               files={"training_log.jsonl": '{"step": 1, "loss": 3.0, "val_loss": null}\n\n'
                                            '{"step": 10, "loss": 1.0, "val_loss": 1.2}\n'},
               metrics={"accuracy_before": 0.1, "accuracy": 0.6, "val_loss_before": 2.0, "val_loss_after": 1.2,
                        "ppl": 3.0})
    changes = before_after(art.metrics)
    assert [c.label for c in changes] == ["held-out accuracy", "validation loss"]  # no ppl_before: left out
    accuracy, loss = changes
    assert accuracy.improved and accuracy.delta == pytest.approx(0.5)
    assert loss.improved and loss.delta == pytest.approx(-0.8) and not loss.higher_is_better
    assert run_facts(art.manifest.info) == {"method": "lora", "device": "cpu", "steps": 10}
    assert [r["step"] for r in training_log(art)] == [1, 10] and training_log(store.get("lora"))[0]["val_loss"] is None
    assert training_log(fake(store, "nolog", "adapter")) == []
    assert student_vs_teacher({"params": 10, "params_teacher": 40, "ppl": 5.0, "kld_mean": 0.1}) == [
        {"measure": "params", "student": 10, "teacher": 40}, {"measure": "ppl", "student": 5.0, "teacher": None}]
    assert example_question(store, art) == "Hello!"  # no demo world in its lineage


# ----- agents, evaluate, the store's catalog -----
def test_agent_choices_and_trace_rows(store: Store):
    from llmlab.agents.choices import agent_choices, default_agent, shorten, trace_rows, world_sources

    choices = agent_choices(store)
    assert choices == ["spec:rag", "spec:rag-reader", "spec:rag-rules"] and choices[default_agent(choices)] == "spec:rag-rules"
    assert default_agent(["helper", "spec:rag", "spec:rag-rules"]) == 0  # an agent artifact first
    assert world_sources(store) == []
    [row] = trace_rows([{"seq": 1, "node": "retrieve", "latency_ms": 3.5, "tokens": 0, "retrieved_ids": ["a", "b"],
                         "inputs": {"q": "x" * 300}, "outputs": "ok"}])
    assert row["retrieved"] == "a, b" and row["outputs"] == "ok" and len(row["inputs"]) == 160
    assert row["inputs"].endswith("…") and shorten("short") == "short"


def test_leaderboard_choices():
    from llmlab.evaluate.choices import pareto_rows, scoring_job, suite_from, unscored
    from llmlab.evaluate.leaderboard import Leaderboard

    config = suite_from("heldout, tune,", "", 5)
    assert [(t.source, t.limit) for t in config.tasks] == [("heldout", 5), ("tune", 5)]
    assert config.texts is None and config.track is False
    board = Leaderboard("s", "h", [
        {"name": "a", "kind": "base", "size_mb": 10.0, "ppl": 5.0, "quality_from": "cached"},
        {"name": "b", "kind": "gguf", "size_mb": 4.0, "ppl": 6.0, "quality_from": "cached"},
        {"name": "c", "kind": "gguf", "size_mb": 6.0, "ppl": 7.0, "quality_from": "cached"},
        {"name": "d", "kind": "gguf", "size_mb": 3.0, "ppl": None, "quality_from": "not scored"}])
    assert unscored(board) == ["d"]
    rows = {r["name"]: r["pareto"] for r in pareto_rows(board, "size_mb", "ppl")}
    assert rows == {"a": True, "b": True, "c": False}  # c is larger and worse than b; d has no ppl
    job = scoring_job(config, board, speed=True)
    assert job.models == ["a", "b", "c", "d"] and job.speed and job.track and config.models == []


def test_catalog_rows_and_lineage_graph(store: Store):
    from llmlab.catalog import kind_counts, lineage_dot, table_row

    fake(store, "micro", "base", metrics={"ppl": 12.5, "accuracy": {"tune": 0.5, "heldout": 0.25}, "flag": True})
    child = fake(store, "child", "full", parents=[("micro", "base")], metrics={"gen_tok_s": False})
    assert kind_counts(store.list()) == {"base": 1, "full": 1}
    row = table_row(store.get("micro"))  # metrics come from the leaderboard's scores (evaluate.choices.scores)
    assert row["name"] == "micro" and "ppl" not in row and "accuracy.heldout" not in row
    assert table_row(child)["parents"] == "micro"
    dot = lineage_dot(store.lineage("child"))
    assert '"micro" -> "child" [label="base"];' in dot and "penwidth=2" in dot
    store.rm("micro", force=True)
    assert "(missing)" in lineage_dot(store.lineage("child"))
