"""What the Export station offers and reports, beside ``llmlab.export.plan`` (what goes into a bundle):
which models and agents can be exported (best held-out accuracy first), which adapters can ride on a GGUF base,
whether a parity check applies, a bundle's files with their hashes and the model names it serves, and
which of a running server's ``/metrics`` series to show.

```python
from llmlab.export.choices import exportable, server_metric_rows
best = exportable(store)[0]                                  # the most accurate exportable model
rows = server_metric_rows(llmlab.serve.client.metrics(url))  # counters and mean latency per endpoint
```

Pure reads of manifests and metrics: nothing is exported, loaded or served here.
"""

from __future__ import annotations

from typing import Any

from llmlab.scoring import is_number
from llmlab.store import GGUF_KINDS, HF_KINDS, Artifact, Store

AGENT_ANSWERS = 'llmlab_requests_total{endpoint="agent",status="200"}'
# A server's /metrics series -> what it counts (shown in this order).
SERVER_METRICS: dict[str, str] = {
    'llmlab_requests_total{endpoint="chat",status="200"}': "chat requests answered",
    'llmlab_requests_total{endpoint="completions",status="200"}': "completions answered",
    AGENT_ANSWERS: "agent answers",  # shown once there is one
    'llmlab_tokens_total{type="prompt"}': "prompt tokens",
    'llmlab_tokens_total{type="completion"}': "completion tokens",
    "llmlab_queue_depth": "queue depth",
    "llmlab_requests_active": "generating now",
}
LATENCY_SUM = "llmlab_request_latency_seconds_sum"


def accuracy_of(art: Artifact) -> float | None:
    """An artifact's recorded accuracy: the held-out split's when it was scored per split (else
    the first split's), None when it has none."""
    acc = art.metrics.get("accuracy")
    if isinstance(acc, dict):
        acc = acc.get("heldout", next(iter(acc.values()), None))
    return float(acc) if is_number(acc) else None


def agent_model(agent: Artifact, store: Store) -> Artifact | None:
    """The GGUF model an agent runs on, when the store holds it: an agent bundle needs the model itself
    (None for an agent on an endpoint, a Hugging Face model or a model since removed)."""
    name = next((p.name for p in agent.manifest.parents if p.role == "model"), None)
    model = store.get(name) if name and store.exists(name) else None
    return model if model is not None and model.kind in GGUF_KINDS else None


def exportable(store: Store) -> list[Artifact]:
    """What can be exported: models (GGUF and Hugging Face kinds) and agents on a GGUF model of the
    store, best accuracy first, unscored ones last, then by name."""
    arts = [a for a in store.list() if a.kind in GGUF_KINDS + HF_KINDS
            or (a.kind == "agent" and agent_model(a, store) is not None)]

    def rank(a: Artifact) -> tuple[float, str]:
        acc = accuracy_of(a)
        return (-(acc if acc is not None else -1.0), a.name)

    return sorted(arts, key=rank)


def adapters_for(base: Artifact, store: Store) -> list[str]:
    """Adapters a bundle of the GGUF ``base`` (or of an agent over one) can hold: gguf-adapters converted
    for it, and peft adapters of the model it was made from (the export converts those)."""
    if base.kind == "agent":
        model = agent_model(base, store)
        return adapters_for(model, store) if model is not None else []
    if base.kind != "gguf":
        return []
    source = next((p.content_hash for p in base.manifest.parents if p.role == "source"), None)
    out = []
    for a in store.list():
        want = next((p.content_hash for p in a.manifest.parents if p.role == "base"), None)
        if (a.kind == "gguf-adapter" and want == base.content_hash) or \
                (a.kind == "adapter" and source is not None and want == source):
            out.append(a.name)
    return sorted(out)


def served_names(bundle: Artifact) -> list[str]:
    """The model names a bundle's server answers to: the bundle, then ``bundle:adapter`` for each adapter;
    its agent (if any), then ``agent:adapter`` for each adapter."""
    adapters = (bundle.manifest.info.get("model") or {}).get("adapters") or {}
    names = [bundle.name, *(f"{bundle.name}:{a}" for a in adapters)]
    agent = (bundle.manifest.info.get("agent") or {}).get("name")
    return names + ([agent, *(f"{agent}:{a}" for a in adapters)] if agent else [])


def parity_applies(art: Artifact) -> bool:
    """Whether an export of ``art`` can be checked for parity (GGUF kinds, and agents, which
    ``exportable`` offers only on a GGUF model: the bundle's server against the model, token for token)."""
    return art.kind in (*GGUF_KINDS, "agent")


def parity_source(bundle: Artifact, store: Store) -> str | None:
    """The artifact a bundle was exported from, when the store still holds it (parity can be re-run)."""
    source = bundle.manifest.info.get("source")
    return str(source) if source and store.exists(str(source)) else None


def served_over_http(bundle: Artifact) -> bool:
    """Whether llmlab serve runs the bundle (GGUF); other bundles are for vLLM."""
    return bundle.manifest.info.get("format") == "gguf"


def bundle_files(bundle: Artifact) -> list[dict[str, Any]]:
    """One row per file of a bundle: path, size in KB, sha256 (first 16 hex digits)."""
    return [{"file": rel, "size_kb": round((bundle.path / rel).stat().st_size / 1e3, 1), "sha256": digest[:16]}
            for rel, digest in sorted(bundle.manifest.files.items())]


def server_metric_rows(values: dict[str, float]) -> list[dict[str, Any]]:
    """The ``SERVER_METRICS`` counters (0 when absent; agent answers once there is one), then the mean
    latency per endpoint in ms."""
    rows = [{"metric": label, "value": values.get(key, 0)} for key, label in SERVER_METRICS.items()
            if key in values or key != AGENT_ANSWERS]
    for key, total in values.items():
        if key.startswith(LATENCY_SUM):
            count = values.get(key.replace("_sum", "_count"), 0)
            endpoint = key[key.index("{"):]
            rows.append({"metric": f"mean latency {endpoint} (ms)",
                         "value": round(1000 * total / count, 1) if count else 0})
    return rows
