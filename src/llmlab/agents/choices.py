"""What the Agents station offers and shows, read from the store, the shipped specs and the trace store:
which agents can be picked (agent artifacts first, then ``spec:<name>`` for each spec in ``agents/``),
the spec behind a pick, the models whose demo world can be indexed, and a run's traced steps as rows.

```python
from llmlab.agents.choices import agent_choices, spec_of, trace_rows
choice = agent_choices(store)[0]
spec = spec_of(store, choice)
rows = trace_rows(TraceStore.for_store(store).steps(reply.run_id))
```
"""

from __future__ import annotations

from typing import Any

from llmlab.agents.spec import AgentSpec, load_spec, shipped_specs
from llmlab.store import Store
from llmlab.world import find_world

SPEC_PREFIX = "spec:"
DEFAULT_SPEC = "rag-rules"  # rules for grading and checking: what a small model can drive


def agent_choices(store: Store) -> list[str]:
    """Agent artifacts in the store first, then the shipped specs (``spec:rag-rules``)."""
    return [a.name for a in store.list(kind="agent")] + [f"{SPEC_PREFIX}{s}" for s in shipped_specs()]


def spec_of(store: Store, choice: str) -> AgentSpec:
    """The AgentSpec behind a choice of ``agent_choices``."""
    if choice.startswith(SPEC_PREFIX):
        return load_spec(choice[len(SPEC_PREFIX):])
    return load_spec(choice, store=store)


def default_index(names: list[str], wanted: str | None) -> int:
    """The position of ``wanted`` in ``names``, else 0 (the first)."""
    return names.index(wanted) if wanted in names else 0


def default_agent(choices: list[str]) -> int:
    """Which of ``agent_choices`` to open on: the first agent artifact, else the ``DEFAULT_SPEC``."""
    first = next((i for i, c in enumerate(choices) if not c.startswith(SPEC_PREFIX)), None)
    return first if first is not None else default_index(choices, f"{SPEC_PREFIX}{DEFAULT_SPEC}")


def world_sources(store: Store) -> list[str]:
    """Artifacts (other than indexes) that descend from a demo world, whose documents can be indexed."""
    return [a.name for a in store.list() if a.kind != "index" and find_world(store, a) is not None]


def shorten(value: Any, n: int = 160) -> str:
    """``value`` as text of at most ``n`` characters (cut with an ellipsis)."""
    text = str(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def trace_rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per traced step (``TraceStore.steps``): its number, node, latency, tokens, the
    documents it retrieved and its inputs and outputs, shortened."""
    return [{"#": s["seq"], "node": s["node"], "ms": s["latency_ms"], "tokens": s["tokens"],
             "retrieved": ", ".join(s["retrieved_ids"]), "inputs": shorten(s["inputs"]),
             "outputs": shorten(s["outputs"])} for s in steps]
