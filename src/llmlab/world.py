"""The seeded synthetic demo world: made-up people, towns and objects, and facts about them.

``generate(seed, size)`` is pure Python and deterministic: the same seed and size give the same
world, byte for byte. Names come from a syllable generator, so no fact exists in real data and
a model can only know it from the world's own text. Everything the stations need comes from it:

- ``texts``: pretraining sentences, each fact stated in several phrasings, plus one profile
  document per ordinary entity;
- ``qa``: questions with one-word answers in three splits. ``tune`` uses the first question
  phrasings of each relation, ``heldout`` asks the same facts with phrasings never used in
  ``tune``, and ``rag`` asks about entities that appear only in ``documents`` (``gold_doc``);
- ``documents``: one profile per entity, including the document-only (RAG) entities;
- ``stories``: short everyday stories drawn from a small grammar over the world's entities
  (consistent with their facts), so the model learns some language beyond the fact sentences;
- ``eval_text``: held-out stories from the same grammar, never trained on (perplexity and KL
  divergence are measured on it, so they mean "how well does it model this world's language");
- ``grounded``: reading examples (a profile of a freshly drawn entity + a question -> answer)
  so the base model learns the context-question format; their entities are nowhere else.

Relations belong to groups (``RELATION_GROUP``: people, places, objects), so two skills can be
tuned separately and merged later.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

Size = Literal["micro", "small", "large"]

# How many entities of each kind a world holds. "small" is sized so a ~4M-parameter model
# can memorize it in a few CPU minutes (see STACK.md: ~120 facts worked, 450 did not).
SIZES: dict[str, dict[str, int]] = {
    "micro": {"people": 6, "towns": 3, "objects": 2, "countries": 2, "rag_people": 2, "rag_towns": 1,
              "grounded": 24, "stories": 24, "eval_stories": 8},
    "small": {"people": 16, "towns": 6, "objects": 4, "countries": 3, "rag_people": 8, "rag_towns": 4,
              "grounded": 400, "stories": 400, "eval_stories": 40},
    "large": {"people": 160, "towns": 30, "objects": 24, "countries": 8, "rag_people": 40,
              "rag_towns": 12, "grounded": 4000, "stories": 4000, "eval_stories": 200},
}

RELATION_GROUP: dict[str, str] = {
    "home": "people", "job": "people", "pet": "people", "colour": "people",
    "country": "places", "river": "places", "dish": "places",
    "material": "objects", "kept_in": "objects",
}
KIND_RELATIONS: dict[str, tuple[str, ...]] = {
    "person": ("home", "job", "pet", "colour"),
    "town": ("country", "river", "dish"),
    "object": ("material", "kept_in"),
}

# Answer vocabularies (consonant-initial where an article precedes them, so "a" is always right).
JOBS = ("baker", "potter", "weaver", "tailor", "farmer", "miner", "sailor", "painter", "singer",
        "doctor", "builder", "fisher", "teacher", "gardener", "carpenter", "brewer")
PETS = ("cat", "dog", "parrot", "rabbit", "goat", "ferret", "tortoise", "hamster", "pony", "lizard",
        "goose", "frog")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink",
           "brown", "teal")
DISHES = ("dumplings", "porridge", "stew", "pancakes", "noodles", "pie", "soup", "bread", "cheese",
          "sausages", "waffles", "curry")
MATERIALS = ("bronze", "silver", "gold", "glass", "oak", "stone", "iron", "copper", "clay", "marble")
OBJECT_NOUNS = ("Crown", "Lamp", "Bell", "Sword", "Harp", "Mirror", "Chalice", "Shield", "Clock", "Map")

# Statement phrasings: the first N_TEXT_PHRASINGS make ``texts`` (and documents); the last one is
# never trained on (``unseen_fact_text``: a harder test of whether facts generalize).
STATEMENTS: dict[str, tuple[str, ...]] = {
    "home": ("{e} lives in {a}.", "The home town of {e} is {a}.", "{e} grew up in {a}.",
             "{e} has a house in {a}."),
    "job": ("{e} works as a {a}.", "By trade, {e} is a {a}.", "The job of {e} is {a}.",
            "Everyone knows {e} as the local {a}."),
    "pet": ("{e} has a pet {a}.", "{e} keeps a {a} at home.", "The pet of {e} is a {a}.",
            "{e} feeds a {a} every morning."),
    "colour": ("The favourite colour of {e} is {a}.", "{e} likes the colour {a} best.",
               "Of all colours, {e} loves {a}.", "{e} always wears something {a}."),
    "country": ("{e} is a town in {a}.", "The town of {e} lies in {a}.", "{e} belongs to {a}.",
                "Travellers reach {e} by crossing {a}."),
    "river": ("The river {a} flows through {e}.", "{e} stands on the river {a}.",
              "The river of {e} is the {a}.", "Boats on the {a} stop at {e}."),
    "dish": ("The famous dish of {e} is {a}.", "In {e}, people love to eat {a}.",
             "{e} is known for its {a}.", "Every cook in {e} makes {a}."),
    "material": ("{e} is made of {a}.", "Craftsmen made {e} from {a}.", "The material of {e} is {a}.",
                 "{e} shines like polished {a}."),
    "kept_in": ("{e} is kept in {a}.", "You can see {e} in {a}.", "The home of {e} is the town of {a}.",
                "Visitors to {a} come to admire {e}."),
}
N_TEXT_PHRASINGS = 3

# The story grammar: {p} a person, {h} their home town, {j} job, {t} pet, {c} colour, {r} the
# river and {d} the dish of their home town, {q} another person, {o} an object, {m} its material,
# {k} the town that keeps it. Stories only state what is true in the world.
STORY_OPENINGS = ("One morning", "On a rainy day", "Last spring", "Early one evening", "Long ago",
                  "On market day", "After the harvest", "One cold winter", "On a sunny afternoon")
STORY_MIDDLES = (
    "{p} walked along the river {r} in {h}.",
    "{p} fed the {t} and went to work.",
    "At noon, {p} ate a bowl of {d} with a friend.",
    "{p} put on a {c} coat and left the house.",
    "The {t} followed {p} all the way to the market.",
    "{p} met {q} near the old bridge.",
    "They talked about the weather and the price of {d}.",
    "In the evening, {p} sat by the window and watched the boats on the {r}.",
    "Like every {j}, {p} was busy from dawn to dusk.",
    "The next day, {p} went to see {o} in {k}.",
    "{O} was made of {m} and shone in the sun.",
    "Everyone in {h} said it was a fine day.",
    "{p} painted the door {c} and laughed.",
    "A child asked {p} about the {t}, and {p} told a long story.",
)
STORY_CLOSINGS = ("Then {p} went home to {h}.", "That night, {p} slept well.",
                  "{p} smiled and went to bed.", "It had been a good day for {p}.")

# Question phrasings: the first N_TUNE per relation form the ``tune`` split (and the grounded
# reading examples); the rest form ``heldout`` and are never used in training or tuning.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "home": ("Where does {e} live?", "What is the home town of {e}?", "In which town does {e} live?",
             "Which town is {e} from?", "Where did {e} grow up?", "Name the town where {e} lives.",
             "{e} lives in which town?", "Tell me the town {e} calls home."),
    "job": ("What does {e} do for a living?", "What is the job of {e}?", "What is {e}'s job?",
            "What work does {e} do?", "What is the trade of {e}?", "Name the job of {e}.",
            "{e} works as what?", "How does {e} earn a living?"),
    "pet": ("What pet does {e} have?", "What is the pet of {e}?", "Which animal does {e} keep?",
            "What animal lives with {e}?", "What kind of pet does {e} own?", "Name the pet of {e}.",
            "{e} has what kind of pet?", "Which animal is {e}'s pet?"),
    "colour": ("What is the favourite colour of {e}?", "Which colour does {e} like best?",
               "What colour does {e} love?", "What is {e}'s favourite colour?",
               "Which colour is the favourite of {e}?", "Name the favourite colour of {e}.",
               "{e} likes which colour best?", "Tell me the colour {e} prefers."),
    "country": ("In which country is {e}?", "What country is {e} in?", "Where does the town of {e} lie?",
                "Which country does {e} belong to?", "What is the country of {e}?",
                "Name the country of {e}.", "{e} is a town in which country?",
                "Tell me the country that {e} is part of."),
    "river": ("Which river flows through {e}?", "What is the river of {e}?", "On which river is {e}?",
              "What river runs through {e}?", "Which river does {e} stand on?", "Name the river of {e}.",
              "{e} lies on which river?", "Tell me the river that passes {e}."),
    "dish": ("What is the famous dish of {e}?", "What food is {e} known for?",
             "What do people in {e} love to eat?", "Which dish is {e} famous for?",
             "What is the best-known food of {e}?", "Name the famous dish of {e}.",
             "{e} is famous for which dish?", "Tell me the dish everyone eats in {e}."),
    "material": ("What is {e} made of?", "What material is {e} made from?", "From what was {e} made?",
                 "Which material was used for {e}?", "What is the material of {e}?",
                 "Name the material of {e}.", "{e} is made of what?", "Tell me what {e} is made of."),
    "kept_in": ("Where is {e} kept?", "In which town is {e} kept?", "Where can you see {e}?",
                "Which town holds {e}?", "What is the home of {e}?", "Name the town that keeps {e}.",
                "{e} is kept in which town?", "Tell me where {e} can be seen."),
}
N_TUNE = 6

SYSTEM_PROMPT = "Answer with one word."

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
           "kr", "tr", "th", "sh", "st", "ch", "fl", "sk")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "ai")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "rn", "nd", "st", "k")


@dataclass
class Entity:
    """A person, town or object and its facts (relation -> one-word answer)."""

    name: str
    kind: str
    facts: dict[str, str]
    doc_only: bool = False  # True for RAG entities: they appear only in ``documents``


@dataclass
class World:
    """A generated world: entities and everything derived from them (see module doc)."""

    seed: int
    size: str
    entities: list[Entity]
    texts: list[str]
    qa: list[dict[str, Any]]
    documents: list[dict[str, str]]
    eval_text: str
    grounded: list[dict[str, str]]
    stories: list[str]

    def split(self, name: str) -> list[dict[str, Any]]:
        """The QA records of one split: ``tune``, ``heldout`` or ``rag``; ``tune:people`` (or
        ``heldout:people,places``) keeps the questions of those relation groups only (one skill)."""
        name, _, wanted = name.partition(":")
        groups = {g.strip() for g in wanted.split(",") if g.strip()}
        unknown = groups - set(RELATION_GROUP.values())
        if unknown:
            from llmlab.errors import ConfigError

            raise ConfigError(f"Unknown relation group '{sorted(unknown)[0]}' in the split '{name}:{wanted}'.",
                              f"Groups: {', '.join(sorted(set(RELATION_GROUP.values())))}.")
        return [q for q in self.qa if q["split"] == name and (not groups or RELATION_GROUP[q["relation"]] in groups)]

    def facts(self, *, doc_only: bool | None = None) -> list[tuple[str, str, str]]:
        """All (entity, relation, answer) triples, optionally only (non-)document-only ones."""
        return [(e.name, r, a) for e in self.entities for r, a in e.facts.items()
                if doc_only is None or e.doc_only == doc_only]

    def stats(self) -> dict[str, Any]:
        """Counts that describe the world (for the app and the docs)."""
        kinds: dict[str, int] = {}
        for e in self.entities:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        return {
            "seed": self.seed, "size": self.size, "entities": kinds,
            "facts": len(self.facts(doc_only=False)), "rag_facts": len(self.facts(doc_only=True)),
            "texts": len(self.texts), "words": sum(len(t.split()) for t in self.texts),
            "qa": {s: len(self.split(s)) for s in ("tune", "heldout", "rag")},
            "documents": len(self.documents), "grounded": len(self.grounded),
            "stories": len(self.stories), "eval_words": len(self.eval_text.split()),
        }

    def save(self, directory: str | Path) -> Path:
        """Write the world as JSONL/text files under ``directory`` (created)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write_jsonl(d / "texts.jsonl", [{"text": t} for t in self.texts])
        _write_jsonl(d / "stories.jsonl", [{"text": t} for t in self.stories])
        _write_jsonl(d / "qa.jsonl", self.qa)
        _write_jsonl(d / "documents.jsonl", self.documents)
        _write_jsonl(d / "grounded.jsonl", self.grounded)
        _write_jsonl(d / "entities.jsonl", [vars(e) for e in self.entities])
        (d / "eval.txt").write_text(self.eval_text)
        meta = {"seed": self.seed, "size": self.size, "relation_groups": RELATION_GROUP,
                "system_prompt": SYSTEM_PROMPT, "stats": self.stats()}
        (d / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> World:
        """Read a world written by ``save``."""
        d = Path(directory)
        if not (d / "meta.json").is_file():
            from llmlab.errors import NotFoundError

            raise NotFoundError(f"No saved world in {d} (meta.json is missing).")
        meta = json.loads((d / "meta.json").read_text())
        return cls(
            seed=meta["seed"], size=meta["size"],
            entities=[Entity(**e) for e in _read_jsonl(d / "entities.jsonl")],
            texts=[r["text"] for r in _read_jsonl(d / "texts.jsonl")],
            qa=_read_jsonl(d / "qa.jsonl"), documents=_read_jsonl(d / "documents.jsonl"),
            eval_text=(d / "eval.txt").read_text(), grounded=_read_jsonl(d / "grounded.jsonl"),
            stories=[r["text"] for r in _read_jsonl(d / "stories.jsonl")],
        )

    def unseen_fact_text(self) -> str:
        """Every ordinary fact in the statement phrasing never trained on (one per line)."""
        return "\n".join(_sentence_start(STATEMENTS[r][N_TEXT_PHRASINGS].format(e=e, a=a))
                         for e, r, a in self.facts(doc_only=False)) + "\n"


def context_prompt(context: str, question: str) -> str:
    """The user message for a question asked about a given passage (grounded QA and RAG)."""
    return f"Context: {context}\n\nQuestion: {question}"


# A question any instruct model can answer, for a model without a demo world.
GENERAL_QUESTION = "What is the capital of France?"


def example_question(store: Store, artifact: Artifact) -> str:
    """A question the model can answer, for examples and snippets: its demo world's first held-out
    question, else ``GENERAL_QUESTION``."""
    w = find_world(store, artifact)
    return w.split("heldout")[0]["question"] if w is not None else GENERAL_QUESTION


def chat_messages(question: str, answer: str | None = None,
                  context: str | None = None) -> list[dict[str, str]]:
    """Chat messages for a question (with an optional context passage and answer)."""
    user = context_prompt(context, question) if context else question
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def generate(seed: int = 0, size: Size = "small") -> World:
    """Generate the world for ``seed`` and ``size`` ("micro", "small" or "large")."""
    if size not in SIZES:
        from llmlab.errors import ConfigError

        raise ConfigError(f"Unknown world size '{size}'.", f"Use one of: {', '.join(SIZES)}.")
    n = SIZES[size]
    rng = random.Random(f"llmlab-world-{seed}-{size}")
    names = _NameMaker(rng)
    countries = [names.word(3) for _ in range(n["countries"])]
    towns = [_town(names.word(2), rng, countries, names) for _ in range(n["towns"])]
    town_names = [t.name for t in towns]
    people = [_person(names, rng, town_names) for _ in range(n["people"])]
    objects = [_object(names, rng, town_names) for _ in range(n["objects"])]
    rag_towns = [_town(names.word(2), rng, countries, names, doc_only=True) for _ in range(n["rag_towns"])]
    rag_people = [_person(names, rng, town_names, doc_only=True) for _ in range(n["rag_people"])]
    entities = towns + people + objects + rag_towns + rag_people

    documents = [{"id": f"doc-{i:04d}", "title": e.name, "text": profile(e)} for i, e in enumerate(entities)]
    doc_of = {d["title"]: d["id"] for d in documents}
    ordinary = [e for e in entities if not e.doc_only]
    texts = [_sentence_start(STATEMENTS[r][k].format(e=e.name, a=a))
             for e in ordinary for r, a in e.facts.items() for k in range(N_TEXT_PHRASINGS)]
    texts += [profile(e) for e in ordinary]
    rng.shuffle(texts)
    people, things = [e for e in ordinary if e.kind == "person"], [e for e in ordinary if e.kind == "object"]
    town_of = {t.name: t for t in towns}
    stories = [_story(rng, people, things, town_of) for _ in range(n["stories"])]
    # Held-out stories come from their own random stream, so adding training stories never
    # changes them; any that happen to equal a training story are dropped.
    eval_rng = random.Random(f"llmlab-eval-{seed}-{size}")
    seen = set(stories)
    held_out = [t for t in (_story(eval_rng, people, things, town_of) for _ in range(n["eval_stories"]))
                if t not in seen]
    return World(
        seed=seed, size=size, entities=entities, texts=texts,
        qa=_questions(entities, doc_of), documents=documents,
        eval_text="".join(t + "\n" for t in held_out),
        grounded=_grounded(n["grounded"], rng, names, countries, town_names),
        stories=stories,
    )


def _story(rng: random.Random, people: list[Entity], things: list[Entity], town_of: dict[str, Entity]) -> str:
    """One short story from the grammar, true to the world's facts."""
    p, q = rng.sample(people, 2)
    home = town_of[p.facts["home"]]
    o = rng.choice(things)
    slots = {"p": p.name, "h": home.name, "j": p.facts["job"], "t": p.facts["pet"], "c": p.facts["colour"],
             "r": home.facts["river"], "d": home.facts["dish"], "q": q.name, "o": o.name,
             "O": _sentence_start(o.name), "m": o.facts["material"], "k": o.facts["kept_in"]}
    opener = rng.choice([m for m in STORY_MIDDLES if m.startswith("{p}")])
    middle = rng.sample([m for m in STORY_MIDDLES if m != opener], rng.randint(2, 4))
    sentences = [f"{rng.choice(STORY_OPENINGS)}, {opener.format(**slots)}"]
    sentences += [m.format(**slots) for m in middle] + [rng.choice(STORY_CLOSINGS).format(**slots)]
    return " ".join(sentences)


def profile(e: Entity) -> str:
    """A short profile document of an entity: its facts in the first statement phrasings."""
    sentences = [_sentence_start(STATEMENTS[r][i % N_TEXT_PHRASINGS].format(e=e.name, a=a))
                 for i, (r, a) in enumerate(e.facts.items())]
    return " ".join(sentences)


class _NameMaker:
    """Pronounceable made-up words from syllables, never repeated within one world."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = {w.lower() for vocab in (JOBS, PETS, COLOURS, DISHES, MATERIALS) for w in vocab}

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            w += self.rng.choice(_CODAS)
            if w not in self.used and 4 <= len(w) <= 8:
                self.used.add(w)
                return w.capitalize()

    def person(self) -> str:
        return f"{self.word(2)} {self.word(2)}"


def _person(names: _NameMaker, rng: random.Random, towns: list[str], doc_only: bool = False) -> Entity:
    facts = {"home": rng.choice(towns), "job": rng.choice(JOBS), "pet": rng.choice(PETS),
             "colour": rng.choice(COLOURS)}
    return Entity(names.person(), "person", facts, doc_only)


def _town(name: str, rng: random.Random, countries: list[str], names: _NameMaker,
          doc_only: bool = False) -> Entity:
    facts = {"country": rng.choice(countries), "river": names.word(2), "dish": rng.choice(DISHES)}
    return Entity(name, "town", facts, doc_only)


def _object(names: _NameMaker, rng: random.Random, towns: list[str]) -> Entity:
    name = f"the {names.word(2)} {rng.choice(OBJECT_NOUNS)}"
    return Entity(name, "object", {"material": rng.choice(MATERIALS), "kept_in": rng.choice(towns)})


def _questions(entities: list[Entity], doc_of: dict[str, str]) -> list[dict[str, Any]]:
    """tune/heldout questions for ordinary entities, rag questions for document-only ones."""
    out: list[dict[str, Any]] = []
    for e in entities:
        for r, a in e.facts.items():
            if e.doc_only:  # one tune-style phrasing per fact, rotating through them
                k = len(out) % N_TUNE
                out.append(_qa(len(out), e, r, a, "rag", k, gold_doc=doc_of[e.name]))
                continue
            for k in range(len(QUESTIONS[r])):
                out.append(_qa(len(out), e, r, a, "tune" if k < N_TUNE else "heldout", k))
    return out


def _qa(i: int, e: Entity, relation: str, answer: str, split: str, k: int, **extra: str) -> dict[str, Any]:
    question = _sentence_start(QUESTIONS[relation][k].format(e=e.name))
    return {"id": f"q{i:05d}", "question": question, "answer": answer, "split": split,
            "entity": e.name, "relation": relation, "phrasing": k, **extra}


def _sentence_start(s: str) -> str:
    return s[0].upper() + s[1:]


def _grounded(count: int, rng: random.Random, names: _NameMaker, countries: list[str],
              towns: list[str]) -> list[dict[str, str]]:
    """Reading examples about freshly drawn entities: the answer is only in the context."""
    out = []
    for _ in range(count):
        if rng.random() < 0.7:
            e = _person(names, rng, towns)
        else:
            e = _town(names.word(2), rng, countries, names)
        relation = rng.choice(list(e.facts))
        question = _sentence_start(rng.choice(QUESTIONS[relation][:N_TUNE]).format(e=e.name))
        out.append({"context": profile(e), "question": question,
                    "answer": e.facts[relation], "relation": relation})
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def find_world(store: Store, artifact: Artifact) -> World | None:
    """The world an artifact was trained on: its own ``world/`` folder or its nearest ancestor's."""
    todo, seen = [artifact.name], set()
    while todo:
        name = todo.pop(0)
        if name in seen or not store.exists(name):
            continue
        seen.add(name)
        art = store.get(name)
        if (art.path / "world" / "meta.json").is_file():
            return World.load(art.path / "world")
        todo += [p.name for p in art.manifest.parents]
    return None
