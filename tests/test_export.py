"""Export bundles: contents, hashes, tarball, tamper refusal, parity (exact and format change), drift."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")

from llmlab import recipes  # noqa: E402
from llmlab.errors import StoreError  # noqa: E402
from llmlab.export import ExportConfig, export, open_bundle, verify_bundle  # noqa: E402
from llmlab.export.ollama import PROBES, Untranslatable, fill_go_template, translate  # noqa: E402
from llmlab.export.parity import ParityError, check  # noqa: E402
from llmlab.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, micro_gguf, micro_model_dir: Path):
    """A store with the micro model (HF and GGUF) and the GGUF's bundle, parity-checked."""
    store = Store(tmp_path_factory.mktemp("export") / "models")
    store.add(micro_model_dir, "micro")
    store.add(micro_gguf("f16"), "micro-f16")
    store.record_metrics("micro-f16", {"perplexity": 12.5, "accuracy": 0.25})
    bundle = export(ExportConfig(model="micro-f16"), store=store)
    return store, bundle


def test_bundle_contents(exported) -> None:
    store, bundle = exported
    files = set(bundle.manifest.files)
    assert {"bundle.json", "model/micro-f16.gguf", "server.json", "requirements.lock", "Dockerfile", "Modelfile",
            "recipe.yaml", "README.md"} <= files
    assert bundle.kind == "bundle" and bundle.manifest.parents[0].name == "micro-f16"
    assert verify_bundle(bundle.path) == []
    lock = (bundle.path / "requirements.lock").read_text()
    assert "llama-cpp-python==" in lock and "fastapi==" in lock and "\ntorch==" not in lock
    docker = (bundle.path / "Dockerfile").read_text()
    assert "USER llmlab" in docker and "HEALTHCHECK" in docker and "--api-key-env" in docker
    card = (bundle.path / "README.md").read_text()
    assert "| perplexity | 12.5 |" in card and "micro-f16" in card
    assert bundle.metrics["parity"]["ok"] and bundle.metrics["parity"]["mode"] == "exact"
    # the rebuild recipe is a valid recipe ending with this export
    recipe = recipes.load(bundle.path / "recipe.yaml")
    assert recipe.steps[-1].kind == "export" and recipe.steps[-1].config.model == "micro-f16"


def test_modelfile_template_matches_jinja(exported) -> None:
    from llmlab.runtime import load

    _, bundle = exported
    text = (bundle.path / "Modelfile").read_text()
    assert text.startswith("FROM ./model/micro-f16.gguf") and 'TEMPLATE """' in text and "PARAMETER stop" in text
    with load(bundle.path / "model" / "micro-f16.gguf") as m:
        bos = m.token_text(m.bos_id) if m.bos_id is not None else ""
        template, stops = translate(lambda msgs, gen: m.apply_chat_template(msgs, add_generation_prompt=gen), bos)
        assert template in text and all(json.dumps(s) in text for s in stops)
    # a template that is not a plain sequence of role blocks is refused, with the reason
    def llama2(msgs, gen):
        sys_ = next((x["content"] for x in msgs if x["role"] == "system"), None)
        out = ""
        for x in msgs:
            if x["role"] == "user":
                out += "[INST] " + (f"<<SYS>>{sys_}<</SYS>> " if sys_ and not out else "") + x["content"] + " [/INST]"
            elif x["role"] == "assistant":
                out += x["content"]
        return out
    with pytest.raises(Untranslatable):
        translate(llama2)
    assert fill_go_template({"user": ("<u>", "</u>"), "system": ("", ""), "assistant": ("", "")}, "<a>",
                            PROBES[0]) == "<u>Hi</u><a>"


