"""Bundles in the MLflow model registry: plain artifacts (no pickled code), metrics and hashes.

```python
from llmlab.export.registry import register, fetch
v = register(store.get("demo-q4_k_m-bundle"), store)     # {'name', 'version', 'run_id', 'content_hash'}
folder = fetch("models:/demo-q4_k_m-bundle/1", dest)    # the bundle's files, hash-verified
```

``register`` logs the bundle folder as run artifacts, its numeric metrics (the source's scores
and the parity report) as run metrics, and creates a model version whose source is that artifact
folder, tagged with the bundle's content hash. ``fetch`` downloads a version and refuses it unless
every file matches the bundle's manifest and the content hash matches the tag. The tracking store
is llmlab's (``LLMLAB_TRACKING_URI``, a sqlite file in the store by default).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab import settings
from llmlab.errors import ConfigError, NotFoundError, StoreError

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

URI = re.compile(r"^models:/([^/]+)/(\d+)$")


def _client(store: Store) -> tuple[Any, Any]:
    if settings.tracking_uri() is None:
        raise ConfigError("The model registry needs MLflow tracking, which is off (LLMLAB_TRACKING_URI=off).",
                          "Unset LLMLAB_TRACKING_URI to use the store's own sqlite MLflow.")
    from mlflow import MlflowClient

    from llmlab.tracking import open_mlflow

    mlflow, experiment_id = open_mlflow(store)
    return MlflowClient(), experiment_id


def _numeric(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _numeric(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[re.sub(r"[^A-Za-z0-9_./ -]", "_", prefix)] = float(value)


def register(bundle: Artifact, store: Store, name: str | None = None) -> dict[str, Any]:
    """Log ``bundle`` to MLflow and register it as a new version of model ``name`` (default: its name)."""
    if bundle.kind != "bundle":
        raise ConfigError(f"'{bundle.name}' is a {bundle.kind} artifact; the registry takes bundles.",
                          "Export it first: llmlab export " + bundle.name)
    client, experiment_id = _client(store)
    name = name or bundle.name
    run = client.create_run(experiment_id, run_name=f"register {bundle.name}",
                            tags={"llmlab.bundle": bundle.name, "llmlab.content_hash": bundle.content_hash})
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(bundle.path), artifact_path="bundle")
        metrics: dict[str, float] = {}
        _numeric("", bundle.metrics, metrics)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        source = bundle.manifest.info.get("source")
        client.create_registered_model(name, description=f"llmlab bundle exported from {source}")
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/bundle", run_id=run_id,
                                          tags={"llmlab.content_hash": bundle.content_hash,
                                                "llmlab.kind": "bundle"})
    return {"name": name, "version": int(version.version), "run_id": run_id, "content_hash": bundle.content_hash,
            "uri": f"models:/{name}/{version.version}", "metrics": metrics}


def fetch(uri: str, dest: str | Path, store: Store) -> Path:
    """Download registered bundle ``models:/NAME/VERSION`` into ``dest`` (a new folder), hash-verified."""
    from llmlab.serve.bundle import verify_bundle
    from llmlab.store import MANIFEST, Manifest

    m = URI.match(uri)
    if not m:
        raise ConfigError(f"'{uri}' is not a registered model version.", "Write it as models:/NAME/VERSION.")
    client, _ = _client(store)
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version(m.group(1), m.group(2))
    except MlflowException:
        raise NotFoundError(f"No registered version {uri} in {settings.tracking_uri()}.",
                            "List versions in the MLflow UI (llmlab mlflow).") from None
    import mlflow

    dest = Path(dest)
    tmp = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest.parent)))
    if tmp != dest:
        shutil.move(str(tmp), dest)
    problems = verify_bundle(dest)
    want = (version.tags or {}).get("llmlab.content_hash")
    got = Manifest.model_validate_json((dest / MANIFEST).read_text()).content_hash if not problems else None
    if problems or got != want:
        shutil.rmtree(dest, ignore_errors=True)
        raise StoreError(f"The registered bundle {uri} does not match its hashes: "
                         f"{problems[0] if problems else 'content hash differs from the version tag'}.",
                         "Register the bundle again from the store.")
    return dest
