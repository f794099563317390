"""LLM-as-judge: rubric grading of one answer, pairwise comparison with position swapping, and
the judge's agreement with exact match as Cohen's kappa.

```python
from llmlab.evaluate.judge import ModelJudge, EndpointJudge, grade, pairwise, judge_set
with load("demo-lora") as m:
    judge = ModelJudge(m)                                   # any model llmlab runs (constrained=True: small ones)
    grade(judge, "Capital of France?", "Paris", gold="Paris")  # Grade(score=5, reason=..., prompt=...)
judge = EndpointJudge("http://127.0.0.1:8000/v1", model="qwen")  # or an OpenAI-compatible endpoint
check(judge, "Capital of France?", "Paris", gold="Paris")  # Verdict(passed=True, ...): a yes/no verdict
trust_warning(0.12, 100)  # "the judge agrees with exact match at kappa 0.12 (n=100): too low to trust its scores"
```

Every verdict keeps the judge's name, the prompt sent, the raw reply, the parsed score and reason.
A judge that is down or answers without a parsable score is retried (``retries``), then the score
is ``None`` with the error: never guessed. ``pairwise`` asks twice with the answers swapped and
counts a win only when both orders agree (otherwise a tie), which cancels the judge's position
bias. ``judge_set`` grades answers that have gold answers and reports Cohen's kappa between "the
judge passes it" and exact match: plain agreement looks high when most answers are wrong, kappa
does not. ``check`` asks for a plain yes/no verdict instead of a grade (``judge_set(mode="check")``),
and either may show the judge the source ``passage``. A judge whose kappa is below ``TRUST_KAPPA``
(0.4) is not to be trusted: ``trust_warning`` says so in the words the app's pages show
(``llmlab.evaluate.agreement`` measures a judge on SQuAD and keeps the result per judge).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.runtime import Model

TRUST_KAPPA = 0.4  # below this Cohen's kappa against exact match, a judge's scores are not to be trusted
RUBRIC = ("Score 5 if the answer is correct and complete, 4 if correct with minor issues, 3 if partly "
          "correct, 2 if mostly wrong, 1 if wrong or off-topic.")
GRADE_PROMPT = (
    "You are grading an answer to a question.\nRubric: {rubric}\n\nQuestion: {question}\n{gold}"
    "Answer: {answer}\n\nReply with two lines:\nscore: N (1 to 5)\nreason: one sentence"
)
CHECK_PROMPT = (
    "You are checking an answer to a question.\n\n{passage}Question: {question}\n{gold}Answer: {answer}\n\n"
    "Is the answer correct? Reply with two lines:\nverdict: yes or no\nreason: one sentence"
)
PAIR_PROMPT = (
    "Which answer to the question is better?\n\nQuestion: {question}\n{gold}"
    "Answer A: {a}\nAnswer B: {b}\n\nReply with two lines:\nwinner: A, B or tie\nreason: one sentence"
)
_SCORE = re.compile(r"score\s*[:=]\s*([1-5])\b", re.I)
_VERDICT = re.compile(r"verdict\s*[:=]\s*(yes|no)\b", re.I)
_WINNER = re.compile(r"winner\s*[:=]\s*(A|B|tie)\b", re.I)
_REASON = re.compile(r"reason\s*[:=]\s*(.+)", re.I)


class JudgeUnavailable(Exception):
    """The judge could not be asked (endpoint down, HTTP error, malformed response)."""


class Judge(Protocol):
    name: str

    def ask(self, prompt: str) -> str: ...


class ModelJudge:
    """A model llmlab runs (``llmlab.runtime.load``) as the judge; greedy decoding.

    ``constrained=True`` is for small models that never write the reply format: the verdict is the
    likeliest of the allowed answers (``1``..``5`` after "score: ", ``yes``/``no`` after "verdict: ",
    ``A``/``B``/``tie`` after "winner: ") under the model, read from its log-probabilities instead of
    generated (one forward pass when every answer is one token); the name says so (``...+constrained``)."""

    def __init__(self, model: Model, *, max_tokens: int = 48, name: str | None = None, constrained: bool = False):
        self.model = model
        self.max_tokens = max_tokens
        self.constrained = constrained
        art = getattr(model, "artifact", None)
        label = f"llmlab:{art.name}" if art is not None else f"llmlab:{model.path}"
        self.name = name or (label + ("+constrained" if constrained else ""))

    def ask(self, prompt: str) -> str:
        from llmlab.runtime import SamplingParams

        messages = [{"role": "user", "content": prompt}]
        if not self.constrained:
            return self.model.chat(messages, SamplingParams.greedy(self.max_tokens))
        field, options = next(((f, o) for f, o in CONSTRAINED.items() if f"{f}:" in prompt), ("score", list("12345")))
        head = self.model.apply_chat_template(messages) + f"{field}: "
        pick = options[self.pick(head, options)]
        return f"{field}: {pick}\nreason: the likeliest of {', '.join(options)} under {self.name}"

    def pick(self, head: str, options: Sequence[str]) -> int:
        """The index of the likeliest option after ``head`` (one pass when each option is one token)."""
        import numpy as np

        from llmlab.evaluate.suites import choice_pick

        ids = self.model.tokenize(head, add_special=False)
        tails = [self.model.tokenize(o, add_special=False) for o in options]
        if any(len(t) != 1 for t in tails) or len(ids) >= self.model.n_ctx:
            return choice_pick(self.model, head, options)
        with self.model.decoding(ids) as decoder:  # the next token's logits only: one pass, no full log-softmax
            logits = np.asarray(decoder.logits, dtype=np.float64)
        return int(np.argmax([logits[t[0]] for t in tails]))


# The reply fields a constrained ModelJudge fills, and the answers allowed in each.
CONSTRAINED: dict[str, list[str]] = {"winner": ["A", "B", "tie"], "verdict": ["yes", "no"], "score": list("12345")}


class EndpointJudge:
    """An OpenAI-compatible chat completions endpoint (``base_url`` ends in ``/v1``)."""

    def __init__(self, base_url: str, *, model: str = "judge", api_key: str | None = None, timeout: float = 30.0,
                 max_tokens: int = 64):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"Judge endpoint '{base_url}' is not an http(s) URL.",
                              "Give the server's base URL, e.g. http://127.0.0.1:8000/v1.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.max_tokens = model, api_key, timeout, max_tokens
        self.name = f"endpoint:{model}@{base_url}"

    def ask(self, prompt: str) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": self.max_tokens}
        try:
            r = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout)
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            raise JudgeUnavailable(f"{type(e).__name__}: {e}") from None


@dataclass
class Verdict:
    """One judgement: what was asked, what came back, and the parsed value (None when missing)."""

    judge: str
    prompt: str
    reply: str | None
    score: int | None = None
    winner: str | None = None  # pairwise: "a", "b" or "tie"
    passed: bool | None = None  # check: the yes/no verdict
    reason: str | None = None
    error: str | None = None
    attempts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ask(judge: Judge, prompt: str, parse: Any, retries: int, wait: float) -> Verdict:
    """Ask until ``parse(reply)`` gives a value or ``retries`` run out; the value stays None then."""
    v = Verdict(judge=judge.name, prompt=prompt, reply=None)
    for attempt in range(1, retries + 2):
        v.attempts = attempt
        try:
            v.reply = judge.ask(prompt)
        except JudgeUnavailable as e:
            v.error = f"judge unavailable: {e}"
        else:
            value = parse(v.reply)
            if value is not None:
                v.error = None
                m = _REASON.search(v.reply)
                v.reason = m.group(1).strip() if m else None
                return _set(v, value)
            v.error = f"no verdict in the judge's reply: {v.reply[:120]!r}"
        if attempt <= retries and wait:
            time.sleep(wait * attempt)
    return v


def _set(v: Verdict, value: Any) -> Verdict:
    if isinstance(value, bool):
        v.passed = value
    elif isinstance(value, int):
        v.score = value
    else:
        v.winner = value
    return v


def _gold_line(gold: str | Sequence[str] | None) -> str:
    if gold is not None and not isinstance(gold, str):
        gold = " / ".join(gold)
    return f"Reference answer: {gold}\n" if gold else ""


def _passage_line(passage: str | None) -> str:
    return f"Passage: {passage}\n\n" if passage else ""


def grade(judge: Judge, question: str, answer: str, *, rubric: str = RUBRIC, gold: str | Sequence[str] | None = None,
          passage: str | None = None, retries: int = 2, wait: float = 0.0) -> Verdict:
    """A 1-5 score with a reason under ``rubric`` (``score`` None when the judge gave none)."""
    prompt = GRADE_PROMPT.format(rubric=rubric, question=_passage_line(passage) + question, gold=_gold_line(gold),
                                 answer=answer)
    return _ask(judge, prompt, lambda r: int(m.group(1)) if (m := _SCORE.search(r)) else None, retries, wait)


def check(judge: Judge, question: str, answer: str, *, gold: str | Sequence[str] | None = None,
          passage: str | None = None, template: str = CHECK_PROMPT, retries: int = 2, wait: float = 0.0) -> Verdict:
    """A yes/no verdict on whether ``answer`` is correct (``passed`` None when the judge gave none);
    ``template`` has the fields of ``CHECK_PROMPT`` and asks for "verdict: yes or no"."""
    prompt = template.format(passage=_passage_line(passage), question=question, gold=_gold_line(gold),
                                 answer=answer)
    return _ask(judge, prompt, lambda r: m.group(1).lower() == "yes" if (m := _VERDICT.search(r)) else None,
                retries, wait)


def trust_warning(kappa: float | None, n: int) -> str | None:
    """What a page says about a judge whose agreement with exact match is ``kappa`` over ``n`` answers:
    None when it can be trusted (kappa >= TRUST_KAPPA), else one plain sentence."""
    if kappa is None:
        return (f"the judge's agreement with exact match is undefined (n={n}: a rater gave one verdict to every "
                "answer): do not trust its scores")
    if kappa < TRUST_KAPPA:
        return (f"the judge agrees with exact match at kappa {kappa:.2f} (n={n}): too low to trust its scores "
                f"(trusted from {TRUST_KAPPA})")
    return None


def pairwise(judge: Judge, question: str, a: str, b: str, *, gold: str | None = None, retries: int = 2,
             wait: float = 0.0) -> dict[str, Any]:
    """Compare answers ``a`` and ``b`` in both orders; ``winner`` is "a"/"b" only when both orders agree,
    "tie" when they disagree or both say tie, None when either order got no verdict."""
    def parse(reply: str) -> str | None:
        m = _WINNER.search(reply)
        return m.group(1).lower() if m else None

    first = _ask(judge, PAIR_PROMPT.format(question=question, gold=_gold_line(gold), a=a, b=b), parse, retries, wait)
    second = _ask(judge, PAIR_PROMPT.format(question=question, gold=_gold_line(gold), a=b, b=a), parse, retries, wait)
    winner, consistent = None, None
    if first.winner is not None and second.winner is not None:
        consistent = first.winner == {"a": "b", "b": "a", "tie": "tie"}[second.winner]
        winner = first.winner if consistent else "tie"
    return {"judge": judge.name, "winner": winner, "position_consistent": consistent,
            "verdicts": [first.as_dict(), second.as_dict()]}


def cohen_kappa(x: Sequence[bool], y: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters (None when undefined: no items, or both raters constant)."""
    if len(x) != len(y):
        raise ConfigError(f"Cohen's kappa needs paired ratings, got {len(x)} and {len(y)}.")
    n = len(x)
    if not n:
        return None
    po = sum(a == b for a, b in zip(x, y)) / n
    px, py = sum(x) / n, sum(y) / n
    pe = px * py + (1 - px) * (1 - py)
    if pe == 1:
        return None
    return (po - pe) / (1 - pe)


