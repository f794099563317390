"""One truth for metrics: every page shows the Leaderboard's cached numbers (``llmlab.evaluate.choices.scores``),
and each page's model picker opens on a model that can do what the page does (``default_model_index``).

The store is a small quickstart-like family of fake artifacts whose Leaderboard scores are put in the
quality cache by ``evaluate`` itself, with the model loading and the scoring stubbed, so that the numbers
are known and nothing heavy runs. Each step's own ``metrics.json`` holds different figures (as a score
step's 180 questions give), which no page must show as the accuracy.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("streamlit")
from apptest import open_page, texts  # noqa: E402
from test_choices import fake  # noqa: E402

from llmlab.catalog import default_model_index  # noqa: E402
from llmlab.evaluate import EvaluateConfig, Leaderboard, evaluate  # noqa: E402
from llmlab.evaluate.choices import leaderboard_winner, scores  # noqa: E402
from llmlab.store import Store  # noqa: E402

# (perplexity, held-out accuracy) on the Leaderboard's suite
QUALITY = {"demo": (2.58, 0.05), "demo-lora": (2.66, 0.76), "demo-merged": (2.66, 0.76), "demo-q4": (2.56, 0.05),
           "demo-lora-gguf": (2.65, 0.74)}
SPEED_AT = "2026-12-02T20:40:58+00:00"


class StubModel:
    """Enough of a runtime model for ``run_quality`` (stubbed) and ``llmlab.scoring.speed``."""

    n_ctx = 512

    def __init__(self, name: str):
        self.name = name

    def tokenize(self, text: str) -> list[int]:
        return list(range(16))

    def generate_ids(self, ids: list[int], params: Any, ignore_eos: bool = False):
        yield from range(params.max_tokens)


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading gives a ``StubModel``; quality is ``QUALITY``; the load average is 2.5."""
    @contextlib.contextmanager
    def load(source: Any, store: Store | None = None, **_: Any):
        yield StubModel(getattr(source, "name", source))

    def run_quality(model: StubModel, suite: Any, **_: Any) -> dict[str, Any]:
        ppl, acc = QUALITY[model.name]
        return {"ppl": ppl, "heldout.accuracy": acc, "heldout.n": 100, "kld_mean": 0.01}

    monkeypatch.setattr("llmlab.runtime.load", load)
    monkeypatch.setattr("llmlab.evaluate.leaderboard.run_quality", run_quality)
    monkeypatch.setattr("llmlab.scoring.load_average", lambda: 2.5)


@pytest.fixture
def family(empty_home: Store, stubbed: None) -> Store:
    """demo, its LoRA, their merge, a GGUF quant, the LoRA over it and a bundle; all but the bundle
    scored on the Leaderboard's default suite (cached)."""
    store = empty_home
    fake(store, "demo", "base", metrics={"accuracy": 0.0333, "accuracy_n": 180, "ppl": 2.58, "gen_tok_s": 500.0,
                                         "scored_at": SPEED_AT, "measured_at": SPEED_AT, "load_avg": 1.93})
    fake(store, "demo-lora", "adapter", parents=[("demo", "base")], metrics={"accuracy": 0.8389, "accuracy_n": 180})
    fake(store, "demo-merged", "merged", parents=[("demo", "base"), ("demo-lora", "adapter")],
         files={"weights.bin": "x" * 8000}, metrics={"merge_seconds": 0.2})
    fake(store, "demo-q4", "gguf", parents=[("demo", "source")], files={"demo-q4.gguf": "x" * 1000})
    fake(store, "demo-lora-gguf", "gguf-adapter", parents=[("demo-lora", "adapter"), ("demo-q4", "base")])
    evaluate(EvaluateConfig(track=False), store=store)
    fake(store, "demo-lora-gguf-bundle", "bundle", parents=[("demo-lora-gguf", None)])
    return store


