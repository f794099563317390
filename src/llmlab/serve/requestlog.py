"""The server's request log: one JSON line per answered request.

Each line is written with a single ``write`` to a file opened with ``O_APPEND`` (and fsynced by
default) *before* the response is sent, so a line is never interleaved with another and a
killed server loses no request it acknowledged. A torn last line (killed mid-write of a request
not yet answered) is skipped by ``read``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class RequestLog:
    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fsync = fsync
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a request log (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
