"""Rewards for GRPO (``method: grpo``): the built-in ones, a user's own function from a file, and the calls
that score a step's completions safely.

```python
from llmlab.tune.rewards import load_rewards
rewards = load_rewards({"exact_match": 1.0, "length": 0.2, "my_rewards.py:brevity": 0.5})
```

A reward is a function ``fn(completion: str, record: dict) -> float``: ``completion`` is the model's sampled
answer (special tokens removed), ``record`` the data record it answered (``question``, ``answer`` or
``answers``, ``context``, ``schema``, ...). The total reward of a completion is the weighted sum.

Built in (``BUILTIN``):

- ``exact_match``: 1.0 when the answer equals a gold answer after SQuAD normalisation (``llmlab.answers``);
- ``f1``: token-overlap F1 against the best gold answer (``llmlab.answers``);
- ``short``: 1.0 for an answer of one to ``SHORT_WORDS`` words, else 0.0 (a format reward);
- ``json``: 1.0 when the answer parses as JSON and, if the record has a ``schema`` (a JSON schema), is valid
  under it, else 0.0;
- ``length``: a penalty, -0.1 for each word after the first, down to -1.0.

A user's reward is named ``path/to/file.py:function``; the file is imported only because the user wrote its
path in a recipe or flag (``load_user_reward``), and a missing file or function is a ``ConfigError`` before
training starts. While training, a reward that raises, returns something other than a finite number or takes
longer than the timeout stops the run with a ``RewardError`` naming the reward and the step
(``score_completions``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import numbers
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError, LlmlabError
from llmlab.answers import exact_match, f1
from llmlab.scoring import normalize_words

RewardFn = Callable[[str, dict[str, Any]], float]
SHORT_WORDS = 5  # "short" answers: what a factual question (world, SQuAD) wants
GOLD_FIELDS = ("answer", "answers", "output", "completion")


class RewardError(LlmlabError):
    """A reward function failed during training (raised, returned a non-number, or timed out)."""


def gold_answers(record: Mapping[str, Any]) -> list[str]:
    """The gold answers of a record: ``answer``, ``answers`` (a list, or SQuAD's ``{"text": [...]}``),
    ``output`` or ``completion``, else the last turn of ``messages`` when it is the assistant's (chat
    records such as ``reading:``'s); [] when it has none."""
    for key in GOLD_FIELDS:
        value = record.get(key)
        if isinstance(value, Mapping):  # SQuAD: {"text": [...], "answer_start": [...]}
            value = value.get("text")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            return [str(v) for v in value]
    turns = record.get("messages")
    if isinstance(turns, list) and turns and isinstance(turns[-1], Mapping) and turns[-1].get("role") == "assistant":
        return [str(turns[-1].get("content", ""))]
    return []


def _gold(record: dict[str, Any]) -> list[str]:
    gold = gold_answers(record)
    if not gold:  # checked for every record before training (``needs_gold``): this is a programming error
        raise ValueError("the record has no gold answer")
    return gold


def reward_exact_match(completion: str, record: dict[str, Any]) -> float:
    """1.0 when the answer equals a gold answer (SQuAD normalisation: case, punctuation, articles), else 0.0."""
    return exact_match(completion, _gold(record))


def reward_f1(completion: str, record: dict[str, Any]) -> float:
    """Token-overlap F1 between the answer and the best gold answer (0.0 to 1.0)."""
    return f1(completion, _gold(record))


def reward_short(completion: str, record: dict[str, Any]) -> float:
    """1.0 for an answer of one to SHORT_WORDS words, else 0.0."""
    return float(1 <= len(normalize_words(completion)) <= SHORT_WORDS)


def reward_json(completion: str, record: dict[str, Any]) -> float:
    """1.0 when the answer is JSON (valid under the record's ``schema``, when it has one), else 0.0."""
    try:
        value = json.loads(completion)
    except ValueError:
        return 0.0
    schema = record.get("schema")
    if not schema:
        return 1.0
    import jsonschema

    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def reward_length(completion: str, record: dict[str, Any]) -> float:
    """A length penalty: -0.1 for each word after the first, down to -1.0."""
    return -min(1.0, max(0, len(completion.split()) - 1) / 10)


BUILTIN: dict[str, RewardFn] = {"exact_match": reward_exact_match, "f1": reward_f1, "short": reward_short,
                                "json": reward_json, "length": reward_length}
NEEDS_GOLD = ("exact_match", "f1")


@dataclass
class Reward:
    """One term of the reward: its name as the user wrote it, its weight, the function and its source code
    (what the app shows before a run)."""

    name: str
    weight: float
    fn: RewardFn
    source: str
    user: bool  # a user's function (run with a timeout), not a built-in

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "user": self.user,
                "doc": inspect.getdoc(self.fn) or "", "source": self.source}


