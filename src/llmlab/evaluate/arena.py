"""The Arena: side-by-side answers, the user's votes, and ratings (Elo and Bradley-Terry) from them.

```python
from llmlab.evaluate.arena import Arena
arena = Arena(store)                                   # votes in <store>/.arena/votes.sqlite
arena.vote("Where is Graevom?", {"demo": "Gufokrei", "demo-lora": "Nifustai"}, winner="demo")
arena.ratings()   # [{"name": "demo", "elo": 1016.0, "bt": 1.0, "games": 1, "wins": 1, ...}, ...]
```

Each vote is one row: the prompt, the two variants with their content hashes and answers, and the
outcome (``a``, ``b`` or ``tie``). Elo is replayed in vote order (K=32, start 1000); Bradley-Terry
strengths come from the minorization-maximization iteration over all votes (a tie counts half a
win each way; a small prior of one tie against a virtual average player keeps a variant that never
lost finite), scaled so the mean log-strength is 0 and shown on the Elo scale (400·log10 + 1000).
Votes with more than two variants are stored as every pair.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError

if TYPE_CHECKING:
    from llmlab.store import Store

OUTCOMES = ("a", "b", "tie")
SCHEMA = """CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, prompt TEXT NOT NULL,
    a TEXT NOT NULL, b TEXT NOT NULL, a_hash TEXT, b_hash TEXT, answer_a TEXT, answer_b TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie')))"""


def elo(votes: Sequence[Mapping[str, Any]], *, k: float = 32.0, start: float = 1000.0) -> dict[str, float]:
    """Elo ratings after replaying ``votes`` ({a, b, outcome}) in order."""
    r: dict[str, float] = {}
    for v in votes:
        a, b = v["a"], v["b"]
        ra, rb = r.setdefault(a, start), r.setdefault(b, start)
        expect_a = 1 / (1 + 10 ** ((rb - ra) / 400))
        score_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[v["outcome"]]
        r[a] = ra + k * (score_a - expect_a)
        r[b] = rb - k * (score_a - expect_a)
    return r


def bradley_terry(votes: Sequence[Mapping[str, Any]], *, iters: int = 200, prior: float = 1.0) -> dict[str, float]:
    """Bradley-Terry strengths (geometric mean 1) by MM; ties are half a win each way."""
    names = sorted({v["a"] for v in votes} | {v["b"] for v in votes})
    if not names:
        return {}
    wins = {n: prior / 2 for n in names}  # the prior: one tie with a virtual player of strength 1
    pairs: dict[tuple[str, str], float] = {}
    for v in votes:
        a, b = v["a"], v["b"]
        wins[a] += {"a": 1.0, "b": 0.0, "tie": 0.5}[v["outcome"]]
        wins[b] += {"a": 0.0, "b": 1.0, "tie": 0.5}[v["outcome"]]
        key = (min(a, b), max(a, b))
        pairs[key] = pairs.get(key, 0) + 1
    p = {n: 1.0 for n in names}
    for _ in range(iters):
        new = {}
        for n in names:
            denom = prior / (p[n] + 1.0)
            denom += sum(c / (p[n] + p[o]) for (x, y), c in pairs.items() if n in (x, y) for o in [y if x == n else x])
            new[n] = wins[n] / denom
        g = math.exp(sum(math.log(s) for s in new.values()) / len(new))
        p = {n: s / g for n, s in new.items()}
    return p


class Arena:
    """Votes of one store (sqlite, one file), and the ratings they give."""

    def __init__(self, store: Store):
        self.store = store
        self.path = store.root / ".arena" / "votes.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def vote(self, prompt: str, answers: Mapping[str, str], winner: str | None) -> int:
        """Record a vote on ``answers`` (variant -> answer, two or more): ``winner`` is one of the
        variants, or None for a tie. Stored as one row per pair; returns the rows written."""
        names = list(answers)
        if len(names) < 2:
            raise ConfigError("A vote needs at least two variants' answers.", "Pick two or more variants.")
        if winner is not None and winner not in answers:
            raise ConfigError(f"'{winner}' did not answer this prompt.", f"Vote for one of: {', '.join(names)}.")
        hashes = {n: self.store.get(n).content_hash if self.store.exists(n) else None for n in names}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = []
        for a, b in itertools.combinations(names, 2):
            if winner is None or winner not in (a, b):
                outcome = "tie"
            else:
                outcome = "a" if winner == a else "b"
            rows.append((now, prompt, a, b, hashes[a], hashes[b], answers[a], answers[b], outcome))
        with self._db() as db:
            db.executemany("INSERT INTO votes (time, prompt, a, b, a_hash, b_hash, answer_a, answer_b, outcome) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def votes(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute("SELECT * FROM votes ORDER BY id")]

    def ratings(self) -> list[dict[str, Any]]:
        """One row per variant that has votes: Elo, Bradley-Terry (strength and on the Elo scale), games,
        wins, ties; best first by Bradley-Terry."""
        votes = self.votes()
        e, bt = elo(votes), bradley_terry(votes)
        rows = {n: {"name": n, "elo": round(e[n], 1), "bt": round(bt[n], 4),
                    "bt_elo": round(1000 + 400 * math.log10(bt[n]), 1), "games": 0, "wins": 0, "ties": 0}
                for n in e}
        for v in votes:
            for side in ("a", "b"):
                r = rows[v[side]]
                r["games"] += 1
                r["wins"] += v["outcome"] == side
                r["ties"] += v["outcome"] == "tie"
        return sorted(rows.values(), key=lambda r: -r["bt"])
