"""The Evaluate station: suites, the cached leaderboard, the regression gate (real micro model + GGUF)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from llmlab.errors import ConfigError
from llmlab.evaluate import EvaluateConfig, Leaderboard, SuiteConfig, evaluate, pareto_front
from llmlab.evaluate.suites import check_records, run_quality
from llmlab.store import Parent, Store

TASKS = [{"source": "heldout", "limit": 4}]


def make_variants(root: Path, micro_model_dir: Path, f16: Path, *, broken: bool = True) -> Store:
    """A store with micro (base, with its world), micro-f16 (gguf, parent micro) and optionally a
    corrupt gguf; the page tests build theirs with it too."""
    store = Store(root)
    with store.write("micro", "base") as w:  # with its world/ (an import would copy the weights only)
        shutil.copytree(micro_model_dir, w.path, dirs_exist_ok=True)
    micro = store.get("micro")
    ggufs = [("micro-f16", f16.read_bytes())] + ([("broken-q4", b"GGUF" + b"\0" * 64)] if broken else [])
    for name, data in ggufs:
        with store.write(name, "gguf") as w:
            (w.path / f"{name}.gguf").write_bytes(data)
            w.parents = [Parent(name="micro", content_hash=micro.content_hash, role="source")]
    return store


@pytest.fixture(scope="module")
def board_store(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path, micro_gguf) -> Store:
    return make_variants(tmp_path_factory.mktemp("eval") / "models", micro_model_dir, micro_gguf("f16"))


def test_task_file_errors_name_record_and_field(tmp_path: Path) -> None:
    ok = check_records([{"prompt": "2+2?", "answers": ["4", "four"]}], "t.jsonl")
    assert ok == [{"question": "2+2?", "answers": ["4", "four"]}]
    with pytest.raises(ConfigError, match=r"t.jsonl: record 2 has no 'answer'"):
        check_records([{"question": "a", "answer": "b"}, {"question": "c"}], "t.jsonl")
    with pytest.raises(ConfigError, match=r"record 1 has no 'question'"):
        check_records([{"answer": "b"}], "t.jsonl")
    with pytest.raises(ConfigError, match=r"record 1 field 'answer' \('z'\) is not one of its choices"):
        check_records([{"question": "q", "answer": "z", "choices": ["x", "y"]}], "t.jsonl")
    assert check_records([{"question": "q", "answer": "1", "choices": ["x", "y"]}], "t")[0]["gold_index"] == 1


def test_suite_hash_covers_quality_settings_only() -> None:
    base = SuiteConfig(tasks=TASKS)
    assert base.suite_hash() == SuiteConfig(tasks=TASKS, gen_tokens=9, repeats=5).suite_hash()
    assert base.suite_hash() != SuiteConfig(tasks=TASKS, max_tokens=9).suite_hash()
    assert base.suite_hash() != SuiteConfig(tasks=[{"source": "heldout", "limit": 5}]).suite_hash()
    assert [t.source for t in SuiteConfig(tasks="heldout, qa.jsonl").tasks] == ["heldout", "qa.jsonl"]


def test_pareto_front_and_table_exports() -> None:
    rows = [{"name": "a", "kind": "gguf", "size_mb": 1, "acc": 0.2, "gen_tok_s": 50},
            {"name": "b", "kind": "gguf", "size_mb": 2, "acc": 0.5, "gen_tok_s": 40},
            {"name": "c", "kind": "base", "size_mb": 3, "acc": 0.4, "gen_tok_s": 10},
            {"name": "d", "kind": "base", "size_mb": None, "acc": 0.9}]
    assert [r["name"] for r in pareto_front(rows, "size_mb", "acc", higher_y=True)] == ["a", "b"]
    assert [r["name"] for r in pareto_front(rows, "gen_tok_s", "acc", higher_x=True, higher_y=True)] == ["a", "b"]
    board = Leaderboard("s", "h", [{"name": "x|y", "kind": "base", "ppl": 2.5}, {"name": "z", "kind": "gguf"}])
    assert board.to_markdown().splitlines()[2] == "| x\\|y | base | 2.5 |"
    assert board.to_csv().splitlines() == ["name,kind,ppl", "x|y,base,2.5", "z,gguf,"]
    assert [r["name"] for r in board.filter(kinds=["gguf"]).rows] == ["z"]
    assert board.best("ppl")["name"] == "x|y"


def test_leaderboard_caches_quality_and_isolates_failures(board_store: Store, tmp_path: Path) -> None:
    config = EvaluateConfig(models=["micro", "micro-f16", "broken-q4"], tasks=TASKS, track=False,
                            csv=str(tmp_path / "b.csv"), markdown=str(tmp_path / "b.md"))
    t0 = time.perf_counter()
    first = evaluate(config, store=board_store)
    t_first = time.perf_counter() - t0
    micro, f16, broken = (first.row(n) for n in ("micro", "micro-f16", "broken-q4"))
    assert micro["error"] is None, micro["error"]
    assert micro["quality_from"] == f16["quality_from"] == "fresh"
    assert "broken-q4" in broken["error"] and "ppl" not in broken
    assert f16["parents"] == "micro (source)" and f16["kld_reference"] == "micro"
    # the same model in two engines: KL near 0, top-1 near 1, same perplexity within f16 rounding
    assert f16["kld_mean"] < 0.01 and f16["top1"] > 0.95
    assert abs(f16["ppl"] - micro["ppl"]) / micro["ppl"] < 0.01
    assert 0 <= micro["heldout.accuracy"] <= 1 and micro["heldout.n"] == 4
    assert (tmp_path / "b.csv").read_text().startswith("name,kind,parents,size_mb,ppl")
    assert "| micro-f16 | gguf |" in (tmp_path / "b.md").read_text()

    t0 = time.perf_counter()
    second = evaluate(config.model_copy(update={"csv": None, "markdown": None}), store=board_store)
    assert time.perf_counter() - t0 < t_first / 5
    assert [r["quality_from"] for r in second.rows[:2]] == ["cached", "cached"]
    assert second.row("micro")["ppl"] == micro["ppl"] and second.row("micro")["scored_at"] == micro["scored_at"]
    assert second.row("broken-q4")["error"]

    # speed is measured fresh on request even when quality comes from the cache
    fast = evaluate(EvaluateConfig(models=["micro-f16"], tasks=TASKS, track=False, speed=True, gen_tokens=4,
                                   prompt_tokens=8, repeats=1), store=board_store)
    row = fast.row("micro-f16")
    assert row["quality_from"] == "cached" and row["speed_from"] == "fresh" and row["gen_tok_s"] > 0
    assert row["peak_mem_mb"] is not None

    # another decoding setting is another cache entry; only_cached then shows it as not scored
    other = evaluate(EvaluateConfig(models=["micro"], tasks=TASKS, max_tokens=3, track=False, only_cached=True),
                     store=board_store)
    assert other.row("micro")["quality_from"] == "not scored" and "ppl" not in other.row("micro")


def test_adding_a_variant_scores_only_it(board_store: Store, micro_gguf) -> None:
    micro = board_store.get("micro")
    with board_store.write("micro-copy", "gguf", overwrite=True) as w:
        shutil.copy(micro_gguf("f16"), w.path / "micro-copy.gguf")
        w.parents = [Parent(name="micro", content_hash=micro.content_hash, role="source")]
    config = EvaluateConfig(tasks=TASKS, texts=None, track=False)  # every candidate in the store
    evaluate(config.model_copy(update={"models": ["micro", "micro-f16"]}), store=board_store)
    board = evaluate(config, store=board_store)
    status = {r["name"]: r["quality_from"] for r in board.rows}
    assert status["micro-copy"] == "fresh" and status["micro"] == status["micro-f16"] == "cached"
    assert board.row("broken-q4")["error"]


class _OtherTokenizer:
    path = Path("other")
    vocab_size = 7


def test_reference_with_another_tokenizer_is_refused_and_the_rest_runs(board_store: Store) -> None:
    from llmlab.evaluate.suites import resolve_task
    from llmlab.runtime import load

    art = board_store.get("micro")
    tasks = {"heldout": resolve_task(SuiteConfig(tasks=TASKS).tasks[0], store=board_store, artifact=art)[:2]}
    with load(art, store=board_store) as m:
        out = run_quality(m, SuiteConfig(tasks=TASKS), texts=["A short text about a town."], tasks=tasks,
                          reference=_OtherTokenizer())  # type: ignore[arg-type]
    assert "vocabulary sizes differ" in out["kld_error"] and "kld_mean" not in out
    assert out["ppl"] > 1 and out["heldout.n"] == 2


def test_user_jsonl_task_with_choices(board_store: Store, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Pick the colour.", "choices": ["red", "Graevom"], "answer": "red"},
        {"prompt": "Say hello.", "answer": "hello"}]) + "\n")
    board = evaluate(EvaluateConfig(models=["micro"], texts=None, tasks=[{"source": str(path)}], track=False),
                     store=board_store)
    row = board.row("micro")
    assert row["mine.n"] == 2 and row["mine.choice_accuracy"] in (0.0, 1.0) and "mine.f1" in row
    path.write_text(json.dumps({"question": "no answer"}) + "\n")
    bad = evaluate(EvaluateConfig(models=["micro"], texts=None, tasks=[{"source": str(path)}], track=False),
                   store=board_store)
    assert "record 1 has no 'answer'" in bad.row("micro")["error"]


def test_gate_cli_exit_codes(board_store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    from llmlab.cli import main

    common = ["--home", str(board_store.root), "eval", "gate", "--baseline", "micro", "--tasks",
              "[{source: heldout, limit: 4}]"]
    assert main([*common, "--candidate", "micro-f16", "--metrics", "ppl", "--margin", "0.05", "--relative",
                 "true"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["checks"][0]["metric"] == "ppl"
    # margin 0: of the two orders exactly one is worse (fp32 and f16 perplexities differ slightly)
    rcs = []
    for cand, base in (("micro-f16", "micro"), ("micro", "micro-f16")):
        args = [a if a != "micro" or i != common.index("--baseline") + 1 else base for i, a in enumerate(common)]
        rcs.append(main([*args, "--candidate", cand, "--metrics", "ppl", "--margin", "0"]))
        check = json.loads(capsys.readouterr().out)["checks"][0]
        assert rcs[-1] == (0 if check["worse_by"] <= 0 else 1)
    assert sorted(rcs) == [0, 1]
    assert main([*common, "--candidate", "broken-q4", "--metrics", "ppl"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["passed"] and "broken-q4" in out["checks"][0]["why"]
    assert main([*common, "--candidate", "micro-f16", "--metrics", "size_mb"]) == 2  # not a quality metric


@pytest.mark.slow  # a fresh MLflow sqlite database costs ~25 s of migrations
def test_mlflow_log(board_store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llmlab.evaluate.leaderboard import log_to_mlflow

    monkeypatch.setenv("LLMLAB_TRACKING_URI", f"sqlite:///{tmp_path / 'ml.db'}")
    board = Leaderboard("default", "abc", [{"name": "micro", "kind": "base", "ppl": 3.5, "heldout.accuracy": 0.25}])
    run_id = log_to_mlflow(board, board_store)
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.metrics == {"micro.ppl": 3.5, "micro.heldout.accuracy": 0.25}
    assert run.data.tags["llmlab.suite_hash"] == "abc"


def test_notebook_runs_on_the_cached_board(board_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    evaluate(EvaluateConfig(models=["micro", "micro-f16"], tasks=TASKS, track=False), store=board_store)
    monkeypatch.setenv("LLMLAB_HOME", str(board_store.root))
    monkeypatch.setenv("LLMLAB_NOTEBOOK_AUTORUN", "1")
    monkeypatch.setenv("LLMLAB_NOTEBOOK_LIMIT", str(TASKS[0]["limit"]))
    spec = importlib.util.spec_from_file_location("evaluate_notebook", Path(__file__).parents[1] / "notebooks" /
                                                  "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    _, defs = module.app.run()
    board = defs["board"]
    assert board.row("micro")["quality_from"] == "cached" and board.row("broken-q4")["error"]
    assert defs["report"]["judge"] == "llmlab:" + board.best("heldout.accuracy")["name"]
    assert defs["report"]["n"] == len(board.best("heldout.accuracy")["heldout.examples"])
