"""GPTQ, AWQ and RTN through GPTQModel on the micro model: artifacts, the engine, refusals, the table.

The module's store is quantized once (gptq, awq and rtn at 4 bits, rtn at 8 bits; ~20 s at 1
thread once GPTQModel's CPU packing extension is cached under ~/.cache/gptqmodel) and shared by
the tests that only read it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from llmlab.quantize import gptq
from llmlab.errors import ConfigError, StoreError
from llmlab.quantize.step import QuantizeConfig, log_quality_table, quality_table, quantize, stored_table, tensor_shapes
from llmlab.scoring import pareto_front
from llmlab.store import Store

if importlib.util.find_spec("gptqmodel") is None:  # not imported here: it takes seconds
    pytest.skip("GPTQModel is not installed", allow_module_level=True)
METHODS = ("gptq", "awq", "rtn")


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> str:
    """The micro world's training texts as a .jsonl file (a store copy of the model has no world)."""
    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    path.write_text((micro_model_dir / "world" / "texts.jsonl").read_text())
    return str(path)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path, calib: str) -> tuple[Store, dict]:
    store = Store(tmp_path_factory.mktemp("gptq") / "models")
    store.add(micro_model_dir, "micro")
    summary = quantize(QuantizeConfig(model="micro", types=list(METHODS), bits=4, group_size=64, calibration=calib,
                                      calibration_samples=8, score=False), store=store)
    quantize(QuantizeConfig(model="micro", types=["rtn"], bits=8, group_size=128, score=False), store=store)
    return store, summary


@pytest.fixture(scope="module")
def table(quantized: tuple[Store, dict], micro_model_dir: Path) -> list[dict]:
    store, summary = quantized
    eval_text = (micro_model_dir / "world" / "eval.txt").read_text()[:500]
    return quality_table(["micro", *summary["variants"], "micro-rtn-w8g128"], store, texts=[eval_text], qa=[],
                         speed=False)


def test_config_names_outputs_and_refuses_bad_options():
    config = QuantizeConfig(model="demo", types=["GPTQ", "awq", "rtn"], group_size=128)
    assert config.types == ["gptq", "awq", "rtn"]
    assert config.outputs == ["demo-gptq-w4g128", "demo-awq-w4g128", "demo-rtn-w4g128"]  # no f16 without GGUF
    mixed = QuantizeConfig(model="demo", types=["q4_k_m", "rtn"], bits=8, group_size=32)
    assert mixed.outputs == ["demo-f16", "demo-q4_k_m", "demo-rtn-w8g32"]
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QuantizeConfig(model="demo", types=["gptq"], bits=3)
    with pytest.raises(ValueError, match="group_size must be one of 16, 32, 64, 128"):
        QuantizeConfig(model="demo", types=["gptq"], group_size=100)
    with pytest.raises(ValueError, match="Unknown quant type 'gptx'.*gptq, awq, rtn"):
        QuantizeConfig(model="demo", types=["gptx"])


def test_group_size_that_does_not_divide_a_layer_is_refused_naming_it():
    shapes = {"model.embed_tokens.weight": [2048, 96], "model.layers.0.self_attn.q_proj.weight": [256, 256],
              "model.layers.0.mlp.down_proj.weight": [256, 96], "model.norm.weight": [256]}
    gptq.check_group_size(shapes, 32)  # the embeddings are not quantized; 96 = 3 x 32
    with pytest.raises(ConfigError, match=r"Group size 64 does not divide 'model.layers.0.mlp.down_proj.weight', "
                                          r"which has 96 input features"):
        gptq.check_group_size(shapes, 64)


