"""A bundle as the server opens it: hash-verified before any of its files is read, then its model,
and its index and agent where it has them.

```python
spec = open_bundle("models/demo-q4_k_m-bundle")      # StoreError naming a tampered file
parts = open_rag(bundle_dir, spec, model)             # embedder, searcher over the index, agents
parts.embedder.encode(["a query"]); parts.agents["demo-agent"].ask("Where does Bodo live?")
```

The Export station writes bundles (``llmlab.export``); this is the reading side, which the server
and the parity check share. The server opens the index as an artifact of a private working store
under ``$LLMLAB_HOME/.serve/bundles/`` (Chroma rewrites files it opens, and a bundle's files must
stay as hashed) and searches it with the bundle's ONNX embedder.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab import settings
from llmlab.errors import StoreError
from llmlab.runtime.batched import ACTIVE
from llmlab.store import MANIFEST, Manifest, Store, hash_files

if TYPE_CHECKING:
    from llmlab.rag.onnx_embedder import OnnxEmbedder
    from llmlab.runtime import Model

BUNDLE_SPEC = "bundle.json"
INDEX_DIR = "index"
EMBEDDER_DIR = "embedder"


def verify_bundle(path: str | Path) -> list[str]:
    """One line per file that does not match the bundle's ``manifest.json`` (empty when intact)."""
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        return [f"missing file: {MANIFEST}"]
    try:
        manifest = Manifest.model_validate_json(mpath.read_text())
    except ValueError:
        return [f"corrupted file: {MANIFEST}"]
    actual = hash_files(root)
    problems = [f"missing file: {rel}" for rel in manifest.files if rel not in actual]
    problems += [f"tampered file: {rel} (sha256 differs from the manifest)" for rel, d in manifest.files.items()
                 if rel in actual and actual[rel] != d]
    problems += [f"unexpected file: {rel}" for rel in actual if rel not in manifest.files]
    if manifest.kind != "bundle":
        problems.append(f"{MANIFEST} describes a {manifest.kind} artifact, not a bundle")
    return problems


def open_bundle(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The bundle's ``bundle.json``, after checking every hash (StoreError naming the first bad file)."""
    root = Path(path)
    if verify:
        problems = verify_bundle(root)
        if problems:
            raise StoreError(f"The bundle '{root}' does not match its manifest: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") + ".",
                             "Nothing was loaded. Export the bundle again, or copy it intact.")
    try:
        return json.loads((root / BUNDLE_SPEC).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"'{root / BUNDLE_SPEC}' cannot be read: {e}.") from None


@dataclass
class BundleRag:
    """What a bundle with an index serves beside its model."""

    embedder: OnnxEmbedder
    searcher: Any  # llmlab.rag.search.Searcher
    agents: dict[str, Any] = field(default_factory=dict)  # served name -> llmlab.agents.graph.Agent


def open_rag(bundle: Path, spec: dict[str, Any], model: Model, adapters: Sequence[str] = ()) -> BundleRag:
    """The ONNX embedder, the searcher over the bundled index and the agent (if any) of a verified bundle.
    With ``adapters`` (the names of the adapters loaded on ``model``) the agent answers with the base alone
    under its own name and with each adapter as ``<agent>:<adapter>``, over the same index."""
    from llmlab.rag.onnx_embedder import OnnxEmbedder
    from llmlab.rag.search import Searcher

    embedder = OnnxEmbedder.open(bundle / spec["embedder"]["folder"])
    index = spec["index"]
    store = Store(_work_store(bundle, spec))
    searcher = Searcher.open(index["name"], store=store, embedder=embedder)
    if "agent" not in spec:
        return BundleRag(embedder, searcher)
    import yaml

    from llmlab.agents.chat_model import RuntimeChatModel
    from llmlab.agents.graph import Agent
    from llmlab.agents.spec import parse_spec

    agent_spec = parse_spec(yaml.safe_load((bundle / spec["agent"]["spec"]).read_text()),
                            source=f"bundle '{spec['name']}' agent spec")
    name = spec["agent"]["name"]
    # with adapters the base agent asks for the base (None): another request may have switched the model
    variants: dict[str, str | None] = ({name: None} | {f"{name}:{a}": a for a in adapters}) if adapters \
        else {name: ACTIVE}
    agents = {}
    for served_name, adapter in variants.items():
        llm = RuntimeChatModel(model=model, temperature=agent_spec.model.temperature,
                               max_tokens=agent_spec.model.max_tokens, adapter=adapter)
        agents[served_name] = Agent(agent_spec, store=store, llm=llm, searcher=searcher, memory=False)
    return BundleRag(embedder, searcher, agents)


def _work_store(bundle: Path, spec: dict[str, Any]) -> Path:
    """A private store holding the bundled index (copied once per index version)."""
    index = spec["index"]
    root = settings.home() / ".serve" / "bundles" / f"{spec['name']}-{index['content_hash'][:16]}"
    target = root / index["name"]
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{index['name']}.{uuid.uuid4().hex[:8]}"
        shutil.copytree(bundle / index["folder"], tmp)
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another server finished its copy first
    return root
