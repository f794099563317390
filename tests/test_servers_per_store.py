"""Background servers belong to the store folder they were started from: a copy of the folder carries the
original's ``.serve/*.server.json`` records (their processes alive), and must neither list nor stop
those servers; a moved store keeps its own."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llmlab.errors import NotFoundError
from llmlab.serve import process
from llmlab.store import Store, process_alive, write_json


def llmlab(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmlab", "--home", str(root), "servers", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process to stand in for a server (what a record's pid points at)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


def record(store: Store, pid: int, name: str = "micro", *, marked: bool = True) -> None:
    """A server record as ``process.start`` writes it (``marked=False``: as it did before records said
    which store they belong to)."""
    folder = store.root / ".serve"
    folder.mkdir(exist_ok=True)
    info = {"name": name, "url": "http://127.0.0.1:9", "port": 9, "pid": pid,
            "started": psutil.Process(pid).create_time(), "log_path": str(folder / f"{name}.requests.jsonl"),
            "output": str(folder / f"{name}.server.log")}
    if marked:
        info["store"] = process.store_mark(store)
    write_json(folder / f"{name}.server.json", info)


@pytest.mark.parametrize("marked", [True, False], ids=["record", "record-from-before"])
def test_a_copied_store_neither_lists_nor_stops_the_originals_server(tmp_path: Path, sleeper, marked: bool):
    original = Store(tmp_path / "models")
    record(original, sleeper.pid, marked=marked)
    assert [s["pid"] for s in process.running_servers(original)] == [sleeper.pid]
    shutil.copytree(original.root, tmp_path / "copy")
    copy = Store(tmp_path / "copy")

    assert process.running_servers(copy) == [] and process.server_of("micro", copy) is None
    assert process.stop_all(copy) == []
    with pytest.raises(NotFoundError, match="No running server for 'micro'"):
        process.stop("micro", store=copy)
    assert "No server is running for the store at" in llmlab(copy.root, "ls").stdout
    stopped = llmlab(copy.root, "stop", "--all")
    assert stopped.returncode == 0 and "nothing stopped" in stopped.stdout, stopped.stderr
    assert llmlab(copy.root, "stop", "micro").returncode == 3
    assert process_alive(sleeper.pid)  # the copy killed nothing
    # the original still has its server
    assert [s["pid"] for s in process.running_servers(original)] == [sleeper.pid]
    assert f"micro  http://127.0.0.1:9  pid {sleeper.pid}" in llmlab(original.root, "ls").stdout


def test_a_moved_store_keeps_its_server(tmp_path: Path, sleeper):
    record(Store(tmp_path / "models"), sleeper.pid)
    (tmp_path / "models").rename(tmp_path / "moved")
    moved = Store(tmp_path / "moved")
    assert [s["pid"] for s in process.running_servers(moved)] == [sleeper.pid]
    # The server is not the stopping process's child (as when the app started it): it stays a zombie
    # until its parent reaps it, which `stop` must not wait for (its SIGTERM timeout is 10 s).
    start = time.monotonic()
    stopped = llmlab(moved.root, "stop", "micro")
    assert stopped.returncode == 0 and "stopped micro" in stopped.stdout, stopped.stderr
    assert time.monotonic() - start < 8
    assert sleeper.wait(10) == -signal.SIGTERM and process.running_servers(moved) == []


def test_a_real_server_is_not_the_copys(store: Store, micro_gguf, tmp_path: Path):
    pytest.importorskip("llama_cpp")
    import httpx

    store.add(micro_gguf("f16"), "micro-f16")
    info = process.start("micro-f16", store=store)
    try:
        shutil.copytree(store.root, tmp_path / "copy")
        copy = Store(tmp_path / "copy")
        assert process.running_servers(copy) == []
        assert "nothing stopped" in llmlab(copy.root, "stop", "--all").stdout
        assert httpx.get(f"{info['url']}/health", timeout=5).status_code == 200  # still serving
        assert [s["pid"] for s in process.running_servers(store)] == [info["pid"]]
    finally:
        process.stop_all(store)
    assert not process_alive(info["pid"], info["started"])


STARTER = """
import sys
from llmlab.serve import process
from llmlab.store import Store

process.start("micro-f16", store=Store(sys.argv[1]))
"""


def is_serving(server: psutil.Process) -> bool:
    return any(c.status == psutil.CONN_LISTEN for c in server.net_connections())


def test_a_server_whose_starter_is_killed_while_it_loads_is_still_its_stores(store: Store, micro_gguf):
    pytest.importorskip("llama_cpp")
    store.add(micro_gguf("f16"), "micro-f16")
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(store.root)])
    server = None
    try:
        end = time.monotonic() + 120
        while server is None and time.monotonic() < end:
            server = next((c for c in psutil.Process(starter.pid).children() if "serve" in c.cmdline()), None)
            time.sleep(0.05)
        assert server is not None, "the server process never started"
        path = store.root / ".serve" / "micro-f16.server.json"
        end = time.monotonic() + 1  # its record follows the spawn within milliseconds (it loads for seconds)
        while not path.exists() and time.monotonic() < end:
            time.sleep(0.01)
        assert server.is_running() and not is_serving(server)
        starter.kill()  # e.g. a `serve` step's job SIGKILLed before its server answered
        starter.wait()
        [listed] = process.running_servers(store)  # the server outlives its starter (by design) and is listed
        assert listed["pid"] == server.pid
        process.stop("micro-f16", store=store)
        assert not process_alive(server.pid) and process.running_servers(store) == []
    finally:
        starter.kill()
        if server is not None and server.is_running():
            server.kill()


def test_the_export_page_of_a_copy_offers_to_start_not_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             sleeper, micro_gguf):
    pytest.importorskip("streamlit")
    from apptest import open_page, texts

    from llmlab.export import ExportConfig, export

    original = Store(tmp_path / "models")
    original.add(micro_gguf("f16"), "micro-f16")
    export(ExportConfig(model="micro-f16", tarball=False, parity=False), store=original)
    record(original, sleeper.pid, "micro-f16-bundle")
    shutil.copytree(original.root, tmp_path / "copy")

    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path / "copy"))
    at = open_page("views/export.py")
    assert "Serving" not in texts(at) and [b.label for b in at.button if b.key == "export:serve"] == ["Start server"]
    assert not [b for b in at.button if b.key == "export:stop"]
    monkeypatch.setenv("LLMLAB_HOME", str(original.root))
    at = open_page("views/export.py")
    assert f"pid {sleeper.pid}" in texts(at) and [b for b in at.button if b.key == "export:stop"]
    assert process_alive(sleeper.pid)
