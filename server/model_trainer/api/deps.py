"""What routes depend on, built once per app in `create_app` and passed in explicitly."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from model_trainer.api.callers import StreamCap
from model_trainer.api.generation import GenerationService
from model_trainer.api.quotas import Quotas
from model_trainer.api.readiness import ReadinessProbe
from model_trainer.api.remote import RemoteGuard
from model_trainer.databank import errors as bank_errors
from model_trainer.databank.client import DataBankClient
from model_trainer.errors import AppError, ErrorCode, NotFoundError
from model_trainer.jobs.queue import JobQueue
from model_trainer.settings import Settings
from model_trainer.store.keys import (
    worker_memory_key,
    workers_key,
)
from model_trainer.store.records import JobStores, as_str
from model_trainer.training.memory import gib


class ApiContext(JobStores):
    """The app's services. Tests build one with their own Redis, queue name and Data Bank."""

    def __init__(
        self, settings: Settings, redis: Redis, queue: JobQueue, databank: DataBankClient
    ) -> None:
        super().__init__(redis)
        self.settings = settings
        self.redis = redis
        self.queue = queue
        self.databank = databank
        self.quotas = Quotas(settings, redis, self.runs, [self.runs, self.tokenizers, self.evals])
        limits = settings.limits
        self.databank_guard = RemoteGuard(
            "Data Bank", limits.remote_max_concurrent, limits.remote_cooldown_sec
        )
        self.generation = GenerationService(settings, databank, self.databank_guard)
        self.streams = StreamCap(limits.sse_max_per_caller, "limits.sse_max_per_caller")
        self.readiness = ReadinessProbe(settings.health.probe_interval_sec)


async def get_context(request: Request) -> ApiContext:
    # `async` (it does no I/O): a plain `def` would cost every request a thread-pool hop.
    ctx = request.app.state.ctx
    if not isinstance(ctx, ApiContext):
        raise RuntimeError("app started without an ApiContext")
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]


def require_corpus(ctx: ApiContext, file_id: str) -> None:
    """Refuse at submit time a corpus Data Bank does not have (not minutes later in a job)."""
    try:
        with ctx.databank_guard.call("check the corpus"):
            ctx.databank.head(file_id)
    except bank_errors.NotFound as exc:
        raise NotFoundError(
            f"corpus_file_id {file_id} not found in Data Bank: upload the corpus first "
            "(POST /files on Data Bank) and use the file_id it answers"
        ) from exc
    except bank_errors.DataBankError as exc:
        raise AppError(
            ErrorCode.UPSTREAM_ERROR,
            f"cannot check the corpus in Data Bank: {exc.message}",
        ) from exc


def artifact_available(ctx: ApiContext, file_id: str | None) -> bool:
    """Whether Data Bank still holds an artifact we point to."""
    if file_id is None:
        return False
    try:
        with ctx.databank_guard.call("check the artifact"):
            return ctx.databank.exists(file_id)
    except bank_errors.DataBankError as exc:
        raise AppError(
            ErrorCode.UPSTREAM_ERROR, f"cannot check the artifact in Data Bank: {exc.message}"
        ) from exc


def live_workers(ctx: ApiContext, queue: str) -> int:
    """Workers of `queue` seen within `worker_presence_ttl_sec` (what /readyz counts)."""
    ttl = ctx.settings.recovery.worker_presence_ttl_sec
    return int(ctx.redis.zcount(workers_key(queue), time.time() - ttl, "+inf"))


def largest_live_worker_memory(ctx: ApiContext, queue: str) -> tuple[str, int] | None:
    """The live worker of `queue` (seen within `worker_presence_ttl_sec`, as /readyz counts)
    that reported the most memory, and that memory in bytes; None when none reported."""
    ttl = ctx.settings.recovery.worker_presence_ttl_sec
    live = ctx.redis.zrangebyscore(workers_key(queue), time.time() - ttl, "+inf")
    names = [s for s in (as_str(v) for v in live) if s]
    if not names:
        return None
    reported = ctx.redis.hmget(worker_memory_key(queue), names)
    found = [
        (name, int(text))
        for name, text in zip(names, (as_str(v) for v in reported), strict=True)
        if text is not None and text.isdigit()
    ]
    return max(found, key=lambda item: item[1]) if found else None


@dataclass(frozen=True)
class MemoryLimit:
    """What one run may use: `fraction` of a worker's `memory`, and where `memory` came from."""

    memory: int
    fraction: float
    source: str

    @property
    def bytes(self) -> int:
        return int(self.memory * self.fraction)

    def describe(self) -> str:
        return f"{gib(self.bytes)}: {self.fraction:g} of {gib(self.memory)}, {self.source}"


def memory_limit(ctx: ApiContext, queue: str) -> MemoryLimit | None:
    """`admission.worker_memory_bytes` when set, else the largest memory a live worker of
    `queue` (the one the run will wait on) reported; None when neither is known (no worker
    up yet: runs are admitted)."""
    admission = ctx.settings.admission
    if admission.worker_memory_bytes is not None:
        return MemoryLimit(
            admission.worker_memory_bytes,
            admission.memory_fraction,
            "the worker memory set in ADMISSION__WORKER_MEMORY_BYTES",
        )
    largest = largest_live_worker_memory(ctx, queue)
    if largest is None:
        return None
    name, memory = largest
    return MemoryLimit(
        memory, admission.memory_fraction, f"the memory of the largest live worker ({name})"
    )
