"""The Merge front ends: the app page (``app/views/merge.py``) and ``notebooks/merge.py``.

The page runs through ``AppTest`` on a temporary store: empty; with the micro model and a
perturbed copy (the compatibility report says they fit, a real merge job started from the page
writes the merge); with a copy of another hidden size (refused, Start disabled); and with a stored
merge whose metrics fill the comparison table and chart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("mergekit")
from apptest import load_page, open_page, run_notebook, texts  # noqa: E402

from llmlab.jobs import JobQueue  # noqa: E402
from llmlab.merge.choices import config_from_form  # noqa: E402
from llmlab.merge.lineage import comparison_rows, suggests_anchor, unanchored  # noqa: E402
from llmlab.store import Parent, Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "views/merge.py"


@pytest.fixture(scope="module")
def page() -> ModuleType:
    return load_page(PAGE)


def test_the_page_loads_without_running_and_has_a_main(page: ModuleType):
    assert callable(page.main)


def copy_of(store: Store, name: str, *, hidden_scale: int = 1, seed: int = 1) -> None:
    """A full-model child of 'micro' with slightly different weights (or another hidden size in config)."""
    import torch
    from safetensors.torch import load_file, save_file

    src = store.get("micro")
    with store.write(name, "full") as w:
        shutil.copytree(src.path, w.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.json"))
        for f in src.path.glob("*.json"):
            if f.name not in ("manifest.json", "metrics.json"):
                shutil.copy2(f, w.path / f.name)
        g = torch.Generator().manual_seed(seed)
        sd = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous()
              for k, v in load_file(w.path / "model.safetensors").items()}
        save_file(sd, w.path / "model.safetensors", metadata={"format": "pt"})
        if hidden_scale != 1:
            cfg = json.loads((w.path / "config.json").read_text())
            (w.path / "config.json").write_text(json.dumps({**cfg, "hidden_size": cfg["hidden_size"] * hidden_scale}))
        w.parents = [Parent(name="micro", content_hash=src.content_hash, role="base")]


def test_page_renders_on_an_empty_store(empty_home: Store):
    at = open_page(PAGE)
    assert "no models or adapters to merge" in texts(at)


def test_mismatched_models_are_refused_before_starting(micro_home: Store):
    copy_of(micro_home, "micro-wide", hidden_scale=2)
    at = open_page(PAGE)
    at.multiselect(key="merge:models").set_value(["micro", "micro-wide"])
    at.selectbox(key="merge:method").set_value("linear").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("hidden size differs" in e.value for e in at.error)
    assert at.button(key="merge:start").disabled


def fill_form(at, models: list[str]) -> None:
    at.multiselect(key="merge:models").set_value(models)
    at.selectbox(key="merge:method").set_value("linear").run()
    assert "These inputs can be merged." in texts(at) and "Memory needed" in texts(at)
    assert [s.key for s in at.slider] == [f"merge:w:{m}" for m in models]
    at.slider(key=f"merge:w:{models[0]}").set_value(0.7)
    at.slider(key=f"merge:w:{models[1]}").set_value(0.3)
    name = at.text_input(key=f"merge:name:{'-'.join(models)}-linear")  # the default follows models and method
    assert name.value == f"{'-'.join(models)}-linear"
    name.input("mix").run()
    assert not at.exception and not at.button(key="merge:start").disabled


def test_the_form_and_the_comparison_of_a_stored_merge(micro_home: Store):
    from llmlab.merge.step import MergeConfig, merge

    copy_of(micro_home, "micro-a")
    at = open_page(PAGE)
    fill_form(at, ["micro", "micro-a"])
    config = config_from_form("mix", "linear", ["micro", "micro-a"], None, [0.7, 0.3], None, {}, None, "model")
    merge(MergeConfig(**config, evaluate=False), store=micro_home)
    # the micro model has no demo world, so the merge was not scored: give it the metrics a scored one has
    micro_home.record_metrics("mix", {"ppl": 30.0, "accuracy": 0.5, "accuracy_people": 0.6, "accuracy_places": 0.4,
                                      "parents": {"micro": {"ppl": 31.0, "accuracy_people": 0.2},
                                                  "micro-a": {"ppl": 32.0, "accuracy_people": 0.7}},
                                      "retention": {"micro-a:people": 0.857}})
    rows = comparison_rows(micro_home.get("mix"))
    assert [r["model"] for r in rows] == ["mix", "micro", "micro-a"] and rows[2]["accuracy_people"] == 0.7
    assert [r["weight"] for r in rows] == [None, 0.7, 0.3]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[-1].value.set_index("model")
    assert table.loc["micro-a", "people accuracy (merge eval)"] == 0.7 and table.loc["mix", "role"] == "merge"
    # perplexity and accuracy are the Leaderboard's (nothing cached for these: shown as —), not the merge step's
    assert table["perplexity"].isna().all() and "ppl" not in table.columns
    assert list(at.get("vega_lite_chart")), "the per-skill accuracy chart is drawn"
    assert "micro-a:people 86%" in texts(at)
    assert at.selectbox(key="merge:chat").options == ["mix", "micro", "micro-a"]


def test_a_lossy_merge_of_unanchored_specialists_suggests_the_anchor(micro_home: Store):
    from llmlab.store import StepRecord

    base = micro_home.get("micro")
    for name, anchor in (("spec-a", None), ("spec-b", "world:tune:people")):
        with micro_home.write(name, "adapter") as w:
            (w.path / "adapter_config.json").write_text("{}")
            w.parents = [Parent(name="micro", content_hash=base.content_hash, role="base")]
            w.step = StepRecord(kind="tune", config={"name": name, "model": "micro", "anchor": anchor},
                                config_hash=name)
    for name, retention in (("lossy", 0.4), ("fine", 0.9)):
        with micro_home.write(name, "merged") as w:
            shutil.copytree(base.path, w.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
            w.parents = [Parent(name=n, content_hash=micro_home.get(n).content_hash, role="adapter")
                         for n in ("spec-a", "spec-b")]
            w.info = {"method": "task_arithmetic", "inputs": ["spec-a", "spec-b"]}
        micro_home.record_metrics(name, {"retention": {"spec-a:people": retention, "spec-b:places": 1.0}})
    assert unanchored(micro_home.get("lossy"), micro_home) == ["spec-a"]
    assert suggests_anchor(micro_home.get("lossy"), micro_home) and not suggests_anchor(micro_home.get("fine"),
                                                                                        micro_home)
    at = open_page(PAGE)
    for name, shown in (("lossy", True), ("fine", False)):
        at.selectbox(key="merge:result").set_value(name).run()
        assert not at.exception, [e.value for e in at.exception]
        assert ("Tune specialists with `anchor:`" in texts(at)) == shown


@pytest.mark.slow
def test_a_merge_job_started_on_the_page(micro_home: Store):
    copy_of(micro_home, "micro-a")
    at = open_page(PAGE)
    fill_form(at, ["micro", "micro-a"])
    at.button(key="merge:start").click().run()
    assert not at.exception and "Started job" in at.success[-1].value
    queue = JobQueue(micro_home)
    [job] = queue.list()
    step = queue.recipe(job.id)["steps"][0]["merge"]
    assert step["method"] == "linear" and step["weights"] == [0.7, 0.3]
    assert queue.wait(job.id, timeout=300).status == "done", queue.log(job.id)
    art = micro_home.get("mix")
    assert [(p.name, p.weight) for p in art.manifest.parents] == [("micro", 0.7), ("micro-a", 0.3)]
    at.run()
    assert "**done**" in texts(at) and at.selectbox(key="merge:result").value == "mix"


# ----- the notebook -----
NOTEBOOK_REPORT = """{"models": list(defs["table"]["model"]) if defs.get("table") is not None else [],
                    "best": defs.get("best"), "best_keep": defs.get("best_keep")}"""


@pytest.mark.slow
def test_notebook_runs_headless_with_the_micro_model(tmp_path: Path):
    pytest.importorskip("marimo")
    defs = run_notebook(ROOT / "notebooks" / "merge.py", tmp_path, NOTEBOOK_REPORT, timeout=900)
    assert defs["models"] == ["demo-micro", "demo-micro-people", "demo-micro-places", "demo-micro-people-plain",
                              "demo-micro-places-plain", "demo-micro-merge-ta", "demo-micro-merge-ties",
                              "demo-micro-merge-linear", "demo-micro-merge-plain-ta",
                              "demo-micro-merge-plain-breadcrumbs", "demo-micro-multi-merged"]
