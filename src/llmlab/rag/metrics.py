"""Pure ranking and answer metrics (no I/O, no heavy imports).

```python
from llmlab.rag.metrics import ndcg_at_k, recall_at_k, mrr, exact_match, f1
ndcg_at_k(["d3", "d1"], {"d1": 1}, 10)      # 0.6309...
exact_match("The Paris.", ["paris"])        # 1.0 (SQuAD normalisation)
```

Ranking metrics take the ranked document ids and the relevance judgements ``{doc_id: grade}``
of one query (grades > 0 are relevant; nDCG uses the grades as gains, BEIR/TREC style with
linear gain). Answer metrics follow the SQuAD evaluation script: lower case, punctuation and
the articles a/an/the removed, whitespace collapsed; the best score over the gold answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from llmlab.answers import exact_match, f1, normalize_answer  # noqa: F401  (one copy for every station)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the first ``k`` results."""
    gains = [g for g in sorted((float(v) for v in relevant.values() if v > 0), reverse=True)][:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    if ideal == 0:
        return 0.0
    dcg = sum(float(relevant.get(d, 0)) / math.log2(i + 2) for i, d in enumerate(_unique(ranked)[:k])
              if relevant.get(d, 0) > 0)
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the relevant documents found in the first ``k`` results."""
    rel = {d for d, v in relevant.items() if v > 0}
    if not rel:
        return 0.0
    return len(rel & set(_unique(ranked)[:k])) / len(rel)


def mrr(ranked: Sequence[str], relevant: Mapping[str, float], k: int | None = None) -> float:
    """Reciprocal rank of the first relevant result (within the first ``k``; 0 when none)."""
    for i, d in enumerate(_unique(ranked)[:k]):
        if relevant.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def _unique(ranked: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranked))
