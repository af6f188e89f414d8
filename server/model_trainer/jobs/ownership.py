"""A worker's hold on one job of any kind: its lease, and how each attempt at it ends.

Tokenizers, training runs and evaluations share this life; RQ only dispatches (it retries
nothing, and nothing is read back from its registries as truth):

    take the lease (or leave at once: another worker owns the job, or it has ended)
    mark the job running; renew the lease and the heartbeat every third of its TTL
    run the job body with stores whose writes are fenced by the lease
    turn the way the body ended into the job's next state:

| body ends with       | status    | next                                  | event            |
| -------------------- | --------- | ------------------------------------- | ---------------- |
| `complete(...)`      | completed | -                                     | completed        |
| `UserError`          | failed    | -                                     | failed, user     |
| transient error      | queued    | enqueued after a backoff; attempt+1   | none             |
| ... last attempt     | failed    | -                                     | failed, system   |
| fatal error          | failed    | -                                     | failed, system   |
| `JobCancelled`       | cancelled | -                                     | failed, cancelled|
| `WorkerShutdown`     | queued    | enqueued at once; not an attempt      | none             |
| `JobPaused`          | paused    | enqueued by `resume`; not an attempt  | none             |
| `LeaseLost`          | untouched | the new owner carries on              | none             |
| (process killed)     | running   | a reaper re-enqueues it; attempt+1    | (failed if last) |

The job's first attempt publishes `JobStarted` once it is running; events are facts that
store/events.py renders in each enabled dialect. Each of these state changes is one fenced
write (status, message, error, lease release and event together), so it happens exactly
once and only while this worker owns the job.
A Redis outage does not end a job: the renewal thread keeps trying, progress writes are
skipped (metric points wait), and the final writes wait up to `redis_wait_sec` for Redis.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from redis.exceptions import RedisError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from model_trainer.errors import ErrorCode, JobCancelled, JobPaused, LeaseLost, WorkerShutdown
from model_trainer.jobs.context import WorkerContext
from model_trainer.jobs.failures import classify, retry_delay
from model_trainer.manifest import write_manifest
from model_trainer.store.events import Fact, JobCompleted, JobStarted, RunResult, job_failed
from model_trainer.store.fencing import Command, FencedWriter, Lease, NotAcquired
from model_trainer.store.keys import JobField, JobKind, job_key
from model_trainer.store.records import ErrorInfo, ProgressT, Status, StatusStore, hdel, hset
from model_trainer.store.runlog import MetricsWriter, capture_job_logs
from service_common.databank_contract import FileInfo
from service_common.jsonlog import bound, log_fields, run_id_var, tokenizer_id_var

log = logging.getLogger("model_trainer.jobs")

LOST_MESSAGE = "stopped: the job was taken over by another worker; nothing written"


class JobOwner:
    """What the job body gets: fenced stores for its job and the checks it makes."""

    def __init__(
        self, ctx: WorkerContext, kind: JobKind, job_id: str, user_id: int, lease: Lease
    ) -> None:
        self.ctx = ctx
        self.kind = kind
        self.job_id = job_id
        self.user_id = user_id
        self.lease = lease
        self.writer: FencedWriter = lease.writer()
        self.store = ctx.store(kind).with_writer(self.writer)
        self.keys = self.store.keys
        self.events = ctx.events.with_writer(self.writer)
        self.metrics = MetricsWriter(ctx.redis, job_id, self.writer)
        self.lost = threading.Event()
        self._settings = ctx.settings.recovery

    def fenced(self, store: StatusStore[ProgressT]) -> StatusStore[ProgressT]:
        """`store` with its writes fenced by this job's lease."""
        return store.with_writer(self.writer)

    # --- checks the body makes at safe points ----------------------------------------
    def check(self) -> None:
        """Raise `LeaseLost` once the renewal thread found another owner."""
        if self.lost.is_set():
            raise LeaseLost(f"{self.kind} {self.job_id}: another worker owns it now")

    def cancelled(self) -> bool:
        try:
            return self.ctx.store(self.kind).is_cancelled(self.job_id)
        except RedisError:
            return False  # cannot tell during an outage: keep working

    def hand_back_requested(self) -> bool:
        return self.ctx.stop_requested.is_set()

    def pause_requested(self) -> bool:
        try:
            return bool(self.ctx.redis.hexists(job_key(self.job_id), JobField.PAUSE.value))
        except RedisError:
            return False  # cannot tell during an outage: keep working

    def should_stop(self) -> bool:
        """For libraries that take a stop check: the worker is stopping or the user cancelled."""
        return self.hand_back_requested() or self.cancelled()

    def stop_if_asked(self) -> None:
        """A safe point between phases: raise what ends the attempt here, if anything does."""
        self.check()
        if self.hand_back_requested():
            raise WorkerShutdown(f"{self.kind} {self.job_id}: the worker is shutting down")
        if self.cancelled():
            raise JobCancelled(f"{self.kind} {self.job_id} cancelled by request")
        if self.pause_requested():
            raise JobPaused(f"{self.kind} {self.job_id} paused by request")

    def attempts(self) -> int:
        raw = self.store.field(self.job_id, JobField.ATTEMPTS)
        return int(raw) if raw else 0

    # --- writes that must land --------------------------------------------------------
    def when_redis_is_back(self, what: str, write: Callable[[], None]) -> None:
        """Run `write`, retrying while Redis is unreachable (up to `redis_wait_sec`)."""

        def log_wait(state: RetryCallState) -> None:
            log.warning(
                "Redis unavailable while recording %s (%s); retrying in %.1f s",
                what,
                state.outcome.exception() if state.outcome else None,
                state.upcoming_sleep,
                extra=log_fields("redis_wait", error_code=ErrorCode.REDIS_UNAVAILABLE.value),
            )

        for attempt in Retrying(
            stop=stop_after_delay(self._settings.redis_wait_sec),
            wait=wait_exponential(multiplier=0.5, max=5.0),
            retry=retry_if_exception_type(RedisError),
            before_sleep=log_wait,
            reraise=True,
        ):
            with attempt:
                write()

    def end(
        self,
        status: Status,
        message: str,
        *,
        error: ErrorInfo | None = None,
        event: Fact | None = None,
        also: tuple[Command, ...] = (),
    ) -> None:
        """One fenced write: the new status, the event, and the lease given up."""
        commands = (*also, self.lease.release_command())
        if event is not None:
            commands = (*self.events.commands(event), *commands)
        self.when_redis_is_back(
            f"status {status.value}",
            lambda: self.store.set_status(self.job_id, status, message, error=error, also=commands),
        )

    def announce_start(self, queue: str) -> None:
        """`JobStarted`, once per job (not once per attempt)."""
        if self.ctx.redis.hsetnx(job_key(self.job_id), JobField.ANNOUNCED.value, "1"):
            self.events.publish(
                JobStarted(kind=self.kind, job_id=self.job_id, user_id=self.user_id, queue=queue)
            )

    def complete(
        self,
        message: str,
        *,
        artifact: FileInfo | None = None,
        run: RunResult | None = None,
        also: tuple[Command, ...] = (),
    ) -> None:
        """`artifact`: what the job uploaded to Data Bank; `run`: a run's final result."""
        event = JobCompleted(
            kind=self.kind,
            job_id=self.job_id,
            user_id=self.user_id,
            file_id=artifact.file_id if artifact else None,
            file_bytes=artifact.size if artifact else None,
            run=run,
        )
        self.end(Status.COMPLETED, message, event=event, also=also)
        log.info(message, extra=log_fields("job_completed"))

    def fail(self, error: ErrorInfo, folder: Path) -> None:
        log.error(
            "failed (%s): %s",
            error.kind,
            error.message,
            extra=log_fields("job_failed", error_code=error.code),
        )
        # The job folder's manifest says why, beside its logs (a failed job has no artifact).
        # A courtesy to whoever reads the disk: the record is the truth, and a folder that
        # cannot be written (maybe why the job failed) must not keep the job from ending.
        try:
            write_manifest(
                folder,
                {f"{self.kind}_id": self.job_id, "status": "failed", "error": error.model_dump()},
            )
        except OSError as exc:
            log.warning("cannot write the failed job's manifest: %s", exc)
        self.end(
            Status.FAILED,
            error.message,
            error=error,
            event=job_failed(
                self.kind, self.job_id, self.user_id, error.message, error.kind, cancelled=False
            ),
            also=(hdel(self.job_id, JobField.FILE_ID),),
        )

    def cancel(self, message: str) -> None:
        log.info("stopped: %s", message, extra=log_fields("job_cancelled"))
        self.end(
            Status.CANCELLED,
            message,
            event=job_failed(self.kind, self.job_id, self.user_id, message, "user", cancelled=True),
        )

    def retry_later(self, error: ErrorInfo, folder: Path) -> None:
        """A transient failure: back on the queue after a backoff, or failed when spent."""
        attempt = self.attempts() + 1
        limit = self._settings.max_attempts
        if attempt >= limit:
            self.fail(
                error.model_copy(
                    update={"message": f"{error.message} (gave up after {attempt} attempts)"}
                ),
                folder,
            )
            return
        # Jitter spreads retries out; it needs no cryptographic randomness.
        delay = retry_delay(attempt, self._settings, random.Random())  # noqa: S311
        message = f"{error.message}; retrying in {delay:.0f} s (attempt {attempt + 1} of {limit})"
        log.warning(
            "transient failure: %s",
            message,
            extra=log_fields("job_retry_scheduled", error_code=error.code),
        )
        due = time.time() + delay
        self.end(
            Status.QUEUED,
            message,
            error=error,
            also=(
                *hset(self.job_id, (JobField.ATTEMPTS, str(attempt))),
                ("ZADD", self.keys.delayed, repr(due), self.job_id),
            ),
        )

    def pause(self) -> None:
        """Paused by its user: what was checkpointed stays; no worker, no queue place, and no
        attempt used until `resume` queues it again."""
        message = "paused; resume it to continue from its last checkpoint"
        log.info(message, extra=log_fields("job_paused"))
        self.end(Status.PAUSED, message, also=(hdel(self.job_id, JobField.PAUSE),))

    def hand_back(self) -> None:
        """Worker shutdown: what can be kept is kept; queue the job again, no attempt used."""
        message = "interrupted by worker shutdown; queued to resume on another worker"
        log.info(message, extra=log_fields("job_interrupted"))
        self.end(Status.QUEUED, message)
        try:
            self.ctx.queue.requeue(self.kind, self.job_id)
        except RedisError as exc:
            # The reaper's reconcile pass re-enqueues a queued job that has no RQ job.
            log.warning("could not re-enqueue the job: %s", exc)


