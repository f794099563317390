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

A ``Round`` is one question on the Arena page: blind (the default), its answers are shown as "Model
A", "Model B"... in a new random order, the names appear only after the vote, and the vote is
recorded against the variants behind the labels:

```python
r = Round.start("Where is Graevom?", ["demo", "demo-lora"])   # r.labels: {"Model A": "demo-lora", ...}
r.answers["demo"] = "Gufokrei"; r.answers["demo-lora"] = "Nifustai"
r.record(arena, "Model A")                                    # a win for demo-lora; r.heading("Model A")
```
"""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
        # a served adapter ("bundle:adapter") is not an artifact name: no hash
        hashes = {n: self.store.get(n).content_hash if ":" not in n and self.store.exists(n) else None
                  for n in names}
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


def blind_labels(names: Sequence[str], rng: random.Random | None = None) -> dict[str, str]:
    """"Model A", "Model B"... for ``names`` in a random order: label -> variant, in display order."""
    order = list(names)
    (rng or random.Random()).shuffle(order)
    return {f"Model {string.ascii_uppercase[i] if i < 26 else i + 1}": n for i, n in enumerate(order)}


@dataclass
class Round:
    """One question in the Arena: each variant's answer under its label, and the vote once cast.
    Blind, the labels are "Model A"... in a random order and a label's variant is shown only after
    the vote; open, the labels are the variants' names."""

    prompt: str
    labels: dict[str, str]  # label -> variant, in display order
    blind: bool = True
    answers: dict[str, str] = field(default_factory=dict)  # variant -> answer (a failed one is absent)
    voted: str | None = None  # the winning label, or "Tie", once voted

    @classmethod
    def start(cls, prompt: str, names: Sequence[str], *, blind: bool = True,
              rng: random.Random | None = None) -> Round:
        labels = blind_labels(names, rng) if blind else {n: n for n in names}
        return cls(prompt=prompt, labels=labels, blind=blind)

    def heading(self, label: str) -> str:
        """What a column is headed: the label, with its variant revealed once voted (open: the name)."""
        if not self.blind:
            return label
        return f"{label}: {self.labels[label]}" if self.voted else label

    def votable(self) -> list[str]:
        """The labels whose variant answered (a vote needs two)."""
        return [label for label, name in self.labels.items() if name in self.answers]

    def record(self, arena: Arena, label: str | None) -> int:
        """Store the vote for the variant behind ``label`` (None: a tie); returns the rows written."""
        if self.voted is not None:
            raise ConfigError("This round already has a vote.", "Ask again, or ask something new, to vote.")
        if label is not None and label not in self.votable():
            raise ConfigError(f"'{label}' has no answer in this round.",
                              f"Vote for one of: {', '.join(self.votable())}.")
        answers = {self.labels[lb]: self.answers[self.labels[lb]] for lb in self.votable()}  # display order
        rows = arena.vote(self.prompt, answers, winner=self.labels[label] if label else None)
        self.voted = label or "Tie"
        return rows

    def outcome(self) -> str:
        """The vote in words and, blind, which variant each label was (once voted)."""
        said = "a tie" if self.voted == "Tie" else f"{self.voted} is better"
        names = "; ".join(f"{lb} is {n}" for lb, n in self.labels.items())
        return f"Your vote: {said}." + (f" {names}." if self.blind else "")
