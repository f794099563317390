"""A step's child processes end with it: a SIGKILLed ``llmlab quantize`` (or job) leaves no GGUF converter
running on and writing, and nothing of the killed conversion is taken for an artifact.

The converter here is a stand-in ``convert_hf_to_gguf.py`` in a converter cache of its own
(``LLMLAB_CACHE``) that writes its ``--outfile`` and a heartbeat file for 30 s; it runs through the same
code path as llama.cpp's (``gguf.run_converter`` and its wrapper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmlab.quantize import gguf
from llmlab.store import Store, process_alive

STAND_IN = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--outfile") + 1])
Path(os.environ["CHILD_PID"]).write_text(str(os.getpid()))
print("blk.0.attn_q.weight --> F16, shape = {64, 64}", flush=True)
with open(out, "ab") as f:
    for _ in range(300):
        f.write(b"x" * 1024)
        f.flush()
        with open(os.environ["BEAT"], "a") as beat:
            beat.write(".")
        time.sleep(0.1)
"""

# A process that converts into an artifact being written to the store at argv[1] (as the quantize step does).
PARENT = """
import sys
from llmlab.quantize import gguf
from llmlab.store import Store

with Store(sys.argv[1]).write("micro-f16", "gguf") as w:
    with gguf.run_converter("convert_hf_to_gguf.py", [], w.path / "micro-f16.gguf", 1, what="Converting 'micro'"):
        pass
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A converter cache whose converter is ``STAND_IN``; the env says where it reports."""
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    gguf.converter_dir().mkdir(parents=True)
    for script in gguf.SCRIPTS:
        (gguf.converter_dir() / script).write_text(STAND_IN)
    monkeypatch.setenv("CHILD_PID", str(tmp_path / "child.pid"))
    monkeypatch.setenv("BEAT", str(tmp_path / "beat"))
    return tmp_path


def wait_for(what: str, ok, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def beats(folder: Path) -> int:
    path = folder / "beat"
    return path.stat().st_size if path.exists() else 0


def test_sigkilled_step_ends_its_converter_at_once(stand_in: Path) -> None:
    root = stand_in / "models"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(root)])
    try:
        wait_for("the converter to start writing", lambda: beats(stand_in) >= 3)
        child = int((stand_in / "child.pid").read_text())
        assert process_alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        killed = time.monotonic()
        wait_for("the converter to end with its parent", lambda: not process_alive(child), timeout=2)
        print(f"converter gone {time.monotonic() - killed:.2f} s after its parent was SIGKILLed")
    finally:
        parent.kill()
    written = beats(stand_in)
    time.sleep(1)
    assert beats(stand_in) == written  # no orphan writes on
    # The killed conversion's folder (with its .part file) is a leftover of a dead writer: the next
    # Store removes it, and it never shows as an artifact.
    store = Store(root)
    assert store.list() == [] and not [p for p in root.rglob("*") if p.name.endswith(".part")]


def test_a_failing_reporter_ends_the_converter_instead_of_waiting_for_it(stand_in: Path) -> None:
    class Stop(Exception):
        pass

    def progress(event: dict) -> None:
        if event.get("done"):
            raise Stop  # e.g. a cancel, or an events pipe that broke

    start = time.monotonic()
    with pytest.raises(Stop), gguf.run_converter("convert_hf_to_gguf.py", [], stand_in / "x.gguf", 1, what="x",
                                                 progress=progress):
        pass
    assert time.monotonic() - start < 20  # the stand-in would run 30 s
    child = int((stand_in / "child.pid").read_text())
    assert not process_alive(child)
    assert not list(stand_in.glob("*x.gguf*"))  # neither the file nor its .part


def test_a_child_whose_parent_is_already_gone_does_not_start(tmp_path: Path) -> None:
    # The race DIE_WITH_PARENT closes: the parent died before the child asked to die with it.
    env = {**gguf.child_env(), "LLMLAB_PARENT_PID": "1"}  # not this child's parent
    code = f"open({str(tmp_path / 'f')!r}, 'w').write('ran')"
    run = subprocess.run(gguf.python_child(code), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and "the process that started this one is gone" in run.stderr
    assert not (tmp_path / "f").exists()


# A parent that starts a DIE_WITH_PARENT child (its platform set to argv[1]), says its pid, and waits.
PARENT_OF_A_SLEEPER = """
import subprocess, sys, time
from llmlab.quantize import gguf

code = f"import sys\\nsys.platform = {sys.argv[1]!r}\\n" + gguf.DIE_WITH_PARENT + "import time\\ntime.sleep(300)\\n"
child = subprocess.Popen([sys.executable, "-c", code], env=gguf.child_env())
print(child.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("platform", ["linux", "darwin"], ids=["linux-pdeathsig", "elsewhere-watcher"])
def test_a_child_ends_with_its_sigkilled_parent(platform: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_A_SLEEPER, platform], stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.5)  # past its start-up check
        assert process_alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_for("the child to end with its parent", lambda: not process_alive(child), timeout=2)
    finally:
        parent.kill()
        parent.wait()
