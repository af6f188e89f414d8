"""What every job shares: the worker's services, status, heartbeat, logs, and failure policy.

Training runs are owned through a lease and settle their own failures (jobs/ownership.py);
tokenizer and evaluation jobs are short and rely on RQ's retries as below.

A job body runs inside `running_job(...)`, which marks the record running, beats its heartbeat
on a thread, copies its log lines to Redis and the job folder, and turns the way the body ends
into a status. A job cancelled while it waited in the queue gets `None` instead of its
`JobControl`; the caller returns at once, and the job ends as a success RQ does not retry:

| body ends with            | status     | RQ sees          | event (runs)                 |
| ------------------------- | ---------- | ---------------- | ---------------------------- |
| (cancelled before start)  | cancelled  | success          | none (the API cancelled it)  |
| return                    | (body set) | success          | (body publishes completed)   |
| `UserError`               | failed     | success (no retry) | failed, error_kind user    |
| `JobCancelled`            | cancelled  | success          | failed, status canceled      |
| `ArtifactUploadFailed`    | failed     | success          | failed, error_kind system    |
| `WorkerShutdown`          | queued     | failure -> retry | none (it resumes)            |
| anything else, retries left | queued   | failure -> retry | none                         |
| anything else, last try   | failed     | failure          | failed, error_kind system    |
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from model_trainer.databank.client import DataBankClient
from model_trainer.errors import ErrorCode, UserError
from model_trainer.jobs.failures import ArtifactUploadFailed, classify
from model_trainer.jobs.queue import RQJobQueue
from model_trainer.settings import Settings, load_settings
from model_trainer.shutdown import WorkerShutdown, stop_requested
from model_trainer.store.events import EventPublisher, train_failed
from model_trainer.store.keys import RUN_KEYS, TOKENIZER_KEYS
from model_trainer.store.records import (
    AnyStatusStore,
    ErrorInfo,
    RunProgress,
    Status,
    StatusStore,
    TokenizerSummary,
)
from model_trainer.store.runlog import capture_job_logs
from service_common.jsonlog import bound, log_fields, run_id_var, tokenizer_id_var

log = logging.getLogger("model_trainer.jobs")

Kind = Literal["run", "tokenizer"]


class JobCancelled(Exception):
    """The user cancelled the job; raised at a safe point by the job body."""


class WorkerContext:
    """The worker's services, built once per worker process (jobs are forked from it)."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        databank: DataBankClient,
        worker_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.databank = databank
        self.worker_name = worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.queue = RQJobQueue(redis, settings.rq)
        self.runs = StatusStore(redis, RUN_KEYS, RunProgress)
        self.tokenizers = StatusStore(redis, TOKENIZER_KEYS, TokenizerSummary)
        self.events = EventPublisher(redis, settings.app.events_channel)

    @classmethod
    def from_settings(cls, settings: Settings, worker_name: str | None = None) -> WorkerContext:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
        ctx = cls(settings, redis, DataBankClient("http://unused"), worker_name)
        ctx.databank = ctx.databank_client()
        return ctx

    def databank_client(self, max_retries: int = 4) -> DataBankClient:
        """A Data Bank client; checkpoints use one that gives up fast (they retry later)."""
        app = self.settings.app
        key = app.data_bank_api_key
        return DataBankClient(
            app.data_bank_api_url,
            key.get_secret_value() if key else None,
            max_retries=max_retries,
        )

    def store(self, kind: Kind) -> AnyStatusStore:
        return self.runs if kind == "run" else self.tokenizers


_context: WorkerContext | None = None


def worker_context() -> WorkerContext:
    """The process's context; the worker builds it before forking so jobs inherit it."""
    global _context
    if _context is None:
        _context = WorkerContext.from_settings(load_settings())
    return _context


def set_worker_context(ctx: WorkerContext) -> None:
    global _context
    _context = ctx


class JobControl:
    """Handed to a job body: its id, folder, and the checks it makes at safe points."""

    def __init__(self, ctx: WorkerContext, kind: Kind, record_id: str, folder: Path) -> None:
        self.ctx = ctx
        self.kind = kind
        self.record_id = record_id
        self.folder = folder
        self.store = ctx.store(kind)

    def cancelled(self) -> bool:
        return self.store.is_cancelled(self.record_id)

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"{self.kind} {self.record_id} cancelled by request")


