"""A run in the operator's MLflow (`TRACKING__MLFLOW_TRACKING_URI`): params, curve, artifact.

One MLflow run per training run, named by its id and tagged `model_trainer.run_id`; its
MLflow id is kept in the job's hash, so an attempt that resumes on another worker logs to
the same MLflow run. The parameters go at the start, the metric rows as the loop reports
them (loss, validation loss, lr, tokens/s), and at the end the final evaluation and the
artifact folder (TensorBoard files included); the MLflow run ends FINISHED, FAILED or
KILLED with the job. Best effort, like the events: MLflow being down is logged and never
fails the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from redis import Redis

from model_trainer.settings import TrackingSettings
from model_trainer.store.keys import JobField, job_key
from model_trainer.store.records import as_str
from model_trainer.training.config import TrainingSpec
from model_trainer.training.tensorboard import hyper_parameters
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")

EndStatus = Literal["FINISHED", "FAILED", "KILLED"]


class MlflowRun:
    """The MLflow side of one training run (see the module doc)."""

    def __init__(self, settings: TrackingSettings, redis: Redis, run_id: str) -> None:
        # Imported here: the MLflow client is ~1 s of imports, for workers that use it.
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        self._settings = settings
        self._redis = redis
        self._run_id = run_id
        self._mlflow_id: str | None = None
        self._broken = False

    def start(self, config: TrainingSpec) -> None:
        """Create the MLflow run (or find the one an earlier attempt made) and log params."""

        def start() -> None:
            known = as_str(self._redis.hget(job_key(self._run_id), JobField.MLFLOW_RUN.value))
            if known:
                self._mlflow_id = known
                self._client.update_run(known, status="RUNNING")
                return
            created = self._client.create_run(
                self._experiment_id(),
                run_name=self._run_id,
                tags={"model_trainer.run_id": self._run_id},
            )
            self._mlflow_id = created.info.run_id
            self._redis.hset(job_key(self._run_id), JobField.MLFLOW_RUN.value, self._mlflow_id)
            for name, value in hyper_parameters(config).items():
                self._client.log_param(self._mlflow_id, name, value)

        self._quietly("start", start)

    def log_row(
        self, step: int, values: dict[str, float | None], when: float | None = None
    ) -> None:
        from mlflow.entities import Metric

        stamp = int((when or time.time()) * 1000)
        metrics = [
            Metric(key=name, value=value, timestamp=stamp, step=step)
            for name, value in values.items()
            if value is not None
        ]
        mlflow_id = self._mlflow_id
        if mlflow_id is None or not metrics:
            return

        def log_batch() -> None:
            self._client.log_batch(mlflow_id, metrics=metrics)

        self._quietly("metrics", log_batch)

    def finish(
        self, status: EndStatus, final: dict[str, float] | None = None, folder: Path | None = None
    ) -> None:
        mlflow_id = self._mlflow_id
        if mlflow_id is None:
            return

        def finish() -> None:
            for name, value in (final or {}).items():
                self._client.log_metric(mlflow_id, f"final/{name}", value)
            if folder is not None:
                self._client.log_artifacts(mlflow_id, str(folder), artifact_path="model")
            self._client.set_terminated(mlflow_id, status=status)

        self._quietly("the end", finish)

    def _experiment_id(self) -> str:
        name = self._settings.mlflow_experiment
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = self._settings.mlflow_artifact_location or None
        return str(self._client.create_experiment(name, artifact_location=location))

    def _quietly(self, what: str, call: Callable[[], None]) -> None:
        if self._broken:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - MLflow's errors are many; none fails the run
            log.warning(
                "MLflow: could not log %s (%s); the run goes on without it",
                what,
                exc,
                extra=log_fields("mlflow_failed"),
            )
            if what == "start":
                self._broken = True  # nothing to log to
