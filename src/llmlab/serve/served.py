"""What a server serves, loaded from what ``llmlab serve`` was given: a bundle (hash-verified first, with
its index, agent or adapters), an agent artifact, a store artifact or a model file (``load_served``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError
from llmlab.runtime import Model
from llmlab.serve.config import ServeConfig


@dataclass
class Served:
    """What the server serves: the model, the name clients use, the bundle it came from."""

    model: Model
    name: str
    bundle: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, Any] = field(default_factory=dict)  # served name -> llmlab.agents.Agent
    embedder: Any = None  # a bundle's ONNX embedder, answering /v1/embeddings as its own name
    adapters: dict[str, str] = field(default_factory=dict)  # served name ("bundle:reader") -> adapter name

    @property
    def names(self) -> list[str]:
        return [self.name, *self.adapters, *self.agents]

    def adapter_of(self, model: str) -> str | None:
        """The adapter a request for ``model`` (a model or an agent) runs with (None: the base)."""
        agent = self.agents.get(model)
        if agent is not None:
            return agent.llm.adapter if agent.llm.adapter in self.adapters.values() else None
        return self.adapters.get(model)


def load_served(config: ServeConfig) -> Served:
    """Load ``config.source``; a bundle is hash-verified first, before any of its files is opened."""
    from llmlab.runtime import load

    opts: dict[str, Any] = {"n_ctx": config.n_ctx} if config.n_ctx else {}
    if not config.flash_attn:
        opts["flash_attn"] = False  # on is the runtime's default (and no option for transformers models)
    src = Path(config.source).expanduser()
    from llmlab.serve.bundle import BUNDLE_SPEC, open_bundle
    from llmlab.store import Store

    store = Store() if not src.exists() else None  # a name, not a path: maybe an artifact in the store
    artifact = store.get(config.source) if store is not None and store.exists(config.source) else None
    if artifact is not None and artifact.kind == "bundle":
        src = artifact.path  # a bundle by its store name: its folder, hash-verified below like a path
    if src.is_dir() and (src / BUNDLE_SPEC).is_file():
        spec = open_bundle(src, verify=config.verify)  # raises naming a tampered file
        model_spec = spec["model"]
        if model_spec["format"] != "gguf":
            raise ConfigError(f"The bundle '{src.name}' holds a {model_spec['format']} model; llmlab serve runs "
                              "GGUF bundles.", f"Serve it with the bundle's vLLM command: {spec.get('vllm', '')}")
        if model_spec.get("adapter"):
            opts["lora_path"] = src / model_spec["adapter"]
        adapters = _bundle_adapters(src, spec)  # checked against the base before anything is loaded
        model = load(src / model_spec["file"], **opts)
        name = config.model_name or spec["name"]
        served = Served(model, name, src, spec, adapters={f"{name}:{a}": a for a in adapters})
        try:
            for a, file in adapters.items():
                model.add_adapter(a, file)  # type: ignore[attr-defined]
        except BaseException:
            model.close()
            raise
        if "index" in spec:
            from llmlab.serve.bundle import open_rag

            rag = open_rag(src, spec, model, adapters=list(adapters))
            served.embedder, served.agents = rag.embedder, rag.agents
        return served
    if artifact is not None and artifact.kind == "agent":
        return _agent_served(config.source, store)
    model = load(config.source, **opts)
    name = config.model_name or (model.artifact.name if model.artifact is not None else src.stem)
    return Served(model, name)


def _bundle_adapters(bundle: Path, spec: dict[str, Any]) -> dict[str, Path]:
    """{name: file} of a bundle's adapters; one made for another base than the bundle's is refused,
    naming both."""
    model_spec = spec["model"]
    adapters = model_spec.get("adapters") or {}
    base = model_spec.get("base") or {}
    for name, a in adapters.items():
        if a.get("base_hash") != base.get("content_hash"):
            raise ConfigError(f"The adapter '{name}' of the bundle '{bundle.name}' was made for "
                              f"'{a.get('base')}' ({str(a.get('base_hash'))[:12]}), but the bundle's base is "
                              f"'{base.get('name')}' ({str(base.get('content_hash'))[:12]}).",
                              "Export the bundle again with adapters converted for its base.")
    return {name: bundle / a["file"] for name, a in adapters.items()}


def _agent_served(name: str, store: Any) -> Served:
    """An agent artifact: its chat model served under its own name, the agent under the artifact's."""
    from llmlab.agents.graph import Agent

    agent = Agent(name, store=store, memory=False)
    model = getattr(agent.llm, "model", None)
    if not isinstance(model, Model):
        raise ConfigError(f"The agent '{name}' talks to an endpoint ({agent.spec.model.label}), not a local model.",
                          "Serve the endpoint's model, or make the agent with a store model (llmlab agent --model).")
    return Served(model, agent.spec.model.artifact or model.path.stem, agents={name: agent})
