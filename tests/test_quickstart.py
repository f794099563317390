"""The README's main job, end to end: `llmlab run recipes/quickstart.yaml` on a fresh store.

The run happens once per session (the ``quickstart`` fixture in conftest.py); other slow tests
use the demo model it builds.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from llmlab.store import Store

pytestmark = pytest.mark.slow


def test_quickstart_builds_scores_and_summarizes(quickstart):
    store = Store(quickstart.home)
    demo = store.get("demo")
    assert demo.kind == "base" and store.verify("demo") == []
    m = demo.metrics
    assert math.isfinite(m["ppl"]) and 1 < m["ppl"] < 200
    assert 0 <= m["accuracy"] <= 1 and m["accuracy_n"] > 0
    assert m["gen_tok_s"] > 0 and 0 < m["size_bytes"] <= demo.size_bytes  # weights vs every file
    out = quickstart.stdout
    assert "Summary" in out and "demo" in out and "llmlab app" in out
    assert (demo.path / "training_log.jsonl").is_file()
    q8, q4 = store.get("demo-q8_0").metrics, store.get("demo-q4_k_m").metrics
    assert q8["kld_reference"] == q4["kld_reference"] == "demo-f16"
    assert 0 <= q8["kld_mean"] < q4["kld_mean"] and q8["top1"] >= 0.98
    assert store.get("demo-q4_k_m").size_bytes < store.get("demo-q8_0").size_bytes < store.get("demo-f16").size_bytes
    assert "demo-q4_k_m" in out


def test_quickstart_lora_lifts_heldout_accuracy(quickstart):
    """The Tune station's goal: the default LoRA on world:tune adds >= 20 points of held-out accuracy."""
    store = Store(quickstart.home)
    lora = store.get("demo-lora")
    assert lora.kind == "adapter" and lora.manifest.parents[0].name == "demo"
    m = lora.metrics
    assert m["accuracy"] - m["accuracy_before"] >= 0.20, m
    assert m["val_loss_after"] < m["val_loss_before"] and m["accuracy_n"] == 180


def test_quickstart_goes_through_every_station(quickstart):
    """GPTQ beside the GGUF types, the adapter served on the Q4_K_M base, an index and an agent, one
    leaderboard of every variant, and the winner exported as a verified bundle."""
    from llmlab.export import verify_bundle

    store = Store(quickstart.home)
    gptq = store.get("demo-gptq-w4g128")
    assert gptq.kind == "gptq" and gptq.metrics["kld_mean"] >= 0
    adapter = store.get("demo-lora-gguf")
    assert adapter.kind == "gguf-adapter" and {p.name for p in adapter.manifest.parents} == {"demo-lora", "demo-q4_k_m"}
    assert store.get("demo-index").kind == "index" and store.get("demo-agent").kind == "agent"
    board = (quickstart.home / "leaderboard.md").read_text()
    for name in ("demo-lora", "demo-q4_k_m", "demo-gptq-w4g128", "demo-lora-gguf"):
        assert name in board
    bundle = store.get("demo-lora-gguf-bundle")
    assert bundle.kind == "bundle" and verify_bundle(bundle.path) == []
    assert (bundle.path / "Dockerfile").is_file() and (bundle.path / "Modelfile").is_file()


def base_right(store: Store, n: int) -> int:
    """How many of the first ``n`` held-out questions the untuned Q4_K_M base answers right, asked as the
    serve step asks them (the world's chat messages, greedy, 32 tokens, judged by answer_matches)."""
    from llmlab import world
    from llmlab.runtime import SamplingParams, load
    from llmlab.scoring import answer_matches

    questions = world.find_world(store, store.get("demo")).split("heldout")[:n]
    with load("demo-q4_k_m", store=store) as base:
        return sum(answer_matches(base.chat(world.chat_messages(q["question"]), SamplingParams.greedy(32)),
                                  str(q["answer"])) for q in questions)


def test_quickstart_merges_and_serves_the_winner(quickstart):
    """The adapter merged into its base scores like the adapter; the exported winner is left serving
    on 127.0.0.1 and answered one held-out question over HTTP; the run printed where everything is."""
    import httpx

    from llmlab.serve import process

    store = Store(quickstart.home)
    merged = store.get("demo-merged")
    assert merged.kind == "merged" and {p.name for p in merged.manifest.parents} >= {"demo", "demo-lora"}
    assert "demo-merged" in (quickstart.home / "leaderboard.md").read_text()
    [server] = process.running_servers(store)
    assert server["name"] == "demo-lora-gguf-bundle" and server["url"].startswith("http://127.0.0.1:")
    out = quickstart.stdout
    assert f"{server['url']}/v1" in out
    # 20 held-out questions asked over HTTP, not one: the tuned 4-bit winner gets more of them right than its
    # untuned base does (how many depends on the CPU the demo was trained on: 8 against 4 on an AVX2 EPYC)
    found = re.search(r"asked over HTTP: (\d+) held-out questions, (\d+) answered right", out)
    assert found, out[-2000:]
    asked, right = int(found[1]), int(found[2])
    assert asked == 20 and right >= base_right(store, asked) + 3, (asked, right)
    assert "http://127.0.0.1:8501" in out and "http://127.0.0.1:5000" in out
    models = httpx.get(f"{server['url']}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["demo-lora-gguf-bundle"]


def test_quickstart_is_tracked_in_mlflow(quickstart):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{quickstart.home / '.mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["llmlab"], output_format="list")
    assert runs, "no MLflow run recorded"
    run = runs[-1]
    assert run.info.run_name == "quickstart"
    assert run.data.params["1.build-demo.size"] == "small"
    assert run.data.metrics["2.ppl"] == pytest.approx(Store(quickstart.home).get("demo").metrics["ppl"])
    assert run.data.tags["artifact.demo"].startswith("base:")


def test_second_quickstart_run_skips_everything(quickstart):
    proc = subprocess.run([sys.executable, "-m", "llmlab", "run", "recipes/quickstart.yaml", "--events"],
                          cwd=quickstart.root, env=quickstart.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    steps = len(yaml.safe_load((quickstart.root / "recipes" / "quickstart.yaml").read_text())["steps"])
    assert proc.stdout.count('"status": "skipped"') == steps - 1  # all but serve, which asks its server again
    served = [json.loads(line) for line in proc.stdout.splitlines()
              if '"kind": "serve"' in line and '"status": "done"' in line]
    assert served and served[0]["metrics"]["url"] in quickstart.stdout  # the same server, still running


def test_chat_with_the_demo_model(quickstart):
    proc = subprocess.run([sys.executable, "-m", "llmlab", "chat", "demo", "--prompt", "Where does Ana live?",
                           "--temperature", "0", "--max-tokens", "12"],
                          cwd=quickstart.root, env=quickstart.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_score_a_user_text_file(quickstart, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("The quiet town had a small market.\nA merchant sold blue cloth by the river.\n")
    env = {**quickstart.env, "LLMLAB_TRACKING_URI": "off"}
    proc = subprocess.run([sys.executable, "-m", "llmlab", "score", "demo", "--data", str(text), "--events"],
                          cwd=quickstart.root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    missing = subprocess.run([sys.executable, "-m", "llmlab", "score", "demo", "--data", str(tmp_path / "no.txt")],
                             cwd=quickstart.root, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 3 and "no.txt" in missing.stderr and "Traceback" not in missing.stderr
