"""Arena votes (sqlite under the store), the Elo / Bradley-Terry ratings they give, and blind rounds."""

from __future__ import annotations

import random

import pytest

from llmlab.errors import ConfigError
from llmlab.evaluate.arena import Arena, Round, blind_labels, bradley_terry, elo
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


class Reverse(random.Random):
    def shuffle(self, x: list) -> None:  # type: ignore[override]
        x.reverse()


def test_blind_labels_shuffle_per_question() -> None:
    assert blind_labels(["p", "q", "r"], Reverse()) == {"Model A": "r", "Model B": "q", "Model C": "p"}
    orders = {tuple(blind_labels(["p", "q"]).values()) for _ in range(64)}
    assert orders == {("p", "q"), ("q", "p")}  # random: both orders come up


def test_blind_round_records_the_vote_against_the_variant_behind_the_label(store: Store) -> None:
    arena = Arena(store)
    r = Round.start("Where?", ["p", "q"], rng=Reverse())  # shown as A = q, B = p
    r.answers.update({"p": "X", "q": "Y"})
    assert [r.heading(lb) for lb in r.labels] == ["Model A", "Model B"]  # no names before the vote
    assert r.record(arena, "Model A") == 1
    vote = arena.votes()[0]
    assert vote[vote["outcome"]] == "q" and (vote["a"], vote["answer_a"]) == ("q", "Y")
    assert [r.heading(lb) for lb in r.labels] == ["Model A: q", "Model B: p"]
    assert r.outcome() == "Your vote: Model A is better. Model A is q; Model B is p."
    with pytest.raises(ConfigError, match="already has a vote"):
        r.record(arena, "Model B")
    tie = Round.start("Who?", ["p", "q", "r"])
    tie.answers.update({"p": "X", "r": "Z"})  # q failed to answer: not votable
    assert sorted(tie.labels[lb] for lb in tie.votable()) == ["p", "r"]
    with pytest.raises(ConfigError, match="has no answer"):
        tie.record(arena, next(lb for lb, n in tie.labels.items() if n == "q"))
    assert tie.record(arena, None) == 1 and tie.outcome().startswith("Your vote: a tie.")


def test_open_round_uses_the_names(store: Store) -> None:
    r = Round.start("Where?", ["p", "q"], blind=False)
    r.answers.update({"p": "X", "q": "Y"})
    assert list(r.labels) == ["p", "q"] and r.heading("q") == "q"
    r.record(Arena(store), "q")
    assert r.outcome() == "Your vote: q is better."