def is_user_reward(name: str) -> bool:
    """True for ``path/to/file.py:function``."""
    path, sep, fn = name.rpartition(":")
    return bool(sep and fn and path.endswith(".py"))


def check_reward_names(rewards: Mapping[str, float]) -> None:
    """Each name is built in or ``file.py:function``, and at least one weight is not zero (a ValueError
    for pydantic's message otherwise)."""
    if not rewards:
        raise ValueError("rewards is empty: give at least one, e.g. {exact_match: 1.0}")
    for name in rewards:
        if name not in BUILTIN and not is_user_reward(name):
            raise ValueError(f"unknown reward '{name}': use one of {', '.join(BUILTIN)}, or your own "
                             "function as 'path/to/file.py:function'")
    if not any(rewards.values()):
        raise ValueError("every reward has weight 0: nothing to learn from")


def load_user_reward(spec: str) -> tuple[RewardFn, str]:
    """The function ``spec`` (``path/to/file.py:function``) names, and the file's text. The path is the one
    the user wrote; a missing or broken file, or a missing function, is a ConfigError."""
    path_text, _, fn_name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"The reward file '{path_text}' does not exist (reward '{spec}').",
                          f"Give the path of a Python file that defines {fn_name}(completion, record) -> float, "
                          "relative to where llmlab runs, or an absolute path.")
    source = path.read_text()
    name = "llmlab_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"The reward file '{path_text}' failed to import: {type(e).__name__}: {e}.",
                          "Fix the file; it must import without side effects.") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise ConfigError(f"The reward file '{path_text}' has no function '{fn_name}'.",
                          f"Functions in it: {', '.join(found) or 'none'}.")
    return fn, source


def load_rewards(rewards: Mapping[str, float]) -> list[Reward]:
    """The reward terms of a config (user files imported here, so every error comes before training)."""
    out = []
    for name, weight in rewards.items():
        if is_user_reward(name):
            fn, source = load_user_reward(name)
            out.append(Reward(name, float(weight), fn, source, user=True))
        else:
            fn = BUILTIN[name]
            out.append(Reward(name, float(weight), fn, inspect.getsource(fn), user=False))
    return out


def needs_gold(rewards: list[Reward], records: list[dict[str, Any]]) -> None:
    """A ConfigError when a reward compares with gold answers and a record has none."""
    wanted = [r.name for r in rewards if r.name in NEEDS_GOLD]
    if not wanted:
        return
    for i, rec in enumerate(records, 1):
        if not gold_answers(rec):
            raise ConfigError(f"Record {i} has no gold answer (fields {', '.join(GOLD_FIELDS)}), but the reward "
                              f"'{wanted[0]}' compares answers with it.",
                              "Give records with answers, or use rewards that need none (short, json, length, "
                              "or your own function).")


def _call_with_timeout(fn: RewardFn, completion: str, record: dict[str, Any], timeout: float) -> Any:
    """``fn(completion, record)`` in a daemon thread: a call that does not return within ``timeout`` seconds
    raises TimeoutError (the thread is left behind; the run stops anyway)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(completion, dict(record))
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name="llmlab-reward")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"took longer than {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def score_completions(rewards: list[Reward], completions: list[str], records: list[dict[str, Any]], *,
                      step: int, timeout: float) -> tuple[list[float], dict[str, list[float]]]:
    """The weighted total reward of each completion and each term's values, by name. A failing reward
    raises RewardError naming the reward, the step and the completion."""
    terms: dict[str, list[float]] = {}
    for r in rewards:
        values = []
        for completion, record in zip(completions, records):
            where = f"The reward '{r.name}' at step {step} (answer {completion[:60]!r})"
            try:
                value = (_call_with_timeout(r.fn, completion, record, timeout) if r.user
                         else r.fn(completion, record))
            except TimeoutError as e:
                raise RewardError(f"{where} {e}.", "Make it faster, or raise reward_timeout.") from None
            except Exception as e:
                raise RewardError(f"{where} raised {type(e).__name__}: {e}.",
                                  "Fix the function; the checkpoint of the last saved step is kept, so the "
                                  "run resumes from it.") from e
            if not isinstance(value, numbers.Real) or not math.isfinite(value):  # bools and numpy numbers pass
                raise RewardError(f"{where} returned {value!r}, not a finite number.",
                                  "A reward must return a number (int or float).")
            values.append(float(value))
        terms[r.name] = values
    totals = [sum(r.weight * terms[r.name][i] for r in rewards) for i in range(len(completions))]
    return totals, terms
