"""A worker's hold on one training run: its lease, and how each attempt at the run ends.

    take the lease (or leave at once: another worker owns the run, or it has ended)
    mark the run running; renew the lease every third of its TTL on a thread
    run the job body with stores whose writes are fenced by the lease
    turn the way the body ended into the run's next state:

| body ends with       | status    | next                                  | event            |
| -------------------- | --------- | ------------------------------------- | ---------------- |
| `complete(...)`      | completed | -                                     | completed        |
| `UserError`          | failed    | -                                     | failed, user     |
| transient error      | queued    | enqueued after a backoff; attempt+1   | none             |
| ... last attempt     | failed    | -                                     | failed, system   |
| fatal error          | failed    | -                                     | failed, system   |
| `JobCancelled`       | cancelled | -                                     | failed, canceled |
| `WorkerShutdown`     | queued    | enqueued at once; not an attempt      | none             |
| `LeaseLost`          | untouched | the new owner carries on              | none             |
| (process killed)     | running   | a reaper re-enqueues it; attempt+1    | (failed if last) |

Each of these state changes is one fenced write (status, message, error, lease release
and event together), so it happens exactly once and only while this worker owns the run.
A Redis outage does not end a run: the renewal thread keeps trying, progress writes are
skipped (metric points wait), and the final writes wait up to `redis_wait_sec` for Redis.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis.exceptions import RedisError

from model_trainer.errors import ErrorCode
from model_trainer.jobs.failures import classify, retry_delay
from model_trainer.jobs.runner import JobCancelled, WorkerContext
from model_trainer.manifest import write_manifest
from model_trainer.shutdown import WorkerShutdown
from model_trainer.store.events import TrainerEvent, train_failed
from model_trainer.store.fencing import Command, Lease, LeaseLost, NotAcquired
from model_trainer.store.keys import DELAYED_RUNS, RUN_KEYS, RunKeys
from model_trainer.store.records import ErrorInfo, Status, as_str
from model_trainer.store.runlog import MetricsWriter, capture_job_logs
from service_common.jsonlog import bound, log_fields, run_id_var

log = logging.getLogger("model_trainer.jobs")

LOST_MESSAGE = "stopped: the run was taken over by another worker; nothing written"


class RunOwner:
    """What the job body gets: fenced stores for its run and the checks it makes."""

    def __init__(self, ctx: WorkerContext, run_id: str, user_id: int, lease: Lease) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.user_id = user_id
        self.lease = lease
        writer = lease.writer()
        self.runs = ctx.runs.with_writer(writer)
        self.events = ctx.events.with_writer(writer)
        self.metrics = MetricsWriter(ctx.redis, run_id, writer)
        self.lost = threading.Event()
        self._settings = ctx.settings.recovery

    # --- checks the body makes at safe points ----------------------------------------
    def check(self) -> None:
        """Raise `LeaseLost` once the renewal thread found another owner."""
        if self.lost.is_set():
            raise LeaseLost(f"run {self.run_id}: another worker owns it now")

    def cancelled(self) -> bool:
        try:
            return self.ctx.runs.is_cancelled(self.run_id)
        except RedisError:
            return False  # cannot tell during an outage: keep training

    def attempts(self) -> int:
        raw = as_str(self.ctx.redis.get(RunKeys.attempts(self.run_id)))
        return int(raw) if raw else 0

    # --- writes that must land --------------------------------------------------------
    def when_redis_is_back(self, what: str, write: Callable[[], None]) -> None:
        """Run `write`, retrying while Redis is unreachable (up to `redis_wait_sec`)."""
        deadline = time.monotonic() + self._settings.redis_wait_sec
        delay = 0.5
        while True:
            try:
                write()
                return
            except RedisError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning(
                    "Redis unavailable while recording %s (%s); retrying in %.1f s",
                    what,
                    exc,
                    delay,
                    extra=log_fields("redis_wait", error_code=ErrorCode.REDIS_UNAVAILABLE.value),
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def end(
        self,
        status: Status,
        message: str,
        *,
        error: ErrorInfo | None = None,
        event: TrainerEvent | None = None,
        also: tuple[Command, ...] = (),
    ) -> None:
        """One fenced write: the new status, the event, and the lease given up."""
        commands = (*also, self.lease.release_command())
        if event is not None:
            commands = (self.events.command(event), *commands)
        self.when_redis_is_back(
            f"status {status.value}",
            lambda: self.runs.set_status(self.run_id, status, message, error=error, also=commands),
        )

    def fail(self, error: ErrorInfo, folder: Path) -> None:
        log.error(
            "failed (%s): %s",
            error.kind,
            error.message,
            extra=log_fields("job_failed", error_code=error.code),
        )
        # The run folder's manifest says why, beside its logs (a failed run has no artifact).
        write_manifest(
            folder, {"run_id": self.run_id, "status": "failed", "error": error.model_dump()}
        )
        event = train_failed(self.run_id, self.user_id, error.message, error.kind, cancelled=False)
        self.end(
            Status.FAILED,
            error.message,
            error=error,
            event=event,
            also=(("DEL", RUN_KEYS.key(RUN_KEYS.file_id, self.run_id)),),
        )

    def cancel(self, message: str) -> None:
        log.info("stopped: %s", message, extra=log_fields("job_cancelled"))
        self.end(
            Status.CANCELLED,
            message,
            event=train_failed(self.run_id, self.user_id, message, "user", cancelled=True),
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
                ("SET", RunKeys.attempts(self.run_id), str(attempt)),
                ("ZADD", DELAYED_RUNS, repr(due), self.run_id),
            ),
        )

    def hand_back(self) -> None:
        """Worker shutdown: the checkpoint is saved; queue the run again, no attempt used."""
        message = "interrupted by worker shutdown; queued to resume from its checkpoint"
        log.info(message, extra=log_fields("job_interrupted"))
        self.end(Status.QUEUED, message)
        try:
            self.ctx.queue.requeue_run(self.run_id)
        except RedisError as exc:
            # The reaper's reconcile pass re-enqueues a queued run that has no job.
            log.warning("could not re-enqueue the run: %s", exc)


class _Renewer:
    """Renews the lease (and the heartbeat the API shows) until stopped or lost."""

    def __init__(self, owner: RunOwner) -> None:
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
                        "lease lost: another worker owns the run now; stopping without writing",
                        extra=log_fields("lease_lost"),
                    )
                    return
                owner.runs.heartbeat(owner.run_id, max(1, round(self._ttl)))
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
                        "cannot renew the lease (%s); training on and retrying",
                        exc,
                        extra=log_fields("lease_renew_failed"),
                    )
                wait = 1.0  # come back quickly: another worker may take the run meanwhile

    def __enter__(self) -> _Renewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextmanager
def owned_run(
    ctx: WorkerContext, run_id: str, user_id: int, folder: Path
) -> Iterator[RunOwner | None]:
    """Own the run for one attempt; yields None when there is nothing for this worker to do."""
    with (
        bound(run_id_var, run_id),
        capture_job_logs(ctx.redis, run_id, folder, ctx.settings.app.log_stream_maxlen),
    ):
        status_key = RUN_KEYS.key(RUN_KEYS.status, run_id)
        lease = Lease(ctx.redis, run_id, status_key, ctx.settings.recovery.lease_ttl_sec)
        taken = lease.acquire(ctx.worker_name)
        if isinstance(taken, NotAcquired):
            reason = f"owned by {taken.holder}" if taken.holder else f"{taken.status or 'gone'}"
            log.info("not taking the run: it is %s", reason, extra=log_fields("job_skipped"))
            yield None
            return
        owner = RunOwner(ctx, run_id, user_id, lease)
        if owner.cancelled():
            owner.cancel("cancelled before it started")
            yield None
            return
        owner.runs.set_status(run_id, Status.RUNNING, f"running on {ctx.worker_name}")
        log.info(
            "worker %s took the run (lease epoch %d)",
            ctx.worker_name,
            lease.epoch,
            extra=log_fields("run_owned", epoch=lease.epoch, worker=ctx.worker_name),
        )
        try:
            with _Renewer(owner):
                yield owner
        except Exception as exc:  # noqa: BLE001 - every way an attempt ends is settled here
            try:
                _settle(owner, exc, folder)
            except LeaseLost:
                log.warning(LOST_MESSAGE, extra=log_fields("run_lost"))


def _settle(owner: RunOwner, exc: Exception, folder: Path) -> None:
    """The run's next state after its body raised `exc` (the table at the top)."""
    if isinstance(exc, LeaseLost):
        _log_lost()
    elif isinstance(exc, JobCancelled):
        owner.cancel("cancelled by request")
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


def _log_lost() -> None:
    log.warning(LOST_MESSAGE, extra=log_fields("run_lost"))
