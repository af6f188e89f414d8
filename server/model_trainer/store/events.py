"""`trainer:events`: what jobs tell the consumers on the channel, in two dialects.

Jobs say what happened once, as a fact (`JobStarted`, `RunConfigured`, `RunProgressed`,
`JobCompleted`, `JobFailed`); each dialect the operator enables (`APP__EVENTS_DIALECTS`)
renders it as its own messages on the same channel, and each consumer drops the other's:

- `v1` (/shared/contracts/trainer-events-v1.md): `trainer.train.{started,progress,completed,
  failed}.v1`, keyed by `run_id`; training runs only.
- `platform` (/shared/contracts/trainer-events-platform.md, the protocol of today's public
  Discord bot): `trainer.metrics.{config,progress,completed}.v1` and
  `trainer.job.{started,progress,completed,failed}.v1`, keyed by `job_id`; every job kind
  (a tokenizer's or an evaluation's job events too), and nothing for `user_id` 0, which the
  bot cannot DM (it would stop listening: the contract's §5).

Both contracts are public: field names, types and `type` strings stay exactly as written
there; add optional fields only. Publishing is best effort: a failed publish is logged and
never fails the job. Every number is finite (NaN is not JSON to most consumers).
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator
from redis import Redis
from redis.exceptions import RedisError

from model_trainer.store.fencing import Command, DirectWriter, Writer
from model_trainer.store.keys import JobKind
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.store.events")


class Dialect(StrEnum):
    V1 = "v1"
    PLATFORM = "platform"


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number (NaN/inf is not valid JSON for consumers)")
    return value


# Perplexities are exp(loss), which overflows a double past ~709: capped, as the evaluator
# caps its own (training/evaluate.py), so that every perplexity sent is a finite number.
MAX_PERPLEXITY_LOSS = 700.0
# The bot puts a failure's message in one embed field (1,024 characters with its code block).
MAX_MESSAGE_CHARS = 1000


CANCELLED_LABELS = {
    JobKind.RUN: "Training",
    JobKind.TOKENIZER: "Tokenizer training",
    JobKind.EVAL: "Evaluation",
    JobKind.SWEEP: "Sweep",
}


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_PERPLEXITY_LOSS))


# --- facts: what happened, said once ---------------------------------------------------
class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind
    job_id: str
    user_id: int  # 0: nobody to notify


class JobStarted(_Fact):
    """A job's first attempt began (sent once per job)."""

    queue: str


class RunConfigured(_Fact):
    """A run's training starts: what it trains and on what (sent once per run)."""

    kind: JobKind = JobKind.RUN
    model_family: str
    model_size: str
    total_epochs: int  # every event of the run says this same value
    queue: str
    optimizer: str
    cpu_cores: int | None = None
    memory_mb: int | None = None
    optimal_threads: int | None = None
    batch_size: int
    learning_rate: float
    total_steps: int | None = None
    resumed_from_step: int | None = None


class RunProgressed(_Fact):
    kind: JobKind = JobKind.RUN
    epoch: int  # passes over the training split done, from 0
    total_epochs: int  # RunConfigured's
    step: int
    total_steps: int
    loss: float  # mean training loss over the steps since the last report
    grad_norm: float | None  # mean total gradient norm before clipping, same steps
    tokens_per_sec: float | None
    samples_per_sec: float | None
    eta_seconds: float | None
    val_loss: float | None  # the latest validation loss
    lr: float
    main_rss_mb: int | None = None

    _check = field_validator("loss", "grad_norm", "val_loss", "lr", "tokens_per_sec")(_finite)