class _Renewer:
    """Renews the lease (and the heartbeat the API shows) until stopped or lost."""

    def __init__(self, owner: JobOwner) -> None:
        self._owner = owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease-renewer")
        self._ttl = owner.ctx.settings.recovery.lease_ttl_sec

    def _run(self) -> None:
        owner, every = self._owner, self._ttl / 3
        wait = every
        down_since: float | None = None
        while not self._stop.wait(wait):
            try:
                if not owner.lease.renew():
                    owner.lost.set()
                    log.warning(
                        "lease lost: another worker owns the job now; stopping without writing",
                        extra=log_fields("lease_lost"),
                    )
                    return
                owner.store.heartbeat(owner.job_id)
                if down_since is not None:
                    log.info(
                        "Redis is back after %.0f s; lease renewed",
                        time.monotonic() - down_since,
                        extra=log_fields("redis_back"),
                    )
                down_since, wait = None, every
            except LeaseLost:
                owner.lost.set()
                return
            except (RedisError, OSError) as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "cannot renew the lease (%s); working on and retrying",
                        exc,
                        extra=log_fields("lease_renew_failed"),
                    )
                wait = 1.0  # come back quickly: another worker may take the job meanwhile

    def __enter__(self) -> _Renewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _log_context(kind: JobKind, job_id: str, logs_to: str) -> AbstractContextManager[object]:
    """Log lines carry the job's id (an evaluation's, its run's: they share its stream)."""
    if kind is JobKind.TOKENIZER:
        return bound(tokenizer_id_var, job_id)
    return bound(run_id_var, logs_to)