def test_tarball_verifies_and_serves_alone(exported, tmp_path: Path) -> None:
    import httpx

    from llmlab.serve import ServeConfig, running

    store, bundle = exported
    with tarfile.open(store.root / "micro-f16-bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    copy = tmp_path / "micro-f16-bundle"
    assert verify_bundle(copy) == []
    with running(ServeConfig(source=str(copy), port=0, log_path=str(tmp_path / "log.jsonl"))) as url:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "micro-f16-bundle", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text


def test_tampered_bundle_is_refused_before_loading(exported, tmp_path: Path) -> None:
    from llmlab.serve import ServeConfig, create_app

    _, bundle = exported
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    gguf = copy / "model" / "micro-f16.gguf"
    gguf.write_bytes(gguf.read_bytes()[:1000])  # a truncated model would fail to load: it must not get there
    assert verify_bundle(copy) == ["tampered file: model/micro-f16.gguf (sha256 differs from the manifest)"]
    with pytest.raises(StoreError, match="tampered file: model/micro-f16.gguf"):
        create_app(ServeConfig(source=str(copy), log_path=str(tmp_path / "l.jsonl")))
    (copy / "extra.txt").write_text("x")
    out = subprocess.run([sys.executable, "-m", "llmlab", "bundle", "verify", str(copy)], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "model/micro-f16.gguf" in out.stdout and "unexpected file: extra.txt" in out.stdout


def test_parity_format_change_reports_kld(exported) -> None:
    store, bundle = exported
    report = check(bundle.path, "micro", store=store)  # safetensors artifact vs the GGUF bundle
    assert report["mode"] == "format-change" and report["ok"]
    assert report["kld_mean"] < 0.05 and report["top1"] > 0.9


@pytest.fixture(scope="module")
def drifted_gguf(tmp_path_factory: pytest.TempPathFactory, micro_gguf) -> Path:
    """The micro GGUF with one byte of its chat template changed (same length: the file stays valid)."""
    data = micro_gguf("f16").read_bytes()
    turn = b"<|{{ message['role'] }}|>\n"
    assert data.count(turn) == 1
    out = tmp_path_factory.mktemp("drift") / "drifted.gguf"
    out.write_bytes(data.replace(turn, turn[:-1] + b":"))
    return out


def test_a_template_with_its_own_system_prompt_is_translated(smollm2_gguf: Path) -> None:
    """SmolLM2 (not made by llmlab): its template writes its own system block before a conversation that
    has none, and its BOS (<|im_start|>) is template text llama.cpp does not add. The Modelfile's TEMPLATE
    writes that block before a first message of another role, and renders every probe as Jinja does."""
    from llmlab.export.bundle import gguf_modelfile

    text, reason = gguf_modelfile(smollm2_gguf)
    assert reason is None, reason
    assert ('{{ if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\nYou are a helpful AI assistant '
            'named SmolLM') in text
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text


def test_export_fails_loudly_on_template_drift(exported, drifted_gguf: Path, monkeypatch) -> None:
    from llmlab.export import bundle as bundle_mod

    store, _ = exported
    assert (Path(drifted_gguf).read_bytes() != (store.get("micro-f16").file(".gguf")).read_bytes())
    # an exporter that picked the wrong file: the parity check must catch it and nothing is written
    monkeypatch.setattr(bundle_mod, "_model_files", lambda art, store: ("gguf", Path(drifted_gguf), None))
    with pytest.raises(ParityError, match="chat template renders differently"):
        export(ExportConfig(model="micro-f16", name="drifted-bundle"), store=store)
    assert not store.exists("drifted-bundle") and not (store.root / "drifted-bundle.tar.gz").exists()


def test_hf_bundle_for_vllm(exported) -> None:
    store, _ = exported
    b = export(ExportConfig(model="micro", parity=False, tarball=False), store=store)
    spec = open_bundle(b.path)
    assert spec["model"]["format"] == "hf" and spec["vllm"].startswith("vllm serve ./model")
    assert "model/model.safetensors" in b.manifest.files and "Modelfile" not in b.manifest.files


def test_registry_round_trip(exported, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from llmlab.export.registry import register

    store, bundle = exported
    monkeypatch.setenv("LLMLAB_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = register(bundle, store)
    assert version["uri"] == "models:/micro-f16-bundle/1" and version["metrics"]["source.perplexity"] == 12.5
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version("micro-f16-bundle", "1")
    assert mv.tags["llmlab.content_hash"] == bundle.content_hash
    run = MlflowClient().get_run(version["run_id"])
    assert run.data.metrics["parity.max_logprob_diff"] >= 0
    # export can target the registered version: fetched, hash-checked, same content
    again = export(ExportConfig(model="models:/micro-f16-bundle/1", tarball=False), store=store)
    assert again.name == "micro-f16-bundle-v1" and again.content_hash == bundle.content_hash
    assert again.manifest.info["registered"] == "models:/micro-f16-bundle/1"
    # a registered copy whose files changed is refused
    art_dir = Path(mv.source.removeprefix("file://"))
    (art_dir / "Modelfile").write_text("FROM elsewhere\n")
    with pytest.raises(StoreError, match="tampered file: Modelfile"):
        export(ExportConfig(model="models:/micro-f16-bundle/1", name="bad", tarball=False), store=store)
    assert not store.exists("bad")
