"""Traces of agent runs: every step (node, inputs, outputs, retrieved ids, tokens, latency) in sqlite.

```python
from llmlab.agents.trace import TraceStore
traces = TraceStore.for_store(store)              # <store root>/.traces.db
for run in traces.runs(limit=10): print(run["question"], run["answer"])
traces.steps(run_id)                              # the steps of one run, in order
traces.export_jsonl("traces.jsonl")               # one JSON line per run, its steps inside
```

A run is opened by ``start`` and closed by ``finish``; ``record`` adds one step. The store is a
plain sqlite file (WAL mode), so the app can read it while a notebook or a job writes to it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmlab.store import Store

TRACES_FILE = ".traces.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, thread_id TEXT, agent TEXT, question TEXT, answer TEXT,
  status TEXT, started REAL, seconds REAL, tokens INTEGER, sources TEXT
);
CREATE TABLE IF NOT EXISTS steps (
  run_id TEXT, seq INTEGER, node TEXT, inputs TEXT, outputs TEXT, retrieved_ids TEXT,
  tokens INTEGER, latency_ms REAL, PRIMARY KEY (run_id, seq)
);
"""


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


class TraceStore:
    """The sqlite file of agent traces."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def for_store(cls, store: Store) -> TraceStore:
        return cls(store.root / TRACES_FILE)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.row_factory = sqlite3.Row
        return db

    # ----- writing -----
    def start(self, *, agent: str, question: str, thread_id: str | None = None) -> str:
        run_id = uuid.uuid4().hex[:16]
        with self._connect() as db:
            db.execute("INSERT INTO runs (run_id, thread_id, agent, question, status, started, tokens) "
                       "VALUES (?, ?, ?, ?, 'running', ?, 0)", (run_id, thread_id, agent, question, time.time()))
        return run_id

    def record(self, run_id: str, *, node: str, inputs: Any, outputs: Any, retrieved_ids: list[str] | None = None,
               tokens: int = 0, latency_ms: float = 0.0) -> None:
        with self._connect() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM steps WHERE run_id = ?", (run_id,)).fetchone()[0]
            db.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, seq, node, _dump(inputs), _dump(outputs), _dump(retrieved_ids or []), tokens,
                        round(latency_ms, 2)))

    def finish(self, run_id: str, *, answer: str | None, sources: list[str] | None = None,
               status: str = "done") -> None:
        with self._connect() as db:
            started, tokens = db.execute("SELECT started, (SELECT COALESCE(SUM(tokens), 0) FROM steps WHERE "
                                         "run_id = ?) FROM runs WHERE run_id = ?", (run_id, run_id)).fetchone()
            db.execute("UPDATE runs SET answer = ?, status = ?, seconds = ?, tokens = ?, sources = ? WHERE run_id = ?",
                       (answer, status, round(time.time() - started, 3), tokens, _dump(sources or []), run_id))

    # ----- reading -----
    def runs(self, *, limit: int = 50, thread_id: str | None = None) -> list[dict[str, Any]]:
        """The newest runs first."""
        where, args = ("WHERE thread_id = ?", [thread_id]) if thread_id else ("", [])
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY started DESC LIMIT ?", (*args, limit)).fetchall()
        return [{**dict(r), "sources": json.loads(r["sources"] or "[]")} for r in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return [{**dict(r), "inputs": json.loads(r["inputs"]), "outputs": json.loads(r["outputs"]),
                 "retrieved_ids": json.loads(r["retrieved_ids"])} for r in rows]

    def export_jsonl(self, path: str | Path, *, limit: int = 100_000) -> int:
        """Write every run (oldest first) with its steps as one JSON line each; returns the count."""
        runs = list(reversed(self.runs(limit=limit)))
        with open(path, "w") as f:
            for run in runs:
                f.write(_dump({**run, "steps": self.steps(run["run_id"])}) + "\n")
        return len(runs)