class _Heartbeat:
    def __init__(self, store: AnyStatusStore, record_id: str, interval: float, ttl: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, record_id, interval, ttl), daemon=True
        )

    def _run(self, store: AnyStatusStore, record_id: str, interval: float, ttl: int) -> None:
        while not self._stop.is_set():
            try:
                store.heartbeat(record_id, ttl)
            except (RedisError, OSError) as exc:
                # A missed beat is not worth failing a day-long run for; the next one may land.
                log.warning("heartbeat failed: %s", exc, extra=log_fields("heartbeat_failed"))
            self._stop.wait(interval)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _retries_left() -> int:
    job = get_current_job()
    left = job.retries_left if job is not None else None
    return int(left) if left else 0


@contextmanager
def running_job(
    ctx: WorkerContext,
    kind: Kind,
    record_id: str,
    folder: Path,
    user_id: int = 0,
    on_failure: Callable[[], None] | None = None,
) -> Iterator[JobControl | None]:
    """Run a job body with status, heartbeat, logs and the failure policy of the table above.

    Yields None when the job was cancelled before it started: the body must return at once.
    """
    var = run_id_var if kind == "run" else tokenizer_id_var
    store = ctx.store(kind)
    control = JobControl(ctx, kind, record_id, folder)
    app = ctx.settings.app
    with (
        bound(var, record_id),
        capture_job_logs(ctx.redis, record_id, folder, app.log_stream_maxlen),
    ):
        if store.status(record_id) is Status.CANCELLED or control.cancelled():
            log.info("cancelled before it started", extra=log_fields("job_skipped"))
            store.set_status(record_id, Status.CANCELLED, "cancelled before it started")
            # A context manager must yield once: returning here would raise "generator didn't
            # yield" in the worker, which RQ counts as a failure and retries.
            yield None
            return
        store.set_status(record_id, Status.RUNNING)
        try:
            with _Heartbeat(store, record_id, app.heartbeat_interval_sec, app.heartbeat_ttl_sec):
                yield control
        except UserError as exc:
            error = ErrorInfo(kind="user", code=exc.code.value, message=exc.message)
            _fail(ctx, kind, record_id, user_id, exc.message, "user", on_failure, error)
        except JobCancelled:
            log.info("stopped: cancelled by request", extra=log_fields("job_cancelled"))
            _cleanup(on_failure)
            store.set_status(record_id, Status.CANCELLED, "cancelled by request")
            _publish_failed(ctx, kind, record_id, user_id, "cancelled by request", "user", True)
        except ArtifactUploadFailed as exc:
            _fail(ctx, kind, record_id, user_id, exc.message, "system", on_failure, classify(exc))
        except WorkerShutdown:
            log.info(
                "interrupted by worker shutdown; will resume", extra=log_fields("job_interrupted")
            )
            store.set_status(
                record_id, Status.QUEUED, "interrupted by worker shutdown; will resume"
            )
            raise
        except Exception as exc:
            left = _retries_left()
            log.exception(
                "job failed with a system error (%d retries left)",
                left,
                extra=log_fields("job_system_error", error_code=ErrorCode.INTERNAL_ERROR.value),
            )
            error = classify(exc)
            if left > 0:
                message = f"{error.message}; retrying ({left} left)"
                store.set_status(record_id, Status.QUEUED, message, error=error)
            else:
                _fail(ctx, kind, record_id, user_id, error.message, "system", on_failure, error)
            raise


def _cleanup(on_failure: Callable[[], None] | None) -> None:
    if on_failure is not None:
        on_failure()


def _fail(
    ctx: WorkerContext,
    kind: Kind,
    record_id: str,
    user_id: int,
    message: str,
    error_kind: Literal["user", "system"],
    on_failure: Callable[[], None] | None,
    error: ErrorInfo,
) -> None:
    log.error("failed: %s", message, extra=log_fields("job_failed", error_code=error.code))
    _cleanup(on_failure)
    store = ctx.store(kind)
    store.clear_file_id(record_id)  # a failed job leaves no pointer
    store.set_status(record_id, Status.FAILED, message, error=error)
    _publish_failed(ctx, kind, record_id, user_id, message, error_kind, False)


def _publish_failed(
    ctx: WorkerContext,
    kind: Kind,
    record_id: str,
    user_id: int,
    message: str,
    error_kind: Literal["user", "system"],
    cancelled: bool,
) -> None:
    if kind != "run":
        return  # trainer:events is about training runs only
    ctx.events.publish(train_failed(record_id, user_id, message, error_kind, cancelled=cancelled))


def stop_check(job: JobControl) -> bool:
    return stop_requested.is_set() or job.cancelled()


def raise_stop_reason(job: JobControl) -> None:
    """After a library stopped early: say why, as the exception the runner expects."""
    if stop_requested.is_set():
        raise WorkerShutdown("worker shutting down; job will be retried")
    raise JobCancelled(f"{job.kind} {job.record_id} cancelled by request")
