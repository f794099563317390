"""Servers as background processes (the app's Start / Stop buttons).

```python
from llmlab.serve.process import start, stop, running_servers, server_of, stop_all
info = start("demo-q4_k_m-bundle", store=store)      # `llmlab serve` in a subprocess; waits for /health
running_servers(store)                               # [{'name', 'url', 'pid', 'port', 'log_path', ...}]
server_of("demo-q4_k_m-bundle", store)               # that one's record, or None
stop("demo-q4_k_m-bundle", store=store)
stop_all(store)                                      # every server started from this store
```

Each server writes ``$LLMLAB_HOME/.serve/<name>.server.json`` (pid, port, url, start time, and the
store it was started from); a record whose process is gone is ignored and removed. Servers bind 127.0.0.1.

A server belongs to the store folder it was started from, told by the folder's device and inode
(``store_mark``), not by its path or by files in it: a copied store carries the original's records,
and their servers are neither listed nor stopped from the copy; a moved store keeps its servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError, NotFoundError, ResourceError

if TYPE_CHECKING:
    from llmlab.store import Store


def _folder(store: Store) -> Path:
    path = store.root / ".serve"
    path.mkdir(exist_ok=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def store_mark(store: Store) -> dict[str, Any]:
    """What a server record says about its store: the resolved root, and the folder's device and
    inode, which a move keeps and a copy does not."""
    st = store.root.stat()
    return {"root": str(store.root), "device": st.st_dev, "inode": st.st_ino}


def _started_here(info: dict[str, Any], store: Store) -> bool:
    mark = info.get("store")
    if not isinstance(mark, dict):  # a record from before records were marked: its request log tells the store
        return Path(str(info.get("log_path", ""))).parent.parent == store.root
    here = store_mark(store)
    return (mark.get("device"), mark.get("inode")) == (here["device"], here["inode"])


def running_servers(store: Store) -> list[dict[str, Any]]:
    """The servers started from this store that are still alive. Records copied from another store
    (a copied store folder) and records of servers that are gone are removed, never acted on."""
    from llmlab.store import process_alive

    out = []
    for record in sorted(_folder(store).glob("*.server.json")):
        try:
            info = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _started_here(info, store) and process_alive(info.get("pid"), info.get("started")):
            out.append(info)
        else:
            record.unlink(missing_ok=True)
    return out


def server_of(name: str, store: Store) -> dict[str, Any] | None:
    """The running server started from this store for ``name``, if there is one."""
    return next((s for s in running_servers(store) if s["name"] == name), None)


def served_adapters(store: Store) -> dict[str, str]:
    """{model name: server URL} of the running bundle servers that hold several adapters: the bundle
    (its base) and ``bundle:adapter`` for each adapter, as their server answers to them."""
    out = {}
    for s in running_servers(store):
        if not store.exists(s["name"]):
            continue
        art = store.get(s["name"])
        adapters = (art.manifest.info.get("model") or {}).get("adapters") or {} if art.kind == "bundle" else {}
        if adapters:
            out.update({n: s["url"] for n in [art.name, *(f"{art.name}:{a}" for a in adapters)]})
    return out


def start(name: str, *, store: Store, port: int | None = None, log_prompts: bool = True,
          timeout: float = 120) -> dict[str, Any]:
    """Start ``llmlab serve NAME`` (a bundle artifact is served from its folder) and wait until it answers."""
    import httpx
    import psutil

    from llmlab.store import write_json

    if server_of(name, store) is not None:
        raise ConfigError(f"A server for '{name}' is already running.", "Stop it first.")
    art = store.get(name)
    source = str(art.path) if art.kind == "bundle" else name
    port = port or free_port()
    log_path = _folder(store) / f"{name}.requests.jsonl"
    out = _folder(store) / f"{name}.server.log"
    cmd = [sys.executable, "-m", "llmlab", "serve", source, "--host", "127.0.0.1", "--port", str(port),
           "--model-name", name, "--log-path", str(log_path), "--log-prompts", str(log_prompts).lower()]
    env = {**os.environ, "LLMLAB_HOME": str(store.root)}
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    info = {"name": name, "url": url, "port": port, "pid": proc.pid, "started": psutil.Process(proc.pid).create_time(),
            "log_path": str(log_path), "output": str(out), "store": store_mark(store)}
    # Recorded at once: a server whose starter is killed while it loads is still listed and stoppable.
    record = _folder(store) / f"{name}.server.json"
    write_json(record, info)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            record.unlink(missing_ok=True)
            raise ConfigError(f"The server for '{name}' exited: {out.read_text().strip().splitlines()[-1:]}.",
                              f"See {out}.")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            record.unlink(missing_ok=True)
            raise ResourceError(f"The server for '{name}' did not answer within {timeout:.0f} s.", f"See {out}.")
        time.sleep(0.2)
    return info


def stop(name: str, *, store: Store, timeout: float = 10) -> None:
    """Stop the server started from this store for ``name`` (SIGTERM, then SIGKILL after ``timeout``)."""
    import psutil

    from llmlab.store import process_alive

    info = server_of(name, store)
    if info is None:
        raise NotFoundError(f"No running server for '{name}' started from the store at {store.root}.",
                            "List the running ones with `llmlab servers ls`.")
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(info["pid"])
        proc.send_signal(signal.SIGTERM)
        # Polled (a zombie has stopped) rather than psutil's wait, which waits for the process that
        # started the server (the app) to reap it when that is not this one.
        deadline = time.monotonic() + timeout
        while process_alive(info["pid"], info["started"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(info["pid"], info["started"]):
            proc.kill()
        with contextlib.suppress(psutil.TimeoutExpired):
            proc.wait(0)  # reaps it when this process started it
    (_folder(store) / f"{name}.server.json").unlink(missing_ok=True)


def stop_all(store: Store) -> list[str]:
    """Stop every server started from this store; the names of those stopped."""
    names = [s["name"] for s in running_servers(store)]
    for name in names:
        stop(name, store=store)
    return names
