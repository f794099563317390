"""MLflow tracking: each recipe run is one MLflow run.

The store's own sqlite database (``$LLMLAB_HOME/.mlflow/mlflow.db``, artifacts beside it) is the
default; ``LLMLAB_TRACKING_URI`` points elsewhere or switches tracking off (``off``). A run logs
each step's config as params (``<n>.<kind>.<key>``), its metrics (``<n>.<key>``), its outputs'
content hashes as tags, and their manifests as artifacts (references, not the weights). An output that
carries a per-step series (``training_log.jsonl``: SFT's loss, GRPO's reward, KL, group accuracy and
answer length...) has every numeric column logged as ``<n>.<column>`` with MLflow's ``step``, so the
MLflow UI charts it over training.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llmlab import settings
from llmlab.errors import ConfigError
from llmlab.noise import quiet_loggers
from llmlab.store import Store

EXPERIMENT = "llmlab"
SERIES_FILE = "training_log.jsonl"  # one JSON row a training step, with its "step" number


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def series(path: Path) -> list[tuple[int, str, float]]:
    """(step, column, value) for every numeric value in the training log at ``path``; [] without one."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if _is_number(row.get("step")):
            out += [(int(row["step"]), k, float(v)) for k, v in row.items() if k != "step" and _is_number(v)]
    return out


def open_mlflow(store: Store) -> tuple[Any, str]:
    """Import mlflow, point it at the tracking URI and return (mlflow, experiment id)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    # mlflow configures its loggers on import; schema migrations and store set-up are not news.
    quiet_loggers("alembic", "mlflow")

    uri = settings.tracking_uri()
    if uri and uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = (store.root / ".mlflow" / "artifacts").as_uri()
        return mlflow, mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    return mlflow, exp.experiment_id


class Tracker:
    """Logs one recipe run's steps; does nothing when tracking is off."""

    def __init__(self, mlflow: Any | None, store: Store, run_id: str | None = None):
        self.mlflow = mlflow
        self.store = store
        self.run_id = run_id

    def log_step(self, index: int, kind: str, config: dict[str, Any], metrics: dict[str, Any], seconds: float,
                 outputs: Sequence[str]) -> None:
        """Log step ``index`` (0-based) of the run: its config, numeric metrics, time and output artifacts."""
        if self.mlflow is None:
            return
        params: dict[str, Any] = {}
        _flatten(f"{index + 1}.{kind}", config, params)
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        numbers = {f"{index + 1}.{k}": float(v) for k, v in metrics.items() if _is_number(v)}
        numbers[f"{index + 1}.seconds"] = seconds
        self.mlflow.log_metrics(numbers)
        for name in outputs:
            art = self.store.get(name)
            self.mlflow.set_tag(f"artifact.{art.name}", f"{art.kind}:{art.content_hash}")
            self.mlflow.log_artifact(str(art.path / "manifest.json"), artifact_path=f"manifests/{art.name}")
            self.log_series(index, series(art.path / SERIES_FILE))

    def log_series(self, index: int, points: list[tuple[int, str, float]]) -> None:
        """Log step ``index``'s (step, column, value) points as ``<n>.<column>`` metrics at their steps."""
        if not points:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{index + 1}.{k}", v, now, step) for step, k, v in points]
        self.mlflow.MlflowClient().log_batch(self.run_id, metrics=metrics)  # sent in chunks by the client


@contextlib.contextmanager
def recipe_run(name: str, resolved: dict[str, Any], *, store: Store, enabled: bool = True) -> Iterator[Tracker]:
    """An MLflow run around the recipe ``name`` (``resolved``: its steps, logged as ``recipe.json``), or
    a no-op tracker when tracking is off."""
    if not enabled or settings.tracking_uri() is None:
        yield Tracker(None, store)
        return
    mlflow, experiment_id = open_mlflow(store)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({"llmlab.recipe": name, "llmlab.store": str(store.root)})
        mlflow.log_dict(resolved, "recipe.json")
        yield Tracker(mlflow, store, run.info.run_id)


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The command that serves the MLflow UI on the tracking store."""
    import sys

    uri = settings.tracking_uri()
    if uri is None:
        raise ConfigError("Tracking is switched off (LLMLAB_TRACKING_URI=off).", "Unset it to use MLflow.")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