@contextmanager
def owned_job(
    ctx: WorkerContext,
    kind: JobKind,
    job_id: str,
    folder: Path,
    *,
    user_id: int = 0,
    logs_to: str | None = None,
    queue: str | None = None,
) -> Iterator[JobOwner | None]:
    """Own the job for one attempt; yields None when there is nothing for this worker to do.

    Its log lines go to `folder` and to the stream of `logs_to` (default: the job's own).
    `user_id`: whom its events are for (0: nobody); `queue`: the one it came from (default:
    the ordinary queue), for its `JobStarted`.
    """
    stream = logs_to or job_id
    with _log_context(kind, job_id, stream):
        lease = Lease(ctx.redis, job_id, ctx.settings.recovery.lease_ttl_sec)
        taken = lease.acquire(ctx.worker_name)
        if isinstance(taken, NotAcquired):
            reason = f"owned by {taken.holder}" if taken.holder else f"{taken.status or 'gone'}"
            log.info("not taking the %s: it is %s", kind, reason, extra=log_fields("job_skipped"))
            yield None
            return
        owner = JobOwner(ctx, kind, job_id, user_id, lease)
        # From here on every exception is settled, the job folder's own failures included (a
        # disk that cannot hold its logs): an attempt that raised unsettled would leave the
        # job `queued` for the reaper to dispatch again, forever. The log capture stays on
        # while settling, so that the job's logs say how it ended.
        with ExitStack() as logs:
            try:
                logs.enter_context(
                    capture_job_logs(ctx.redis, stream, folder, ctx.settings.app.log_stream_maxlen)
                )
                if owner.cancelled():
                    owner.cancel("cancelled before it started")
                    yield None
                    return
                if owner.pause_requested():
                    owner.pause()
                    yield None
                    return
                owner.store.set_status(job_id, Status.RUNNING, f"running on {ctx.worker_name}")
                owner.store.heartbeat(job_id)
                owner.announce_start(queue or ctx.settings.rq.queue_name)
                log.info(
                    "worker %s took the %s (lease epoch %d)",
                    ctx.worker_name,
                    kind,
                    lease.epoch,
                    extra=log_fields("job_owned", epoch=lease.epoch, worker=ctx.worker_name),
                )
                with _Renewer(owner):
                    yield owner
            except Exception as exc:  # noqa: BLE001 - every way an attempt ends is settled here
                try:
                    _settle(owner, exc, folder)
                except LeaseLost:
                    log.warning(LOST_MESSAGE, extra=log_fields("job_lost"))


def _settle(owner: JobOwner, exc: Exception, folder: Path) -> None:
    """The job's next state after its body raised `exc` (the table at the top)."""
    if isinstance(exc, LeaseLost):
        log.warning(LOST_MESSAGE, extra=log_fields("job_lost"))
    elif isinstance(exc, JobCancelled):
        owner.cancel(owner.store.cancel_reason(owner.job_id) or "cancelled by request")
    elif isinstance(exc, JobPaused):
        owner.pause()
    elif isinstance(exc, WorkerShutdown):
        owner.hand_back()
    else:
        error = classify(exc)
        if error.kind == "transient":
            owner.retry_later(error, folder)
            return
        if error.kind == "fatal":
            log.error("fatal error", exc_info=exc, extra=log_fields("job_fatal_error"))
        owner.fail(error, folder)