class RunResult(BaseModel):
    """A completed run's final evaluation (or, with none, its last training loss)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: float
    evaluated: bool  # False: `loss` is the last training loss (v1 then sends no completed)
    artifact_path: str

    _check = field_validator("loss")(_finite)


class JobCompleted(_Fact):
    file_id: str | None  # the artifact in Data Bank (an evaluation has none)
    file_bytes: int | None
    run: RunResult | None = None


class JobFailed(_Fact):
    error_kind: Literal["user", "system"]
    message: str
    cancelled: bool


Fact = JobStarted | RunConfigured | RunProgressed | JobCompleted | JobFailed


def job_failed(
    kind: JobKind, job_id: str, user_id: int, message: str, error_kind: str, *, cancelled: bool
) -> JobFailed:
    """`error_kind` "user" stays so; anything else (transient, fatal) is "system"."""
    return JobFailed(
        kind=kind,
        job_id=job_id,
        user_id=user_id,
        error_kind="user" if error_kind == "user" else "system",
        message=message,
        cancelled=cancelled,
    )


# --- v1: trainer-events-v1.md ---------------------------------------------------------------
class _V1(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    run_id: str
    user_id: int


class TrainStarted(_V1):
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


class TrainProgress(_V1):
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
    grad_norm: float | None = None


class TrainCompleted(_V1):
    type: Literal["trainer.train.completed.v1"] = "trainer.train.completed.v1"
    loss: float
    perplexity: float
    artifact_path: str


class TrainFailed(_V1):
    type: Literal["trainer.train.failed.v1"] = "trainer.train.failed.v1"
    error_kind: Literal["user", "system"]
    message: str
    status: Literal["failed", "canceled"]


V1Event = TrainStarted | TrainProgress | TrainCompleted | TrainFailed


def v1_events(fact: Fact) -> list[V1Event]:
    """v1 speaks of training runs only, and of a completion only with a final evaluation."""
    if fact.kind is not JobKind.RUN:
        return []
    match fact:
        case RunConfigured():
            return [
                TrainStarted(
                    request_id=fact.job_id,
                    run_id=fact.job_id,
                    user_id=fact.user_id,
                    model_family=fact.model_family,
                    model_size=fact.model_size,
                    total_epochs=fact.total_epochs,
                    queue=fact.queue,
                    cpu_cores=fact.cpu_cores,
                    memory_mb=fact.memory_mb,
                    optimal_threads=fact.optimal_threads,
                    optimal_workers=1,
                    batch_size=fact.batch_size,
                    learning_rate=fact.learning_rate,
                    total_steps=fact.total_steps,
                    resumed_from_step=fact.resumed_from_step,
                    optimizer=fact.optimizer,
                )
            ]
        case RunProgressed():
            return [
                TrainProgress(
                    request_id=fact.job_id,
                    run_id=fact.job_id,
                    user_id=fact.user_id,
                    epoch=fact.epoch,
                    total_epochs=fact.total_epochs,
                    step=fact.step,
                    loss=fact.loss,
                    samples_per_sec=fact.samples_per_sec,
                    main_rss_mb=fact.main_rss_mb,
                    total_steps=fact.total_steps,
                    tokens_per_sec=fact.tokens_per_sec,
                    eta_seconds=fact.eta_seconds,
                    val_loss=fact.val_loss,
                    lr=fact.lr,
                    grad_norm=fact.grad_norm,
                )
            ]
        case JobCompleted(run=RunResult(evaluated=True) as run):
            return [
                TrainCompleted(
                    request_id=fact.job_id,
                    run_id=fact.job_id,
                    user_id=fact.user_id,
                    loss=run.loss,
                    perplexity=perplexity(run.loss),
                    artifact_path=run.artifact_path,
                )
            ]
        case JobFailed():
            return [
                TrainFailed(
                    request_id=fact.job_id,
                    run_id=fact.job_id,
                    user_id=fact.user_id,
                    error_kind=fact.error_kind,
                    message=fact.message,
                    status="canceled" if fact.cancelled else "failed",
                )
            ]
        case _:
            return []


# --- platform: trainer-events-platform.md -----------------------------------------------
class _Platform(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    user_id: int


class MetricsConfig(_Platform):
    type: Literal["trainer.metrics.config.v1"] = "trainer.metrics.config.v1"
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


class MetricsProgress(_Platform):
    type: Literal["trainer.metrics.progress.v1"] = "trainer.metrics.progress.v1"
    epoch: int
    total_epochs: int
    step: int
    train_loss: float
    train_ppl: float
    grad_norm: float
    samples_per_sec: float
    val_loss: float | None = None
    val_ppl: float | None = None


class MetricsCompleted(_Platform):
    type: Literal["trainer.metrics.completed.v1"] = "trainer.metrics.completed.v1"
    test_loss: float
    test_ppl: float
    artifact_path: str


class _PlatformJob(_Platform):
    domain: Literal["trainer"] = "trainer"


class PlatformJobStarted(_PlatformJob):
    type: Literal["trainer.job.started.v1"] = "trainer.job.started.v1"
    queue: str


class PlatformJobProgress(_PlatformJob):
    type: Literal["trainer.job.progress.v1"] = "trainer.job.progress.v1"
    progress: int  # percent of the planned steps, 0-99 until the job ends
    message: str | None = None


class PlatformJobCompleted(_PlatformJob):
    type: Literal["trainer.job.completed.v1"] = "trainer.job.completed.v1"
    result_id: str
    result_bytes: int


class PlatformJobFailed(_PlatformJob):
    type: Literal["trainer.job.failed.v1"] = "trainer.job.failed.v1"
    error_kind: Literal["user", "system"]
    message: str


PlatformEvent = (
    MetricsConfig
    | MetricsProgress
    | MetricsCompleted
    | PlatformJobStarted
    | PlatformJobProgress
    | PlatformJobCompleted
    | PlatformJobFailed
)


def platform_events(fact: Fact) -> list[PlatformEvent]:
    """The platform's messages for `fact`, in the order its producer sends them (§3)."""
    if fact.user_id == 0:
        return []  # the bot cannot DM nobody, and stops listening when it tries (§5)
    job_id, user_id = fact.job_id, fact.user_id
    match fact:
        case JobStarted():
            return [PlatformJobStarted(job_id=job_id, user_id=user_id, queue=fact.queue)]
        case RunConfigured():
            return [
                MetricsConfig(
                    job_id=job_id,
                    user_id=user_id,
                    model_family=fact.model_family,
                    model_size=fact.model_size,
                    total_epochs=fact.total_epochs,
                    queue=fact.queue,
                    cpu_cores=fact.cpu_cores,
                    memory_mb=fact.memory_mb,
                    optimal_threads=fact.optimal_threads,
                    optimal_workers=1,
                    batch_size=fact.batch_size,
                    learning_rate=fact.learning_rate,
                )
            ]
        case RunProgressed():
            val_ppl = perplexity(fact.val_loss) if fact.val_loss is not None else None
            percent = 100 * fact.step // max(fact.total_steps, 1)
            return [
                PlatformJobProgress(
                    job_id=job_id, user_id=user_id, progress=min(99, percent), message="training"
                ),
                MetricsProgress(
                    job_id=job_id,
                    user_id=user_id,
                    epoch=fact.epoch,
                    total_epochs=fact.total_epochs,
                    step=fact.step,
                    train_loss=fact.loss,
                    train_ppl=perplexity(fact.loss),
                    grad_norm=fact.grad_norm or 0.0,
                    samples_per_sec=fact.samples_per_sec or 0.0,
                    val_loss=fact.val_loss,
                    val_ppl=val_ppl,
                ),
            ]
        case JobCompleted():
            events: list[PlatformEvent] = []
            if fact.file_id is not None and fact.file_bytes is not None:
                events.append(
                    PlatformJobCompleted(
                        job_id=job_id,
                        user_id=user_id,
                        result_id=fact.file_id,
                        result_bytes=fact.file_bytes,
                    )
                )
            if fact.run is not None:
                # The DM labels these "Test"; they are the final evaluation's (validation
                # split), or the last training loss when the run had none, as their producer
                # falls back: a run's DM always ends.
                events.append(
                    MetricsCompleted(
                        job_id=job_id,
                        user_id=user_id,
                        test_loss=fact.run.loss,
                        test_ppl=perplexity(fact.run.loss),
                        artifact_path=fact.run.artifact_path,
                    )
                )
            return events
        case JobFailed():
            message, kind = fact.message, fact.error_kind
            if fact.cancelled:
                # As their producer says it, and "system": "user" would tell the user to fix a
                # configuration that was fine.
                message, kind = f"{CANCELLED_LABELS[fact.kind]} cancelled", "system"
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[: MAX_MESSAGE_CHARS - 1] + "…"
            return [
                PlatformJobFailed(job_id=job_id, user_id=user_id, error_kind=kind, message=message)
            ]


