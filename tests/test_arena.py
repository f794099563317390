"""Arena votes (sqlite under the store) and the Elo / Bradley-Terry ratings they give."""

from __future__ import annotations

import pytest

from llmlab.errors import ConfigError
from llmlab.evaluate.arena import Arena, bradley_terry, elo
from llmlab.store import Store


def test_elo_and_bradley_terry_order_and_symmetry() -> None:
    votes = [{"a": "x", "b": "y", "outcome": "a"}] * 6 + [{"a": "x", "b": "y", "outcome": "b"}] * 2 \
        + [{"a": "y", "b": "z", "outcome": "a"}] * 4 + [{"a": "x", "b": "z", "outcome": "tie"}]
    e, bt = elo(votes), bradley_terry(votes)
    assert e["x"] > e["y"] > e["z"] and sum(e.values()) == pytest.approx(3000)
    assert bt["x"] > bt["y"] > bt["z"]
    assert elo([{"a": "p", "b": "q", "outcome": "a"}]) == {"p": 1016.0, "q": 984.0}
    even = bradley_terry([{"a": "p", "b": "q", "outcome": "a"}, {"a": "p", "b": "q", "outcome": "b"}])
    assert even["p"] == pytest.approx(even["q"]) == pytest.approx(1.0)
    # the prior keeps an unbeaten player finite
    assert bradley_terry([{"a": "p", "b": "q", "outcome": "a"}])["p"] < 100


def test_votes_persist_and_rate(store: Store) -> None:
    arena = Arena(store)
    assert arena.vote("Where?", {"a1": "X", "b1": "Y"}, winner="a1") == 1
    assert arena.vote("Who?", {"a1": "X", "b1": "Y", "c1": "Z"}, winner="b1") == 3
    assert arena.vote("Tie?", {"a1": "X", "c1": "Z"}, winner=None) == 1
    again = Arena(store)  # a new object reads the same sqlite file
    votes = again.votes()
    assert len(votes) == 5 and votes[0]["answer_a"] == "X" and (store.root / ".arena" / "votes.sqlite").is_file()
    rows = {r["name"]: r for r in again.ratings()}
    assert rows["a1"]["games"] == 4 and rows["a1"]["wins"] == 1 and rows["a1"]["ties"] == 2
    assert rows["b1"]["wins"] == 2 and next(iter(again.ratings()))["name"] == "b1"
    with pytest.raises(ConfigError, match="did not answer"):
        arena.vote("q", {"a1": "X", "b1": "Y"}, winner="zz")
    with pytest.raises(ConfigError, match="at least two"):
        arena.vote("q", {"a1": "X"}, winner=None)