def test_scores_are_the_leaderboards_whatever_each_step_recorded(family: Store) -> None:
    got = scores(family)
    assert list(got["demo"]) == ["size (MB)", "perplexity", "accuracy (heldout)", "KLD vs reference",
                                 "top-1 vs reference", "reference", "gen tok/s", "speed measured"]
    # one accuracy: the Leaderboard's (100 held-out questions), not the score step's 0.0333 over 180
    assert got["demo"]["accuracy (heldout)"] == 0.05 and got["demo-lora"]["accuracy (heldout)"] == 0.76
    # an artifact whose metrics.json is empty still has its Leaderboard scores
    assert not family.get("demo-lora-gguf").metrics
    assert (got["demo-lora-gguf"]["perplexity"], got["demo-lora-gguf"]["accuracy (heldout)"]) == (2.65, 0.74)
    # speed as recorded, with when and at what machine load it was measured
    assert got["demo"]["gen tok/s"] == 500.0 and got["demo"]["speed measured"] == "2026-12-02 20:40 UTC · load 1.93"
    assert got["demo-lora"]["gen tok/s"] is None and got["demo-lora"]["speed measured"] is None
    assert set(got["demo-lora-gguf-bundle"].values()) == {None, got["demo-lora-gguf-bundle"]["size (MB)"]}


def test_a_speed_run_is_recorded_with_its_time_and_load(family: Store) -> None:
    evaluate(EvaluateConfig(models=["demo-q4"], speed=True, track=False), store=family)
    recorded = family.get("demo-q4").metrics
    assert recorded["gen_tok_s"] > 0 and recorded["load_avg"] == 2.5 and recorded["measured_at"]
    assert scores(family, ["demo-q4"])["demo-q4"]["speed measured"].endswith("UTC · load 2.50")


def test_the_winner_breaks_a_tie_by_size(family: Store) -> None:
    # demo-lora and demo-merged tie on accuracy: the smaller one wins
    assert leaderboard_winner(family, ["demo", "demo-lora", "demo-merged"]) == "demo-lora"
    assert leaderboard_winner(family, ["demo", "demo-merged"]) == "demo-merged"
    assert leaderboard_winner(family, ["demo-lora-gguf-bundle"]) is None
    board = Leaderboard("s", "h", [{"name": "big", "size_mb": 9.0, "ppl": 2.0}, {"name": "small", "size_mb": 1.0,
                                                                                  "ppl": 2.0}])
    assert board.best("ppl")["name"] == "small"


def test_each_page_opens_on_a_model_that_fits(family: Store) -> None:
    names = ["demo-lora-gguf-bundle", "demo-lora-gguf", "demo-q4", "demo-merged", "demo-lora", "demo"]  # newest first
    assert names[default_model_index(family, names, "models")] == "demo-lora-gguf"  # the newest that can chat
    assert names[default_model_index(family, names, "models", winner="demo-lora")] == "demo-lora"
    models = ["demo-merged", "demo"]
    # Tune: the base, not the merge that already holds the LoRA, even when the merge wins
    assert models[default_model_index(family, models, "tune", winner="demo-merged")] == "demo"
    # Quantize: full precision, never the GGUF even if it were the winner
    picks = ["demo-q4", "demo-merged", "demo"]
    assert picks[default_model_index(family, picks, "quantize", winner="demo-q4")] == "demo-merged"
    assert picks[default_model_index(family, picks, "quantize", winner="demo")] == "demo"
    assert default_model_index(family, [], "export") == 0
    with pytest.raises(ValueError, match="Unknown page 'nope'"):
        default_model_index(family, names, "nope")


def test_models_page_shows_the_leaderboards_numbers(family: Store) -> None:
    at = open_page("views/models.py")
    assert at.selectbox(key="models:selected").value == "demo-lora"  # the winner, not the bundle
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["demo", "accuracy (heldout)"] == 0.05 and table.loc["demo-lora-gguf", "perplexity"] == 2.65
    assert "accuracy" not in table.columns and "ppl" not in table.columns
    at.selectbox(key="models:selected").set_value("demo-lora-gguf").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert shown["perplexity"] == "2.6500" and shown["accuracy (heldout)"] == "0.740" and shown["gen tok/s"] == "—"
    assert "No metrics yet" not in texts(at) and "Not on the Leaderboard" not in texts(at)
    at.selectbox(key="models:selected").set_value("demo").run()
    assert {m.label: m.value for m in at.metric}["accuracy (heldout)"] == "0.050"  # not 0.0333, not 3%
    assert "2026-12-02 20:40 UTC · load 1.93" in texts(at)