def encode(event: V1Event | PlatformEvent) -> str:
    """Compact JSON, optional fields that are unset left out."""
    return event.model_dump_json(exclude_none=True)


def messages(fact: Fact, dialects: frozenset[Dialect]) -> list[str]:
    """What goes on the channel for `fact`: v1's messages first, then the platform's (each
    dialect's in its own order)."""
    rendered: list[V1Event | PlatformEvent] = []
    if Dialect.V1 in dialects:
        rendered += v1_events(fact)
    if Dialect.PLATFORM in dialects:
        rendered += platform_events(fact)
    return [encode(event) for event in rendered]


class EventPublisher:
    """Publishes facts in every enabled dialect; a job's owner passes its fenced writer, so
    that a worker that lost the job publishes nothing more about it (`LeaseLost` is raised,
    not swallowed)."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        dialects: frozenset[Dialect] = frozenset(Dialect),
        writer: Writer | None = None,
    ) -> None:
        self._redis = redis
        self.channel = channel
        self.dialects = dialects
        self._writer: Writer = writer or DirectWriter(redis)

    def with_writer(self, writer: Writer) -> EventPublisher:
        return EventPublisher(self._redis, self.channel, self.dialects, writer)

    def publish(self, fact: Fact) -> bool:
        commands = self.commands(fact)
        if not commands:
            return True
        try:
            self._writer.write(commands)
        except RedisError as exc:
            log.warning(
                "could not publish the %s's %s: %s",
                fact.kind,
                type(fact).__name__,
                exc,
                extra=log_fields("event_publish_failed", job_id=fact.job_id),
            )
            return False
        return True

    def commands(self, fact: Fact) -> list[Command]:
        """The PUBLISHes, to go in the same atomic write as a status change."""
        return [("PUBLISH", self.channel, m) for m in messages(fact, self.dialects)]
