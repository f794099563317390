"""The Leaderboard page through AppTest: empty store, cached scores with human column names, charts fitted to
the data with every point labelled, and the Export hand-off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from apptest import open_page, texts  # noqa: E402
from test_evaluate import make_variants  # noqa: E402

from llmlab.evaluate import EvaluateConfig, evaluate  # noqa: E402
from llmlab.store import Store  # noqa: E402

PAGE = "views/leaderboard.py"
LIMIT = 2


@pytest.fixture(scope="module")
def scored_home(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path, micro_gguf) -> Store:
    """micro, micro-f16 and a broken gguf, scored once on the page's suite with 2 questions."""
    store = make_variants(tmp_path_factory.mktemp("board") / "models", micro_model_dir, micro_gguf("f16"))
    evaluate(EvaluateConfig(tasks=[{"source": "heldout", "limit": LIMIT}], track=False), store=store)
    return store


def test_empty_store(empty_home: Store) -> None:
    at = open_page(PAGE)
    assert "nothing to evaluate" in texts(at)


def test_cached_table_charts_and_export(scored_home: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLAB_HOME", str(scored_home.root))
    at = open_page(PAGE)
    # the default suite asks 100 questions: nothing is cached for it, so the start button offers all 3
    assert "Score what is missing (3)" in [b.label for b in at.button]
    at.number_input(key="board:limit").set_value(LIMIT).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("name")
    assert sorted(table.index) == ["broken-q4", "micro", "micro-f16"]
    # human column names with units; provenance and errors shown because one variant failed
    assert list(table.columns[:3]) == ["kind", "size (MB)", "perplexity"] and "ppl" not in table.columns
    assert list(table["scores from"][["micro", "micro-f16"]]) == ["cached", "cached"]
    assert "broken-q4" in table["error"]["broken-q4"]
    assert table["perplexity"].isna()["broken-q4"]  # shown as — (the table's placeholder)
    assert at.dataframe[0].proto.placeholder == "—"
    assert "Score what is missing" not in " ".join(b.label for b in at.button)
    at.selectbox(key="board:metric").set_value("ppl").run()
    assert len(at.get("vega_lite_chart")) == 1  # size chart; no speed measured, so no speed chart
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    encodings = [layer["encoding"] for layer in spec["layer"]]
    assert encodings[0]["x"]["scale"]["type"] == "log" and encodings[0]["y"]["scale"]["zero"] is False
    assert {e["text"]["field"] for e in encodings if "text" in e} == {"name"}  # every point labelled
    assert encodings[0]["x"]["title"] == "size (MB)" and encodings[0]["y"]["title"] == "perplexity"
    best = min(("micro", "micro-f16"), key=lambda n: evaluate(
        EvaluateConfig(models=[n], tasks=[{"source": "heldout", "limit": LIMIT}], track=False, only_cached=True),
        store=scored_home).rows[0]["ppl"])
    assert f"Winner on **perplexity** (lowest): **{best}**" in texts(at)
    at.button(key="board:export").click().run()
    assert at.session_state["export:model"] == best
    at.multiselect(key="board:kinds").set_value(["gguf"]).run()
    assert sorted(at.dataframe[0].value["name"]) == ["broken-q4", "micro-f16"]
    at.checkbox(key="board:hide").check().run()
    assert list(at.dataframe[0].value["name"]) == ["micro-f16"]


def test_judge_kappa_beside_scores(empty_home: Store) -> None:
    from llmlab.evaluate.agreement import save_agreement

    save_agreement(empty_home, {"model": "smollm2", "judge": "llmlab:smollm2+constrained", "kappa": 0.12, "n": 100,
                                "agreement": 0.56, "trusted": False})
    save_agreement(empty_home, {"model": "big", "judge": "endpoint:big", "kappa": 0.81, "n": 100, "trusted": True})
    at = open_page(PAGE)
    table = at.dataframe[0].value.set_index("model")
    assert table["kappa"]["smollm2"] == 0.12 and table["n"]["big"] == 100
    assert [w.value for w in at.warning] == [
        "smollm2: the judge agrees with exact match at kappa 0.12 (n=100): too low to trust its scores (trusted from 0.4)."]
