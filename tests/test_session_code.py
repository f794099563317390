"""Export as code: an app session's jobs become a recipe, a script and a marimo notebook.

Gathering and merging are tested on job folders written by hand (no process runs); the replay
test runs a real two-job session (build the micro model, quantize it to Q8_0) through the job
queue, exports it, and reruns the exported script and notebook in fresh processes and fresh
stores: every artifact comes back with the same file hashes (the micro build is bit-reproducible
at a fixed thread count; see docs/recipes.md). The page test submits a job from the Jobs page,
waits for it and presses Export as code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmlab import recipes, session_code
from llmlab.cli import main
from llmlab.errors import ConfigError, NotFoundError
from llmlab.jobs import JobInfo, JobQueue
from llmlab.store import StepRecord, Store

MICRO = {"name": "m", "size": "micro"}
Q8 = {"model": "m", "types": ["q8_0"], "score": False}


def fake_job(queue: JobQueue, steps: list[dict], status: str, session: str | None, at: float) -> JobInfo:
    """A job folder as the queue writes it, with ``status`` and creation time ``at`` filled in by hand."""
    job = queue.create(recipes.load({"name": "t", "steps": steps}), session=session)
    info = json.loads(Path(job.dir, "job.json").read_text())
    info.update(status=status, created=at)
    Path(job.dir, "job.json").write_text(json.dumps(info))
    return JobInfo.model_validate(info)


@pytest.fixture
def queue(store: Store) -> JobQueue:
    return JobQueue(store)


def test_gather_keeps_submission_order_dedupes_and_leaves_out_unfinished_jobs(queue: JobQueue):
    now = time.time()
    build = fake_job(queue, [{"build-demo": MICRO}], "done", "s1", now + 1)
    fake_job(queue, [{"build-demo": {"name": "other", "size": "micro"}}], "done", "s2", now + 2)  # another tab
    fake_job(queue, [{"build-demo": {"name": "cli", "size": "micro"}}], "done", None, now + 2.5)  # a terminal
    failed = fake_job(queue, [{"quantize": Q8}], "failed", "s1", now + 3)
    score = fake_job(queue, [{"score": {"model": "m"}}], "done", "s1", now + 4)
    fake_job(queue, [{"build-demo": MICRO}, {"score": {"model": "m"}}], "done", "s1", now + 5)  # repeats both
    queued = fake_job(queue, [{"score": {"model": "m", "reference": "m"}}], "queued", "s1", now + 6)

    code = session_code.gather(queue, session="s1", lineage=False)
    assert [s.kind for s in code.recipe.steps] == ["build-demo", "score"]
    assert [j.id for j in code.jobs] == [build.id, score.id, code.jobs[2].id]
    assert [j.id for j in code.left_out] == [failed.id, queued.id]
    assert code.origins[0].startswith(f"job {build.id}") and code.origins[1].startswith(f"job {score.id}")
    assert "Left out (only jobs that finished `done`" in code.summary() and f"{failed.id} (failed)" in code.summary()
    assert session_code.sessions(queue) == ["s1", "s2"]

    with_failed = session_code.gather(queue, session="s1", statuses=("done", "failed"), lineage=False)
    assert [s.kind for s in with_failed.recipe.steps] == ["build-demo", "quantize", "score"]
    by_id = session_code.gather(queue, job_ids=[score.id, build.id], lineage=False)
    assert [s.kind for s in by_id.recipe.steps] == ["build-demo", "score"]  # submission order, not argument order


def test_lineage_rebuilds_inputs_made_before_the_session_and_names_imported_ones(queue: JobQueue, store: Store):
    built = recipes.make_step("build-demo", MICRO)
    with store.write("m", "base") as w:
        (w.path / "weights.txt").write_text("made by a recipe step")
        w.step = StepRecord(kind="build-demo", config=built.config_dict(), config_hash="x")
    with store.write("ext", "base") as w:
        (w.path / "weights.txt").write_text("imported")
    now = time.time()
    fake_job(queue, [{"quantize": Q8}], "done", "s", now)
    fake_job(queue, [{"score": {"model": "ext", "reference": "m"}}], "done", "s", now + 1)

    code = session_code.gather(queue, session="s")
    assert [s.kind for s in code.recipe.steps] == ["build-demo", "quantize", "score"]
    assert code.recipe.steps[0].config_dict() == built.config_dict()
    assert code.origins[0] == "lineage of 'm' (made before this session)"
    assert code.needs == ["ext"] and "cannot rebuild" in code.summary()
    plain = session_code.gather(queue, session="s", lineage=False)
    assert [s.kind for s in plain.recipe.steps] == ["quantize", "score"] and plain.needs == []


def test_write_gives_a_recipe_that_loads_back_a_script_and_a_notebook_marimo_accepts(queue: JobQueue, tmp_path: Path):
    now = time.time()
    fake_job(queue, [{"build-demo": MICRO}], "done", "s", now)
    fake_job(queue, [{"quantize": Q8}, {"score": {"model": "m-q8_0", "reference": "m"}}], "done", "s", now + 1)
    code = session_code.gather(queue, session="s")
    files = session_code.write(code, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["recipe.yaml", "session_s.py",
                                                                     "session_s_notebook.py"]
    again = recipes.load(files["recipe"])
    assert [(s.kind, s.config_dict()) for s in again.steps] == [(s.kind, s.config_dict()) for s in code.recipe.steps]
    assert files["script"].read_text() == recipes.export_script(code.recipe)
    notebook = files["notebook"].read_text()
    compile(notebook, "notebook.py", "exec")
    assert notebook.count("@app.cell") == 3 + 2 * 3 and "## Step 3: score" in notebook
    marimo = Path(sys.executable).with_name("marimo")
    result = subprocess.run([str(marimo), "check", "--strict", str(files["notebook"])], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_step_kind_can_share_a_notebook_with_the_others():
    # The notebook imports every step's config class and function by name into one namespace.
    where: dict[str, set[str]] = {}
    for spec in recipes.STEPS.values():
        for path in (spec.config, spec.function):
            module, name = path.split(":")
            where.setdefault(name, set()).add(module)
    assert {n: m for n, m in where.items() if len(m) > 1} == {}
    assert not set(where) & session_code.NOTEBOOK_NAMES and not any(n.startswith("step_") for n in where)


def test_file_names_never_shadow_a_module():
    assert session_code.file_stem("session_2026-x") == "session_2026_x"
    assert session_code.file_stem("llmlab") == "llmlab_recipe"  # `python llmlab.py` would import itself
    assert session_code.file_stem("2 jobs!") == "recipe_2_jobs"


def test_bad_requests_get_one_clear_error_and_write_nothing(queue: JobQueue, tmp_path: Path):
    with pytest.raises(NotFoundError, match="started no jobs") as e:
        session_code.gather(queue, session="s")
    assert "Sessions with jobs: none yet" in str(e.value.hint)
    fake_job(queue, [{"build-demo": MICRO}], "failed", "s", time.time())
    with pytest.raises(NotFoundError, match=r"no job that finished done .*\(failed\)"):
        session_code.gather(queue, session="s")
    with pytest.raises(ConfigError, match="not a valid app session id"):
        session_code.gather(queue, session="../x")
    with pytest.raises(ConfigError, match="not both or neither"):
        session_code.gather(queue, session="s", job_ids=["x"])
    code = session_code.gather(queue, session="s", statuses=("failed",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        session_code.write(code, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_cli_exports_the_latest_app_session(queue: JobQueue, store: Store, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("LLMLAB_HOME", str(store.root))
    assert main(["jobs", "export"]) == 2  # no app session yet
    assert "no app session to export" in capsys.readouterr().err
    now = time.time()
    fake_job(queue, [{"build-demo": {"name": "old", "size": "micro"}}], "done", "older", now)
    job = fake_job(queue, [{"build-demo": MICRO}], "done", "newer", now + 1)
    assert main(["jobs", "export"]) == 0
    out = capsys.readouterr().out
    assert f"build-demo: job {job.id}" in out and (store.root / ".sessions" / "newer" / "recipe.yaml").is_file()
    assert main(["jobs", "export", job.id, "--out", str(tmp_path / "by-id")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert recipes.load(tmp_path / "by-id" / "recipe.yaml").steps[0].config.name == "m"
    assert main(["jobs", "show", job.id]) == 0 and json.loads(capsys.readouterr().out)["session"] == "newer"


# ----- real jobs -----
@pytest.fixture(scope="module")
def real_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobQueue, session_code.SessionCode, dict]:
    """A two-job app session run by the queue (build the micro model, then quantize it to Q8_0), exported."""
    pytest.importorskip("llama_cpp")
    queue = JobQueue(Store(tmp_path_factory.mktemp("session") / "models"))
    build = queue.submit(recipes.load({"name": "build", "steps": [{"build-demo": MICRO}]}), session="s")
    quant = queue.submit(recipes.load({"name": "quantize", "steps": [{"quantize": Q8}]}), session="s")
    for job in (build, quant):
        assert queue.wait(job.id, timeout=300).status == "done", queue.log(job.id)
    code, files = session_code.export_session(queue, "s")
    return queue, code, files


def _same_artifacts(original: Store, replayed: Store, names: list[str]) -> None:
    for name in names:
        a, b = original.get(name), replayed.get(name)
        assert b.manifest.files == a.manifest.files, name
        assert b.content_hash == a.content_hash, name
        assert b.kind == a.kind, name


OUTPUTS = ["m", "m-f16", "m-q8_0"]


@pytest.mark.slow
def test_exported_script_replays_the_session_to_the_same_hashes(real_session, tmp_path: Path):
    queue, code, files = real_session
    assert [s.kind for s in code.recipe.steps] == ["build-demo", "quantize"] and code.needs == []
    assert files["recipe"].parent == queue.store.root / ".sessions" / "s"
    home = tmp_path / "replay"
    env = {**os.environ, "LLMLAB_HOME": str(home), "LLMLAB_THREADS": os.environ.get("LLMLAB_THREADS", "1")}
    subprocess.run([sys.executable, str(files["script"])], check=True, env=env, cwd=tmp_path, timeout=600,
                   capture_output=True)
    _same_artifacts(queue.store, Store(home), OUTPUTS)
    # The quantize job alone: its input's recorded step (lineage) is the session's build step.
    alone = session_code.gather(queue, job_ids=[code.jobs[1].id])
    assert [(s.kind, s.config_dict()) for s in alone.recipe.steps] == \
        [(s.kind, s.config_dict()) for s in code.recipe.steps]


@pytest.mark.slow
def test_exported_notebook_runs_headless_to_the_same_hashes(real_session, tmp_path: Path):
    from apptest import run_notebook

    queue, _, files = real_session
    defs = run_notebook(files["notebook"], tmp_path, '{"variants": defs["step_2"]["variants"]}')
    assert defs == {"variants": ["m-q8_0"]}
    _same_artifacts(queue.store, Store(tmp_path / "models"), OUTPUTS)


@pytest.mark.slow
def test_jobs_page_exports_the_session_it_submitted(empty_home: Store):
    from apptest import open_page, texts

    at = open_page("views/jobs.py")
    session = at.session_state["llmlab:session"]
    assert "started no jobs yet" in texts(at)
    at.selectbox(key="jobs:recipe").select("(write your own)").run()
    at.text_area(key="jobs:yaml:(write your own)").input(
        "name: t\nsteps:\n  - build-demo: {name: x, size: micro, steps: 3}\n").run()
    at.button(key="jobs:submit").click().run()
    [job] = JobQueue(empty_home).list()
    assert job.session == session
    assert JobQueue(empty_home).wait(job.id, timeout=300).status == "done", JobQueue(empty_home).log(job.id)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="jobs:export").click().run()
    assert not at.exception, [e.value for e in at.exception]
    folder = empty_home.root / ".sessions" / session
    assert f"Wrote the code to {folder}" in texts(at)
    assert sorted(p.name for p in folder.iterdir()) == ["recipe.yaml", f"session_{session.replace('-', '_')}.py",
                                                        f"session_{session.replace('-', '_')}_notebook.py"]
    assert recipes.load(folder / "recipe.yaml").steps[0].config.steps == 3
    assert len(at.get("download_button")) == 4


def test_jobs_page_says_clearly_when_the_session_has_nothing_finished(empty_home: Store):
    from apptest import open_page, texts

    at = open_page("views/jobs.py")
    session = at.session_state["llmlab:session"]
    failed = fake_job(JobQueue(empty_home), [{"build-demo": MICRO}], "failed", session, time.time())
    at.run()
    assert "No job of this session has finished yet" in texts(at)
    at.button(key="jobs:export").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"no job that finished done (jobs: {failed.id} (failed))" in at.error[0].value
    assert not (empty_home.root / ".sessions").exists()