def test_group_size_is_checked_against_the_real_folder(store: Store, micro_model_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    store.add(micro_model_dir, "micro")
    shapes = tensor_shapes(store.get("micro").path)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == [256, 768]
    # a model whose FFN is 720 wide (not a multiple of 64) is refused before anything is written
    monkeypatch.setitem(shapes, "model.layers.0.mlp.down_proj.weight", [256, 720])
    monkeypatch.setattr("llmlab.quantize.step.tensor_shapes", lambda folder: shapes)
    with pytest.raises(ConfigError, match="Group size 64 does not divide 'model.layers.0.mlp.down_proj.weight'"):
        quantize(QuantizeConfig(model="micro", types=["rtn"], group_size=64, score=False), store=store)
    assert [a.name for a in store.list()] == ["micro"]


def test_too_little_memory_is_refused_with_numbers(tmp_path: Path):
    from llmlab.errors import ResourceError
    from llmlab.quantize.step import _check_resources

    with pytest.raises(ResourceError, match=r"model \(7,000 M parameters\) into GPTQModel .* needs about "
                                            r"[\d,]+ MB of RAM but only 100 MB"):
        _check_resources(7_000_000_000, ["rtn"], tmp_path, available=100 * 1024 * 1024)


def test_empty_calibration_set_is_refused(store: Store, micro_model_dir: Path, tmp_path: Path):
    store.add(micro_model_dir, "micro")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="calibration set .* is empty: GPTQ/AWQ calibration needs text"):
        quantize(QuantizeConfig(model="micro", types=["rtn", "gptq"], calibration=str(empty), score=False),
                 store=store)
    assert [a.name for a in store.list()] == ["micro"]  # rtn needs no text, but nothing starts
    with pytest.raises(ConfigError, match="GPTQ needs calibration text"):
        gptq.quantize_folder(store.get("micro").path, tmp_path, method="gptq", texts=[])


def test_a_gptqmodel_failure_leaves_no_artifact(store: Store, micro_model_dir: Path, calib: str,
                                                monkeypatch: pytest.MonkeyPatch):
    from gptqmodel.models.base import BaseQModel

    def boom(self, *args, **kwargs):
        print("halfway through layer 0")
        raise RuntimeError("simulated kernel crash")

    store.add(micro_model_dir, "micro")
    monkeypatch.setattr(BaseQModel, "quantize", boom)
    with pytest.raises(gptq.QuantizationError, match="failed to gptq-quantize 'micro'.*simulated kernel crash") as e:
        quantize(QuantizeConfig(model="micro", types=["gptq"], calibration=calib, calibration_samples=2,
                                score=False), store=store)
    assert "halfway through layer 0" in e.value.hint  # GPTQModel's own output, from its captured log
    log = Path(e.value.hint.rsplit("(full log: ", 1)[1].rstrip(").").strip())
    assert log.is_file()
    log.unlink()
    assert [a.name for a in store.list()] == ["micro"]
    assert not any((store.root / ".tmp").iterdir())


def test_artifacts_have_kinds_parents_and_facts(quantized: tuple[Store, dict]):
    store, summary = quantized
    assert summary["f16"] is None and summary["variants"] == [f"micro-{m}-w4g64" for m in METHODS]
    for name, method in zip(summary["variants"], METHODS):
        art = store.get(name)
        info = art.manifest.info
        assert art.kind == method and store.verify(name) == []
        assert [(p.name, p.role) for p in art.manifest.parents] == [("micro", "source")]
        assert (info["bits"], info["group_size"], info["type"]) == (4, 64, f"{method}-w4g64")
        assert 4 < info["bpw"] < 32 and (info["calibration"] is None) == (method == "rtn")
        assert (info["calibration_samples"] > 0) == (method != "rtn")
        assert not (art.path / "quant_log.csv").exists()
        qcfg = json.loads((art.path / "config.json").read_text())["quantization_config"]
        assert (qcfg["bits"], qcfg["group_size"]) == (4, 64)
    # every variant stores the unquantized tensors in the same dtype, so their sizes compare
    assert store.get("micro-gptq-w4g64").manifest.info["size_bytes"] == \
        store.get("micro-rtn-w4g64").manifest.info["size_bytes"]
    assert store.get("micro-rtn-w8g128").manifest.info["bpw"] > store.get("micro-rtn-w4g64").manifest.info["bpw"]
    shapes = tensor_shapes(store.get("micro").path)
    for name, bits, group in [("micro-gptq-w4g64", 4, 64), ("micro-awq-w4g64", 4, 64), ("micro-rtn-w8g128", 8, 128)]:
        assert gptq.expected_bytes(shapes, bits, group) == pytest.approx(
            store.get(name).manifest.info["size_bytes"], rel=0.05)  # what the app shows before quantizing


def test_engine_is_chosen_by_kind_and_by_folder(quantized: tuple[Store, dict]):
    from llmlab.runtime import ENGINES, KIND_ENGINES, resolve

    store, _ = quantized
    assert {KIND_ENGINES[k] for k in METHODS} == {"gptqmodel"} and "gptqmodel" in ENGINES
    assert resolve("micro-rtn-w4g64", store=store)[1] == "gptqmodel"
    assert resolve(store.get("micro-awq-w4g64").path)[1] == "gptqmodel"  # a folder, by its quantization_config
    assert resolve(store.get("micro").path)[1] == "transformers"


