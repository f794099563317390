"""The Tune station's front ends: the app's Tune page (through ``AppTest``) and ``notebooks/tune.py``.

The page tests point ``LLMLAB_HOME`` at a temporary store holding the micro model (imported with
``store.add``, so it has no demo world: the data is a small QA file written to the test's
folder). Starting a job and running the notebook headless are marked slow.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from apptest import open_page, run_notebook, texts  # noqa: E402

from llmlab import world  # noqa: E402
from llmlab.jobs import JobQueue  # noqa: E402
from llmlab.store import Store  # noqa: E402
from llmlab.tune.records import MASK_CLOSE, MASK_OPEN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "views/tune.py"
NOTEBOOK = ROOT / "notebooks" / "tune.py"


@pytest.fixture
def qa_file(tmp_path: Path, micro_model_dir: Path) -> Path:
    """The micro world's tuning questions as a question/answer JSONL file."""
    rows = world.World.load(micro_model_dir / "world").split("tune")
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    return path


def test_page_imports_no_torch():
    """The page's module-level imports leave torch (and transformers, peft) unloaded."""
    tree = ast.parse((ROOT / "app" / PAGE).read_text())
    imports = "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    code = imports + "\nimport sys\nheavy = {'torch', 'transformers', 'peft', 'trl'} & set(sys.modules)\n" \
                     "assert not heavy, heavy\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT / "app")  # app/: widgets


def test_page_renders_on_an_empty_store(empty_home: Store):
    at = open_page(PAGE, timeout=120)
    assert "holds no model to tune" in texts(at)
    assert at.selectbox(key="tune:model").value == "(a local folder)"
    assert "No tuning jobs yet" in texts(at)
    assert all(b.key != "tune:start" for b in at.button)  # nothing to start yet


def test_page_renders_with_the_micro_model(micro_home: Store):
    at = open_page(PAGE, timeout=120)
    assert at.selectbox(key="tune:model").value == "micro"
    assert at.selectbox(key="tune:method").value == "lora"
    assert at.number_input(key="tune:rank").value == 32  # TuneConfig's default
    assert at.text_input(key="tune:data").value == "world:tune"
    assert "Runs **lora** with **" in texts(at)  # the backend plan
    assert at.button(key="tune:start") and at.button(key="tune:preview")
    # the folded options come from TuneConfig too
    assert at.checkbox(key="tune:resume").value is True
    assert at.selectbox(key="tune:schedule").value == "cosine"


def test_an_invalid_option_shows_an_error_not_an_exception(micro_home: Store):
    at = open_page(PAGE, timeout=120)
    at.number_input(key="tune:rank").set_value(0).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "rank must be at least 1" in at.error[0].value
    assert all(b.key != "tune:start" for b in at.button)  # invalid settings cannot start
    at.number_input(key="tune:rank").set_value(8)
    at.number_input(key="tune:learning_rate").set_value(-1.0).run()
    assert not at.exception and "learning_rate must be positive" in at.error[0].value


