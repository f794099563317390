"""The Evaluate station: eval suites, the leaderboard, the regression gate, LLM-as-judge and the Arena.

```python
from llmlab.evaluate import EvaluateConfig, evaluate
board = evaluate(EvaluateConfig(models=["demo", "demo-q4_k_m"]))
print(board.to_markdown())
```

Modules: ``suites`` (typed suites over ``llmlab.scoring``), ``cache`` (quality results by content
hash), ``leaderboard`` (rows, filters, Pareto fronts, CSV/Markdown, MLflow), ``gate`` (candidate vs
baseline for CI), ``judge`` (rubric grading, pairwise with position swap, Cohen's kappa) and
``arena`` (votes, Elo, Bradley-Terry). Nothing heavy is imported until a model is loaded.
"""

from llmlab.evaluate.leaderboard import EvaluateConfig, Leaderboard, evaluate, pareto_front
from llmlab.evaluate.suites import SuiteConfig, TaskSet

__all__ = ["EvaluateConfig", "Leaderboard", "SuiteConfig", "TaskSet", "evaluate", "pareto_front"]
