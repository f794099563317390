"""The regression gate: is a candidate worse than a baseline beyond a margin on a suite? (for CI)

```python
from llmlab.evaluate.gate import GateConfig, gate
result = gate(GateConfig(candidate="demo-q4_k_m", baseline="demo", metrics=["heldout.accuracy"], margin=0.02))
result["passed"]   # `llmlab eval gate ...` exits 1 when False
```

Both are scored on the same suite (through the leaderboard, so cached results are reused). For
each metric, "worse" follows the metric's direction (lower perplexity and KL are better; higher
accuracy, exact match, F1 and top-1 are). ``margin`` is absolute, or a fraction of the baseline's
value with ``relative: true``. A metric the baseline has but the candidate lacks fails the gate;
so does a candidate that fails to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from llmlab.errors import ConfigError
from llmlab.evaluate.leaderboard import EvaluateConfig, evaluate
from llmlab.evaluate.suites import SuiteConfig, metric_direction
from llmlab.events import Reporter

if TYPE_CHECKING:
    from llmlab.store import Store


class GateConfig(SuiteConfig):
    """Options of ``llmlab eval gate``: two artifacts, the metrics to hold and the allowed margin."""

    candidate: str = Field(..., description="The artifact under test.")
    baseline: str = Field(..., description="The artifact it must not be worse than.")
    metrics: list[str] = Field(default_factory=lambda: ["ppl", "heldout.accuracy"],
                               description="Leaderboard columns to check (ppl, kld_mean, top1, <task>.accuracy, "
                                           "<task>.exact_match, <task>.f1...).")
    margin: float = Field(0.0, ge=0, description="How much worse is allowed: absolute, or relative (see relative).")
    relative: bool = Field(False, description="Read margin as a fraction of the baseline's value.")

    @field_validator("metrics", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


def gate_config(values: dict[str, Any]) -> GateConfig:
    """Validate gate options; a bad one is a ConfigError naming the field."""
    try:
        return GateConfig.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        hint = GateConfig.model_fields[str(err["loc"][0])].description if err["loc"] and \
            str(err["loc"][0]) in GateConfig.model_fields else None
        raise ConfigError(f"Gate option '{field}': {err['msg']}.", hint) from None


def gate(config: GateConfig, *, store: Store | None = None, progress: Reporter | None = None) -> dict[str, Any]:
    """``{"passed", "checks": [{metric, baseline, candidate, allowed, worse_by, passed}], ...}``."""
    for m in config.metrics:
        if metric_direction(m) is None:
            raise ConfigError(f"'{m}' is not a quality metric the gate can compare.",
                              "Use ppl, kld_mean, kld_p99, top1, or <task>.accuracy / .exact_match / .f1 / "
                              ".choice_accuracy.")
    suite = {k: getattr(config, k) for k in SuiteConfig.model_fields}
    board = evaluate(EvaluateConfig(**suite, models=[config.baseline, config.candidate], track=False),
                     store=store, progress=progress)
    base, cand = board.row(config.baseline), board.row(config.candidate)
    if base.get("error"):
        raise ConfigError(f"The baseline could not be evaluated: {base['error']}")
    checks = []
    for m in config.metrics:
        b, c = base.get(m), cand.get(m)
        if b is None:
            raise ConfigError(f"The baseline has no '{m}' on this suite.",
                              f"Its metrics: {', '.join(k for k in base if metric_direction(k) is not None)}.")
        allowed = config.margin * abs(b) if config.relative else config.margin
        if c is None:
            checks.append({"metric": m, "baseline": b, "candidate": None, "allowed": allowed, "worse_by": None,
                           "passed": False, "why": cand.get("error") or "the candidate has no value"})
            continue
        worse_by = (b - c) if metric_direction(m) else (c - b)
        checks.append({"metric": m, "baseline": b, "candidate": c, "allowed": allowed, "worse_by": worse_by,
                       "passed": worse_by <= allowed + 1e-12})
    return {"passed": all(ch["passed"] for ch in checks), "candidate": config.candidate,
            "baseline": config.baseline, "suite": board.suite, "checks": checks,
            "quality_from": {config.baseline: base["quality_from"], config.candidate: cand["quality_from"]}}