def test_distill_section_offers_the_store_models_and_checks_its_options(micro_home: Store):
    at = open_page(PAGE, timeout=120)
    assert at.selectbox(key="distill:teacher").options == ["micro"]
    assert at.text_input(key="distill:name").value == "micro-student"
    at.number_input(key="distill:temperature").set_value(0.0).run()
    at.button(key="distill:start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("temperature" in e.value for e in at.error)  # DistillConfig's own check, as a recipe gets it
    assert "distill:job" not in at.session_state and JobQueue(micro_home).list() == []


def test_qlora_on_cpu_shows_the_fallback_message(micro_home: Store, monkeypatch: pytest.MonkeyPatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    at = open_page(PAGE, timeout=120)
    at.selectbox(key="tune:method").select("qlora").run()
    assert not at.exception
    assert any("QLoRA needs an NVIDIA GPU" in w.value for w in at.warning)


def test_grpo_offers_adapters_and_shows_each_rewards_code_before_it_runs(micro_home: Store, tmp_path: Path):
    with micro_home.write("micro-sft", "adapter") as w:  # an SFT adapter: GRPO may start from it
        (w.path / "adapter_config.json").write_text("{}")
    at = open_page(PAGE, timeout=120)
    assert "micro-sft" not in at.selectbox(key="tune:model").options  # lora tunes models only
    at.selectbox(key="tune:method").select("grpo").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "micro-sft" in at.selectbox(key="tune:model").options
    assert "def reward_exact_match" in texts(at) and at.button(key="tune:start")
    # the user's own reward: a missing file is an error and nothing can start
    at.text_input(key="tune:rewards").input(f"{tmp_path}/nope.py:score").run()
    assert not at.exception and "does not exist" in at.error[0].value
    assert all(b.key != "tune:start" for b in at.button)
    # an existing one: its code is shown, with a warning, before Start
    mine = tmp_path / "mine.py"
    mine.write_text("def score(completion, record):\n    return 1.0  # my reward\n")
    at.text_input(key="tune:rewards").input(f"exact_match, {mine}:score=0.5").run()
    assert not at.exception and "return 1.0  # my reward" in texts(at)
    assert any("runs inside the tuning job" in w.value for w in at.warning) and at.button(key="tune:start")


def grpo_job(store: Store, qa_file: Path) -> tuple[str, list[dict]]:
    """A running tune job whose events.jsonl is a real 3-step GRPO run's, written as the job process writes
    it (``json_lines``); returns the job id and those events."""
    import os

    import psutil

    from llmlab import recipes
    from llmlab.events import json_lines
    from llmlab.tune import TuneConfig, tune

    config = TuneConfig(name="micro-grpo", model="micro", method="grpo", data=str(qa_file), steps=3, batch_size=2,
                        group_size=3, max_new_tokens=4, evaluate=False, checkpoint_every=2, show_samples=2)
    queue = JobQueue(store)
    job = queue.create(recipes.Recipe(name="g", steps=[recipes.make_step("tune", config)]))
    events_file = queue.root / job.id / "events.jsonl"
    with open(events_file, "w") as f:
        tune(config, store=store, progress=json_lines(f))
    info = job.model_copy(update={"status": "running", "started": time.time(), "pid": os.getpid(),
                                  "pid_started": psutil.Process().create_time()})
    (queue.root / job.id / "job.json").write_text(info.model_dump_json())
    return job.id, [json.loads(line) for line in events_file.read_text().splitlines()]


def chart_series(at) -> dict[str, list[float]]:
    """Each drawn chart's y-axis title and the y values it plots."""
    import pyarrow as pa

    out = {}
    for chart in at.get("vega_lite_chart"):
        y = json.loads(chart.proto.spec)["layer"][0]["encoding"]["y"]
        [data] = chart.proto.datasets
        out[y["title"]] = pa.ipc.open_stream(data.data.data).read_pandas()[y["field"]].tolist()
    return out


def test_live_view_charts_a_grpo_runs_events_and_shows_its_samples(micro_home: Store, qa_file: Path):
    job_id, events = grpo_job(micro_home, qa_file)
    metrics = [e for e in events if e["type"] == "metric" and e.get("task") == "tune"]
    [*_, shown] = [e for e in events if e.get("samples")]
    at = open_page(PAGE, timeout=120)
    assert at.session_state["tune:job"] == job_id and "status **running**" in texts(at)
    charts = chart_series(at)
    assert charts == {label: [e[key] for e in metrics] for key, label in
                      (("reward", "reward"), ("group_accuracy", "group accuracy"), ("kl", "KL to the start"),
                       ("completion_len", "answer length (tokens)"))}, charts  # one point a step each
    latest = {m.label: m.value for m in at.metric}
    assert latest["step"] == "3" and float(latest["reward"]) == metrics[-1]["reward"]
    [table] = at.dataframe
    assert f"Sampled answers at step {shown['step']}" in texts(at)
    assert table.value["answer"].tolist() == [a["text"] for s in shown["samples"] for a in s["answers"]]


def test_preview_marks_the_masked_part(micro_home: Store, qa_file: Path):
    at = open_page(PAGE, timeout=120)
    at.button(key="tune:preview").click().run()  # world:tune, but this micro model has no world
    assert not at.exception and "has no demo world" in at.error[0].value
    at.text_input(key="tune:data").input(str(qa_file)).run()
    at.button(key="tune:preview").click().run()
    assert not at.exception, [e.value for e in at.exception]
    samples = [c.value for c in at.code if MASK_OPEN in c.value]
    assert len(samples) == 3
    first = json.loads(qa_file.read_text().splitlines()[0])
    masked, _, trained = samples[0].partition(MASK_CLOSE)
    assert first["question"] in masked and first["answer"] in trained
    assert "trained" in texts(at)


@pytest.mark.slow
def test_start_runs_a_job_and_the_page_shows_its_results(micro_home: Store, qa_file: Path):
    at = open_page(PAGE, timeout=120)
    at.text_input(key="tune:data").input(str(qa_file)).run()
    at.number_input(key="tune:epochs").set_value(1.0).run()
    at.number_input(key="tune:rank").set_value(4).run()
    at.button(key="tune:start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Started job" in at.success[0].value
    job_id = at.session_state["tune:job"]
    queue = JobQueue(micro_home)
    job = queue.wait(job_id, timeout=600)
    assert job.status == "done", queue.log(job_id)
    recipe = queue.recipe(job_id)
    assert recipe["steps"][0]["tune"]["epochs"] == 1.0 and recipe["steps"][0]["tune"]["rank"] == 4
    art = micro_home.get("micro-lora")
    assert art.kind == "adapter" and [p.name for p in art.manifest.parents] == ["micro"]

    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "status **done**" in texts(at)
    assert any(m.label == "validation loss (tuned)" for m in at.metric)  # base vs tuned
    assert any(m.label == "tokens/s" for m in at.metric)  # from the job's metric events
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart"), "the loss chart is drawn"
    # the same prompt to base and tuned, side by side
    key = f"tune:chat:micro-lora:{art.content_hash[:12]}"
    at.number_input(key=f"{key}:n").set_value(4)
    at.button(key=f"{key}:ask").click().run(timeout=300)
    assert not at.exception, [e.value for e in at.exception]
    [turn] = at.session_state[key]
    assert set(turn) == {"prompt", "base", "tuned"} and all(isinstance(v, str) for v in turn.values())
    assert len(at.chat_message) == 4  # question and answer in each column


@pytest.mark.slow
def test_cancel_then_resume_continues_from_the_checkpoint(micro_home: Store, qa_file: Path):
    at = open_page(PAGE, timeout=120)
    at.text_input(key="tune:data").input(str(qa_file)).run()
    at.number_input(key="tune:steps").set_value(20)
    at.number_input(key="tune:rank").set_value(4)
    at.checkbox(key="tune:evaluate").uncheck().run()
    at.button(key="tune:start").click().run()
    job_id = at.session_state["tune:job"]
    queue = JobQueue(micro_home)
    end = time.monotonic() + 300
    while not any(e.get("type") == "progress" and e.get("task") == "tune" and e.get("done", 0) >= 2
                  for e in queue.events(job_id)):
        assert time.monotonic() < end and queue.get(job_id).status in ("queued", "running"), queue.log(job_id)
        time.sleep(0.2)
    at.run()
    at.button(key=f"tune:cancel:{job_id}").click().run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    assert queue.get(job_id).status == "cancelled" and not micro_home.exists("micro-lora")
    at.button(key=f"tune:resume:{job_id}").click().run()  # the same settings, submitted again
    assert not at.exception, [e.value for e in at.exception]
    again = at.session_state["tune:job"]
    assert again != job_id and queue.recipe(again) == queue.recipe(job_id)
    assert queue.wait(again, timeout=300).status == "done", queue.log(again)
    assert micro_home.get("micro-lora").manifest.info["resumed_from_step"] >= 2


# The notebook's definitions the test checks (an expression over ``defs``).
NOTEBOOK_REPORT = """{
    "tuned": defs["tuned"].name if defs.get("tuned") is not None else None,
    "kind": defs["tuned"].kind if defs.get("tuned") is not None else None,
    "parents": [p.name for p in defs["tuned"].manifest.parents] if defs.get("tuned") is not None else [],
    "exists": defs.get("tuned") is not None and defs["store"].exists(defs["tuned"].name),
    "samples": [s.get("marked") for s in defs.get("samples") or []],
    "log_rows": len(defs["tune_log"]) if "tune_log" in defs else 0,
    "scores": defs.get("scores"),
    "answers": [defs.get("base_answer"), defs.get("tuned_answer")],
    "student": ({"kind": defs["student"].kind, "parents": [(p.name, p.role) for p in defs["student"].manifest.parents],
                 "metrics": sorted(defs["student"].metrics)} if defs.get("student") is not None else None),
}"""


@pytest.mark.slow
def test_notebook_tunes_headless_with_the_micro_model(tmp_path: Path):
    defs = run_notebook(NOTEBOOK, tmp_path, NOTEBOOK_REPORT, timeout=900)
    assert defs["tuned"] == "demo-micro-lora" and defs["kind"] == "adapter" and defs["exists"]
    assert defs["parents"] == ["demo-micro"]
    assert defs["samples"] and all(MASK_OPEN in s and MASK_CLOSE in s for s in defs["samples"])
    assert defs["log_rows"] > 0
    assert set(defs["scores"]) == {"base", "tuned"} and all(0 <= v <= 1 for v in defs["scores"].values())
    assert all(isinstance(a, str) for a in defs["answers"])
    student = defs["student"]  # the distillation section
    assert student["kind"] == "distilled" and student["parents"] == [["demo-micro", "teacher"]]
    assert {"kld_mean", "top1", "ppl", "ppl_teacher", "size_ratio", "speedup"} <= set(student["metrics"])


def test_side_by_side_chat_leaves_the_system_prompt_to_each_template(micro_home: Store):
    """Empty by default (each model's chat template default applies), and the placeholder says so."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string(
        f"import sys\nsys.path[:0] = [{str(ROOT / 'app')!r}, {str(ROOT / 'tests')!r}]\n"
        "from apptest import load_page\nfrom llmlab.store import Store\n"
        "store = Store()\nload_page('views/tune.py').side_by_side(store, 'micro', store.get('micro'))\n",
        default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    [system] = [t for t in at.text_input if t.label == "System prompt"]
    assert system.value == "" and "template default" in system.placeholder
