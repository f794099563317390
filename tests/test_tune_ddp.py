"""Scale-out: llmlab's own tuning loop under ``torchrun --nproc_per_node 2`` (DDP over gloo on CPU)
takes part on both ranks and gives the adapter a single process gives with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

from llmlab import world  # noqa: E402
from llmlab.serve.process import free_port  # noqa: E402
from llmlab.store import Store  # noqa: E402
from llmlab.tune import TuneConfig, tune  # noqa: E402

ARGS = {"steps": 3, "batch_size": 8, "rank": 8, "evaluate": False, "eval_every": 2, "val_fraction": 0.1}


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def qa_file(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "qa.jsonl"
    rows = world.World.load(micro_model_dir / "world").split("tune")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_torchrun_two_ranks_match_one_process(micro_model_dir, qa_file, tmp_path):
    one = Store(tmp_path / "one")
    one.add(micro_model_dir, "micro")
    single = tune(TuneConfig(name="t", model="micro", data=str(qa_file), **ARGS), store=one)

    two = Store(tmp_path / "two")
    two.add(micro_model_dir, "micro")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "llmlab", "tune", "micro", "--name", "t", "--data", str(qa_file), "--no-track",
           *flags]
    env = {**os.environ, "LLMLAB_HOME": str(two.root), "LLMLAB_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        raise
    assert proc.returncode == 0, err[-3000:]
    assert out.count("tune → t") == 2  # both processes ran the CLI

    art = two.get("t")
    info = art.manifest.info
    assert info["processes"] == 2
    ranks = sorted(info["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    # 3 steps of 8 examples split 4 + 4: both ranks trained, on disjoint halves.
    assert [r["examples"] for r in ranks] == [12, 12]
    assert all(r["tokens"] > 0 for r in ranks)
    assert sum(r["tokens"] for r in ranks) == info["train_tokens"] == single.manifest.info["train_tokens"]
    assert not (two.root / ".cache" / "tune" / "t").exists()

    a, b = _weights(single.path), _weights(art.path)
    assert a.keys() == b.keys()
    moved = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved < 1e-4, moved
    # The run changed the adapter (so matching is not trivially true): LoRA B starts at zero.
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-3
    la = [json.loads(x) for x in (single.path / "training_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (art.path / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert all(abs(x["loss"] - y["loss"]) < 1e-3 for x, y in zip(la, lb))
