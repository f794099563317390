"""A tuned (or distilled) artifact read back for a report: base against tuned on each measure, the run's
facts, its training log, a distilled student beside its teacher, and a question to ask both models.

```python
from llmlab.tune.report import before_after, run_facts
for c in before_after(store.get("demo-lora").metrics):
    print(c.label, c.before, "->", c.after, "better" if c.improved else "worse")
```

Pure reads of ``metrics.json``, the manifest and ``training_log.jsonl``: nothing is trained, scored
or loaded here, so the app's Tune page and the notebook can call it while they draw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmlab.store import Artifact, Store
from llmlab.world import find_world

# (label, metric before tuning, metric after, higher is better): what tuning changed.
BEFORE_AFTER: tuple[tuple[str, str, str, bool], ...] = (
    ("held-out accuracy", "accuracy_before", "accuracy", True),
    ("validation loss", "val_loss_before", "val_loss_after", False),
    ("world-text perplexity", "ppl_before", "ppl", False),
)
# Facts of a tuning run (manifest info) worth a line, in this order.
RUN_FACTS = ("method", "backend", "device", "steps", "epochs", "train_seconds", "tok_s", "trainable_params",
             "resumed_from_step")
# A student's measures shown beside its teacher's (``<measure>_teacher`` in the student's metrics).
STUDENT_MEASURES = ("params", "gen_tok_s", "ppl", "accuracy")
TRAINING_LOG = "training_log.jsonl"


@dataclass(frozen=True)
class Change:
    """One measure of the base model and of the tuned one."""

    label: str
    before: float
    after: float
    higher_is_better: bool

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def improved(self) -> bool:
        return self.delta > 0 if self.higher_is_better else self.delta < 0


def before_after(metrics: dict[str, Any]) -> list[Change]:
    """The ``BEFORE_AFTER`` measures that a tuned artifact's metrics hold both numbers of."""
    return [Change(label, float(metrics[b]), float(metrics[a]), higher)
            for label, b, a, higher in BEFORE_AFTER
            if isinstance(metrics.get(b), (int, float)) and isinstance(metrics.get(a), (int, float))]


def run_facts(info: dict[str, Any]) -> dict[str, Any]:
    """The ``RUN_FACTS`` a tuning run recorded in its manifest (those it has)."""
    return {k: info[k] for k in RUN_FACTS if info.get(k) is not None}


def training_log(art: Artifact) -> list[dict[str, Any]]:
    """The rows (step, loss, val_loss) of an artifact's ``training_log.jsonl``; [] when it has none."""
    path = art.path / TRAINING_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def student_vs_teacher(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """A distilled student's ``STUDENT_MEASURES`` beside its teacher's: one {measure, student, teacher} row each."""
    return [{"measure": k, "student": metrics.get(k), "teacher": metrics.get(f"{k}_teacher")}
            for k in STUDENT_MEASURES if k in metrics]


def example_question(store: Store, art: Artifact, *, split: str = "heldout", default: str = "Hello!") -> str:
    """The first ``split`` question of the demo world ``art`` descends from (``default`` without a world)."""
    the_world = find_world(store, art)
    questions = the_world.split(split) if the_world is not None else []
    return str(questions[0]["question"]) if questions else default
