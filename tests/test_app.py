"""The Streamlit app, page by page, through ``streamlit.testing.v1.AppTest``.

Each test points ``LLMLAB_HOME`` at a temporary store and drives the real entry script, switching
to a page the way its navigation does. Tests that load a model or run a job are marked slow.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("streamlit")
from apptest import APP, open_page, texts  # noqa: E402

from llmlab import recipes  # noqa: E402
from llmlab.jobs import JobQueue  # noqa: E402
from llmlab.store import Parent, Store  # noqa: E402

# Every page the app registers: each renders on an empty store and with a micro model.
PAGES = tuple(f"views/{p.name}" for p in sorted((APP.parent / "views").glob("*.py")))


def micro_recipe(name: str = "x", steps: int | None = None) -> recipes.Recipe:
    cfg: dict = {"name": name, "size": "micro"}
    if steps:
        cfg["steps"] = steps
    return recipes.load({"name": "t", "steps": [{"build-demo": cfg}]})


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_on_an_empty_store(empty_home: Store, page: str):
    at = open_page(page)
    assert str(empty_home.root) in texts(at)  # the sidebar names the store


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_with_a_micro_model(micro_home: Store, page: str):
    open_page(page)


def test_home_counts_artifacts_by_kind(micro_home: Store):
    at = open_page("views/home.py")
    assert [(m.label, m.value) for m in at.metric] == [("base", "1")]


def test_models_table_lists_the_artifact_and_its_details(micro_home: Store):
    at = open_page("views/models.py")
    table = at.dataframe[0].value
    assert list(table["name"]) == ["micro"] and list(table["kind"]) == ["base"]
    assert at.selectbox(key="models:selected").value == "micro"
    assert at.get("graphviz_chart"), "the lineage graph is drawn"
    at.button(key="verify:micro").click().run()
    assert not at.exception and "is intact" in at.success[0].value


def test_lineage_graph_and_metrics_columns_follow_the_manifests(micro_home: Store):
    parent = micro_home.get("micro")
    with micro_home.write("child", "full") as w:
        (w.path / "weights.txt").write_text("not really weights")
        w.parents = [Parent(name="micro", content_hash=parent.content_hash, role="base")]
    micro_home.record_metrics("child", {"ppl": 12.5, "accuracy": {"tune": 0.5, "heldout": 0.25}})
    at = open_page("views/models.py")
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["child", "parents"] == "micro"
    # scores are the Leaderboard's (none cached here), never a step's own figures from metrics.json
    assert "ppl" not in table.columns and "accuracy.heldout" not in table.columns
    assert table["accuracy (heldout)"].isna().all() and table["perplexity"].isna().all()
    assert at.selectbox(key="models:selected").value == "child"  # newest first
    assert "Not on the Leaderboard yet" in texts(at) and "metrics.json" in at.expander[0].label
    dot = at.get("graphviz_chart")[0].proto.spec
    assert '"micro" -> "child" [label="base"]' in dot
    assert "cannot be chatted" not in texts(at)  # full models are chat-able
    micro_home.rm("micro", force=True)
    at = open_page("views/models.py")
    assert "(missing)" in at.get("graphviz_chart")[0].proto.spec


def test_verify_reports_a_tampered_file(micro_home: Store):
    (micro_home.get("micro").path / "config.json").write_text("{}")
    at = open_page("views/models.py")
    at.button(key="verify:micro").click().run()
    assert "tampered file: config.json" in at.error[0].value


@pytest.mark.slow
def test_chat_streams_a_reply_from_the_micro_model(micro_home: Store):
    at = open_page("views/models.py", timeout=180)
    key = f"chat:micro:{micro_home.get('micro').content_hash}"
    at.number_input(key=f"{key}:s").set_value(0)  # a fixed seed: the same reply every run
    at.chat_input(key=f"{key}:input").set_value("Where does Ana live?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    reply = at.session_state[key][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str) and reply["content"].strip()
    assert reply["content"].strip() in "".join(str(md.value) for md in at.chat_message[1].markdown)
    # the next turn sends the whole conversation and shows it again
    at.chat_input(key=f"{key}:input").set_value("And what is her job?").run()
    assert not at.exception and len(at.session_state[key]) == 4


def test_jobs_page_shows_a_validation_error_not_an_exception(empty_home: Store):
    at = open_page("views/jobs.py")
    at.selectbox(key="jobs:recipe").select("(write your own)").run()
    for bad, words in (("name: [oops", "not valid YAML"), ("name: t\nsteps:\n  - bake: {}\n", "unknown step kind")):
        at.text_area(key="jobs:yaml:(write your own)").input(bad).run()
        at.button(key="jobs:submit").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert words in at.error[0].value
    assert JobQueue(empty_home).list() == []


@pytest.mark.slow
def test_jobs_page_lists_a_finished_job(empty_home: Store):
    queue = JobQueue(empty_home)
    job = queue.submit(micro_recipe())
    assert queue.wait(job.id, timeout=300).status == "done", queue.log(job.id)
    at = open_page("views/jobs.py")
    table = at.dataframe[-1].value  # "All jobs", below the current job's card
    assert list(table["id"]) == [job.id] and list(table["status"]) == ["done"]
    assert "**step 1/1 · build-demo** · done in" in texts(at)


@pytest.mark.slow
def test_submitting_from_the_page_runs_the_job(empty_home: Store):
    at = open_page("views/jobs.py")
    at.selectbox(key="jobs:recipe").select("(write your own)").run()
    at.text_area(key="jobs:yaml:(write your own)").input(
        "name: t\nsteps:\n  - build-demo: {name: x, size: micro}\n").run()
    at.button(key="jobs:submit").click().run()
    assert not at.exception and "Submitted job" in at.success[0].value
    [job] = JobQueue(empty_home).list()
    assert JobQueue(empty_home).wait(job.id, timeout=300).status == "done", JobQueue(empty_home).log(job.id)
    assert empty_home.exists("x")


@pytest.mark.slow
def test_cancel_button_cancels_a_running_job(empty_home: Store):
    queue = JobQueue(empty_home)
    job = queue.submit(micro_recipe(steps=100_000))
    end = time.monotonic() + 120
    while queue.get(job.id).status != "running":
        assert time.monotonic() < end and queue.get(job.id).status == "queued", queue.log(job.id)
        time.sleep(0.2)
    at = open_page("views/jobs.py")
    at.button(key=f"jobs:cancel:{job.id}").click().run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    assert queue.get(job.id).status == "cancelled"
    assert not empty_home.exists("x")