def test_variants_load_chat_and_stay_quiet(quantized: tuple[Store, dict], capfd: pytest.CaptureFixture):
    from llmlab.runtime import SamplingParams, load

    store, _ = quantized
    capfd.readouterr()
    with load("micro-gptq-w4g64", store=store) as m:
        assert m.engine == "gptqmodel" and m.info["bits"] == 4 and m.dtype == "float32"
        # the packed int32 words unpack to exactly the source's weights
        assert m.info["n_params"] == sum(math.prod(s) for s in tensor_shapes(store.get("micro").path).values())
        reply = m.chat([{"role": "user", "content": "Where does Ada live?"}], SamplingParams.greedy(max_tokens=6))
        assert isinstance(reply, str)
        lp = m.logprobs(m.tokenize("Once upon a time", add_special=True))
        assert lp.shape[1] == m.vocab_size and abs(float(np.exp(lp[-1]).sum()) - 1) < 1e-3
    out, err = capfd.readouterr()
    assert out == "" and "INFO" not in err and "Failed to load" not in err


def test_quality_table_scores_every_method(table: list[dict]):
    rows = {r["name"]: r for r in table}
    assert rows["micro"]["reference"] is None
    for name in ["micro-gptq-w4g64", "micro-awq-w4g64", "micro-rtn-w4g64", "micro-rtn-w8g128"]:
        r = rows[name]
        assert r["reference"] == "micro" and math.isfinite(r["ppl"]) and r["kld_mean"] >= 0 and 0 <= r["top1"] <= 1
        assert r["bits"] in (4, 8) and r["seconds"] > 0
    # 8 bits lose less than 4 bits with the same (no) calibration
    assert rows["micro-rtn-w8g128"]["kld_mean"] < rows["micro-rtn-w4g64"]["kld_mean"]


def test_stored_table_and_pareto_front(quantized: tuple[Store, dict], table: list[dict]):
    store, _ = quantized
    rows = stored_table(store, "micro")
    assert {r["kind"] for r in rows} >= {"gptq", "awq", "rtn"}
    assert all(r["kld_mean"] is not None for r in rows if r["kind"] in METHODS)
    points = [{"name": "a", "s": 1, "q": 5}, {"name": "b", "s": 2, "q": 3}, {"name": "c", "s": 3, "q": 4},
              {"name": "d", "s": 4, "q": None}]
    assert [r["name"] for r in pareto_front(points, "s", "q")] == ["a", "b"]


def test_quality_table_is_logged_to_mlflow(table: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mlflow = pytest.importorskip("mlflow")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("LLMLAB_TRACKING_URI", uri)
    assert log_quality_table(table, store=Store(tmp_path / "models"), title="quantize micro")
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("llmlab").experiment_id])
    assert run.info.run_name == "quantize micro"
    gptq_row = next(r for r in table if r["name"] == "micro-gptq-w4g64")
    assert run.data.metrics["micro-gptq-w4g64.kld_mean"] == pytest.approx(gptq_row["kld_mean"])
    assert "quality_table.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    # inside a run (as in a tracked recipe run) the rows go to that run; outside one, only on request
    assert not log_quality_table(table, store=Store(tmp_path / "models"), new_run=False)
    with mlflow.start_run(experiment_id=run.info.experiment_id, run_name="recipe") as recipe_run:
        assert log_quality_table(table[:1], store=Store(tmp_path / "models"), new_run=False)
    assert "micro.ppl" in client.get_run(recipe_run.info.run_id).data.metrics
    monkeypatch.setenv("LLMLAB_TRACKING_URI", "off")
    assert not log_quality_table(table, store=Store(tmp_path / "models"))


def test_existing_outputs_are_reused_or_not_overwritten(quantized: tuple[Store, dict]):
    store, _ = quantized
    before = store.get("micro-rtn-w4g64").content_hash
    summary = quantize(QuantizeConfig(model="micro", types=["rtn"], group_size=64, score=False), store=store)
    assert summary["reused"] == ["micro-rtn-w4g64"] and store.get("micro-rtn-w4g64").content_hash == before
    with pytest.raises(StoreError, match="'micro-gptq-w4g64' already exists, made with another calibration"):
        quantize(QuantizeConfig(model="micro", types=["gptq"], group_size=64, score=False), store=store)
