"""Answer metrics of the SQuAD evaluation script: ``normalize_answer`` (lower case, no punctuation, no
articles a/an/the, single spaces), ``exact_match`` and ``f1`` (token overlap), each the best over the gold
answers. One copy for every station that compares an answer with gold ones: the RAG station's metrics,
the evaluation suites and judge, and the Tune station's GRPO rewards. Pure functions, no imports of llmlab.

```python
from llmlab.answers import exact_match, f1
exact_match("The Paris.", ["paris"])   # 1.0
f1("the red house", "red barn")        # 0.5
```
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _as_list(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in _as_list(gold)))


def f1(prediction: str, gold: str | Sequence[str]) -> float:
    """Best token-overlap F1 between the prediction and any gold answer."""
    best = 0.0
    p_tokens = normalize_answer(prediction).split()
    for g in _as_list(gold):
        g_tokens = normalize_answer(g).split()
        if not p_tokens or not g_tokens:
            best = max(best, float(p_tokens == g_tokens))
            continue
        common = sum((Counter(p_tokens) & Counter(g_tokens)).values())
        if common:
            precision, recall = common / len(p_tokens), common / len(g_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