JUDGE_MODES = ("grade", "check")


def judge_set(judge: Judge, records: Sequence[Mapping[str, Any]], *, rubric: str = RUBRIC, pass_score: int = 4,
              mode: str = "grade", show_gold: bool = True, show_passage: bool = False,
              check_prompt: str = CHECK_PROMPT, retries: int = 2,
              wait: float = 0.0, progress: Reporter | None = None) -> dict[str, Any]:
    """Judge ``records`` ({question, answer, gold?, passage?}) by a 1-5 ``grade`` (passes at
    ``pass_score``) or a yes/no ``check``; with gold answers, report Cohen's kappa of "the judge passes
    it" against exact match (items without a verdict are left out of it). ``show_gold`` and
    ``show_passage`` say whether the judge sees the gold answer and the record's passage."""
    from llmlab.rag.metrics import exact_match

    if mode not in JUDGE_MODES:
        raise ConfigError(f"Unknown judge mode '{mode}'.", f"Use one of: {', '.join(JUDGE_MODES)}.")
    verdicts, judged, exact = [], [], []
    for i, rec in enumerate(records):
        for f in ("question", "answer"):
            if f not in rec:
                raise ConfigError(f"Judge record {i + 1} has no '{f}' field.", "Each needs question and answer.")
        gold = rec.get("gold")
        shown = {"gold": gold if show_gold else None, "passage": rec.get("passage") if show_passage else None}
        if mode == "grade":
            v = grade(judge, rec["question"], rec["answer"], rubric=rubric, retries=retries, wait=wait, **shown)
            passed = None if v.score is None else v.score >= pass_score
        else:
            v = check(judge, rec["question"], rec["answer"], template=check_prompt, retries=retries, wait=wait,
                      **shown)
            passed = v.passed
        item = {**v.as_dict(), "question": rec["question"], "answer": rec["answer"], "gold": gold, "passed": passed}
        if gold is not None:
            item["exact_match"] = bool(exact_match(rec["answer"], gold))
            if passed is not None:
                judged.append(passed)
                exact.append(item["exact_match"])
        verdicts.append(item)
        emit(progress, "progress", task="judge", done=i + 1, total=len(records))
    scores = [v["score"] for v in verdicts if v["score"] is not None]
    n_verdicts = sum(v["passed"] is not None for v in verdicts)
    return {"judge": judge.name, "mode": mode, "rubric": rubric if mode == "grade" else None, "n": len(records),
            "n_scored": n_verdicts, "n_missing": len(records) - n_verdicts,
            "mean_score": sum(scores) / len(scores) if scores else None,
            "pass_rate": (sum(judged) / len(judged)) if judged else None,
            "kappa_vs_exact_match": cohen_kappa(judged, exact) if judged else None,
            "agreement_vs_exact_match": (sum(a == b for a, b in zip(judged, exact)) / len(judged)) if judged else None,
            "pass_score": pass_score if mode == "grade" else None, "verdicts": verdicts}
