"""The Agents station's agent half: LangGraph RAG agents built from the YAML specs in ``agents/``.

```python
from llmlab.agents import Agent
agent = Agent("rag", index="demo-index", model="demo")
agent.ask("Where does Bodo live?").answer
```

Modules: ``spec`` (the pydantic AgentSpec), ``chat_model`` (LangChain chat models over the runtime
and over OpenAI-compatible endpoints), ``tools`` (index search, safe calculator), ``graph`` (the
StateGraph, memory, streaming), ``trace`` (the sqlite trace store), ``evaluate`` (``llmlab eval
answers``, LLM-as-judge) and ``step`` (the ``agent`` recipe step). Importing this package loads
nothing heavy; ``Agent`` and ``AgentSpec`` are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "AgentReply", "AgentSpec", "load_spec"]


def __getattr__(name: str) -> Any:
    if name in ("Agent", "AgentReply"):
        from llmlab.agents import graph

        return getattr(graph, name)
    if name in ("AgentSpec", "load_spec"):
        from llmlab.agents import spec

        return getattr(spec, name)
    raise AttributeError(name)
