"""`trainer:events` v1: the training events a Discord bot (and anyone else) consumes.

The contract is /shared/contracts/trainer-events-v1.md: field names, types and `type` strings
are public. Add optional fields only; never rename or retype. Publishing is best effort: a
failed publish is logged and never fails the run.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator
from redis import Redis
from redis.exceptions import RedisError

from model_trainer.store.fencing import Command, DirectWriter, Writer
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.store.events")


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    run_id: str
    user_id: int


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number (NaN/inf is not valid JSON for consumers)")
    return value


class TrainStarted(_Event):
    type: Literal["trainer.train.started.v1"] = "trainer.train.started.v1"
    model_family: str
    model_size: str
    total_epochs: int
    queue: str
    cpu_cores: int | None = None
    memory_mb: int | None = None
    optimal_threads: int | None = None
    optimal_workers: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    # Additions beyond the required v1 fields (allowed: consumers ignore what they don't know).
    total_steps: int | None = None
    resumed_from_step: int | None = None
    optimizer: str | None = None  # "adamw" or "muon"


class TrainProgress(_Event):
    type: Literal["trainer.train.progress.v1"] = "trainer.train.progress.v1"
    epoch: int
    total_epochs: int
    step: int
    loss: float
    samples_per_sec: float | None = None
    main_rss_mb: int | None = None
    workers_rss_mb: int | None = None
    worker_count: int | None = None
    cgroup_usage_mb: int | None = None
    cgroup_limit_mb: int | None = None
    cgroup_pct: float | None = None
    total_steps: int | None = None
    tokens_per_sec: float | None = None
    eta_seconds: float | None = None
    val_loss: float | None = None
    lr: float | None = None

    _check = field_validator("loss", "val_loss", "lr", "samples_per_sec", "tokens_per_sec")(_finite)


class TrainCompleted(_Event):
    type: Literal["trainer.train.completed.v1"] = "trainer.train.completed.v1"
    loss: float
    perplexity: float
    artifact_path: str

    _check = field_validator("loss", "perplexity")(_finite)


class TrainFailed(_Event):
    type: Literal["trainer.train.failed.v1"] = "trainer.train.failed.v1"
    error_kind: Literal["user", "system"]
    message: str
    status: Literal["failed", "canceled"]


TrainerEvent = TrainStarted | TrainProgress | TrainCompleted | TrainFailed


def train_failed(
    run_id: str, user_id: int, message: str, error_kind: str, *, cancelled: bool
) -> TrainFailed:
    """The `failed` event of a run: `error_kind` "user" stays so, anything else is "system"."""
    return TrainFailed(
        request_id=run_id,
        run_id=run_id,
        user_id=user_id,
        error_kind="user" if error_kind == "user" else "system",
        message=message,
        status="canceled" if cancelled else "failed",
    )


def encode(event: TrainerEvent) -> str:
    """Compact JSON, optional fields that are unset left out."""
    return event.model_dump_json(exclude_none=True)


class EventPublisher:
    """Publishes events; a run's owner passes its fenced writer, so that a worker that lost
    the run publishes nothing more about it (`LeaseLost` is raised, not swallowed)."""

    def __init__(self, redis: Redis, channel: str, writer: Writer | None = None) -> None:
        self._redis = redis
        self.channel = channel
        self._writer: Writer = writer or DirectWriter(redis)

    def with_writer(self, writer: Writer) -> EventPublisher:
        return EventPublisher(self._redis, self.channel, writer)

    def publish(self, event: TrainerEvent) -> bool:
        try:
            self._writer.write([self.command(event)])
        except RedisError as exc:
            log.warning(
                "could not publish %s: %s",
                event.type,
                exc,
                extra=log_fields("event_publish_failed", run_id=event.run_id),
            )
            return False
        return True

    def command(self, event: TrainerEvent) -> Command:
        """The PUBLISH, to go in the same atomic write as a status change."""
        return ("PUBLISH", self.channel, encode(event))