def test_merge_compares_with_its_parents_leaderboard_scores(family: Store) -> None:
    at = open_page("views/merge.py")
    assert at.selectbox(key="merge:result").value == "demo-merged"
    table = at.dataframe[-1].value.set_index("model")
    # the merge was not evaluated by the merge step: the table still has every one's Leaderboard scores
    assert list(table.index) == ["demo-merged", "demo", "demo-lora"]
    assert list(table["perplexity"]) == [2.66, 2.58, 2.66]
    assert list(table["accuracy (heldout)"]) == [0.76, 0.05, 0.76]


def test_home_offers_next_steps_on_a_full_store(family: Store) -> None:
    at = open_page("views/home.py")
    labels = [b.label for b in at.button]
    assert "Run the quickstart as a job" not in labels
    assert "Export demo-lora" in labels and "Chat with demo-lora" in labels
    assert "Leaderboard winner on **accuracy (heldout)**: **demo-lora** (0.760; perplexity 2.6600)" in texts(at)
    at.button(key="home:chat").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="models:selected").value == "demo-lora"


def test_home_offers_the_quickstart_on_an_empty_store(empty_home: Store) -> None:
    at = open_page("views/home.py")
    assert "Run the quickstart as a job" in [b.label for b in at.button]
    assert "Next steps" not in [s.value for s in at.subheader]


def test_tune_opens_on_the_base_not_the_merge_holding_the_lora(family: Store) -> None:
    at = open_page("views/tune.py", timeout=120)
    assert at.selectbox(key="tune:model").options[:2] == ["demo-merged", "demo"]
    assert at.selectbox(key="tune:model").value == "demo"


def test_export_opens_on_the_winner_and_refuses_what_it_cannot_export(family: Store) -> None:
    family.rm("demo-lora-gguf-bundle", force=True)  # a fake: the page would open its bundle.json
    assert open_page("views/export.py").selectbox(key="export:model").value == "demo-lora"
    at = open_page("views/home.py")
    at.session_state["export:model"] = "demo-gone"  # e.g. sent by the Leaderboard, removed since
    at.switch_page("views/export.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "demo-gone cannot be exported" in at.warning[0].value
    assert at.selectbox(key="export:model").value == "demo-lora"


@pytest.mark.browser
def test_the_numbers_in_a_browser(family: Store, tmp_path: Path) -> None:
    """The Leaderboard (chart and table), a Models Metrics tab and Home in Chromium: drawn without an
    exception, each with its page's numbers; screenshots go beside test_browser's."""
    if os.environ.get("LLMLAB_NO_BROWSER") == "1":
        pytest.skip("LLMLAB_NO_BROWSER=1: the browser tests are switched off")
    pytest.importorskip("playwright")
    from browser import AppServer, check_page, launch_chromium, open_view, pick, screenshot, settle
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("LLMLAB_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts") / "screenshots"
    family.rm("demo-lora-gguf-bundle", force=True)  # a fake without its files
    with AppServer(family.root, shots.parent / "metrics-truth-app.log") as app, sync_playwright() as p:
        context = launch_chromium(p, tmp_path / "profile")
        try:
            page = context.new_page()
            open_view(page, app.url, "leaderboard")
            check_page(page, "Winner on accuracy (heldout)")
            screenshot(page, shots / "metrics-truth-leaderboard.png")
            open_view(page, app.url, "models")
            pick(page, "Artifact", "demo-lora-gguf")
            page.get_by_role("tab", name="Metrics").click()
            settle(page)
            check_page(page, "As on the Leaderboard")
            expect(page.locator('[data-testid="stMetricValue"]', has_text="0.740")).to_be_visible()
            screenshot(page, shots / "metrics-truth-models.png")
            open_view(page, app.url, "")
            check_page(page, "Leaderboard winner on")
            screenshot(page, shots / "metrics-truth-home.png")
        finally:
            context.close()
