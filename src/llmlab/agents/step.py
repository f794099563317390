"""The ``agent`` recipe step: an ``agent`` artifact holding a resolved spec, its parents the index
and the model, so Export can bundle exactly what the agent needs.

```python
from llmlab.agents.step import AgentConfig, build_agent
build_agent(AgentConfig(name="demo-agent", spec="rag-rules", index="demo-index", model="demo"), store=store)
Agent("demo-agent", store=store).ask("Where does Bodo live?")     # the artifact loads as a spec
```

Before anything is written, the spec is validated and the index and model it names are checked:
both must exist in the store (the model may instead be an endpoint, which has no parent), and the
index must be an ``index`` artifact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from llmlab.agents.spec import SPEC_FILE, Mode, load_spec
from llmlab.errors import ConfigError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.store import StepRecord, Store


class AgentConfig(BaseModel):
    """Options of the ``agent`` step (``llmlab agent`` and a recipe's ``agent`` step)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("demo-agent", description="Name of the agent artifact to write.")
    spec: str = Field("rag-rules", description="Agent spec: a name in agents/ (rag, rag-rules) or a YAML path.")
    index: str | None = Field(None, description="Index artifact to search (default: the spec's).")
    model: str | None = Field(None, description="Chat model artifact (default: the spec's).")
    mode: Mode | None = Field(None, description="Search mode: dense, bm25, hybrid, hybrid_rerank (default: spec's).")
    k: int | None = Field(None, ge=1, le=100, description="Hits per search (default: the spec's).")


def build_agent(config: AgentConfig, *, store: Store | None = None, progress: Reporter | None = None,
                overwrite: bool = False, step: StepRecord | None = None) -> dict[str, Any]:
    """Write the ``agent`` artifact; returns its info (the resolved spec's name, index, model)."""
    from llmlab.store import Parent, Store

    store = store or Store()
    spec = load_spec(config.spec).with_overrides(index=config.index, model=config.model, mode=config.mode,
                                                 k=config.k)
    if not spec.retriever.index:
        raise ConfigError(f"The agent '{config.name}' names no index.", "Pass --index NAME (an index artifact).")
    index = store.get(spec.retriever.index)
    if index.kind != "index":
        raise ConfigError(f"'{index.name}' is a '{index.kind}' artifact, not an index.",
                          "Build one with `llmlab index` and name it here.")
    parents = [Parent(name=index.name, content_hash=index.content_hash, role="index")]
    if spec.model.artifact and not spec.model.endpoint:
        if store.exists(spec.model.artifact):
            m = store.get(spec.model.artifact)
            parents.append(Parent(name=m.name, content_hash=m.content_hash, role="model"))
        else:
            raise ConfigError(f"The agent's model '{spec.model.artifact}' is not in the store.",
                              "Name a store artifact (`llmlab models ls`) or import one (`llmlab models add`).")
    emit(progress, "log", message=f"agent {config.name}: spec {spec.name}, index {index.name}, "
                                  f"model {spec.model.label}")
    with store.write(config.name, "agent", overwrite=overwrite) as w:
        (w.path / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        w.parents = parents
        w.step = step
        w.info = {"spec": spec.name, "index": index.name, "model": spec.model.label,
                  "mode": spec.retriever.mode, "k": spec.retriever.k, "nodes_using_model": spec.uses_model()}
    return dict(w.info)
