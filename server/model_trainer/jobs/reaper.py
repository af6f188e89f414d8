"""The reaper: every worker's periodic pass that keeps jobs of every kind from getting stuck.

Every `reaper_interval_sec`, busy or idle, each worker:

1. says it is alive (`trainer:workers:{queue}`, what /readyz counts) and how much memory
   it may use (`trainer:workers:{queue}:memory`, what the API admits runs against), for
   each queue it serves (a GPU worker: the GPU queue and the ordinary one);
then, for each kind of job dispatched to a job process (tokenizer, run, evaluation):
2. enqueues the jobs whose retry delay is over (the kind's `delayed` zset);
3. takes back jobs whose owner is gone: status `running` and no lease. Once the lease has
   been seen missing for a third of its TTL (time for an owner cut off from Redis to renew
   it when Redis returns), one atomic script moves the job to `queued` (or `failed` when
   its attempts are spent, or `cancelled` if that was asked) and increments its epoch,
   which fences off the old owner for good. Only the worker whose script made the change
   enqueues the job, so exactly one new attempt starts;
4. reconciles: a `queued` job with no pending RQ job, no retry delay and no owner (a job
   lost with a Redis restart, a shutdown that could not enqueue) is enqueued again, under a
   short claim so that two reapers do not both do it.

and last:
5. drives the sweeps (sweeps/driver.py): takes the lease of any sweep nobody holds, and
   moves each one it holds along (judges rungs, starts and stops trials, ends it).

Steps 3 and 4 read the kind's `by-status:running` and `by-status:queued` indexes: a pass
costs what is running and waiting now, however many finished jobs Redis holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from model_trainer.errors import ErrorCode
from model_trainer.jobs.context import WorkerContext
from model_trainer.jobs.queue import worker_queue_names
from model_trainer.store.events import job_failed
from model_trainer.store.keys import (
    DISPATCHED_KINDS,
    JOB_KEYS,
    RECORD_TTL_SEC,
    JobField,
    JobKind,
    KeySchema,
    claim_key,
    job_key,
    lease_key,
    worker_memory_key,
    workers_key,
)
from model_trainer.store.records import ErrorInfo, Status, as_str, hdel
from model_trainer.sweeps.driver import SweepDriver
from model_trainer.training.memory import gib, machine_memory_bytes
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs.reaper")

# KEYS: the lease, the job's record, then its kind's status indexes of running, queued,
# failed and cancelled. ARGV: max attempts, record TTL, now, the job's id, then the message
# and error (JSON) of a failed job and of a requeued one, `{attempts}` standing for the
# count: a reader never sees the new status without them.
_REAP = """
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return {'skip', 0} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'skip', 0} end
redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
local id = ARGV[4]
redis.call('ZREM', KEYS[3], id)
if redis.call('HEXISTS', KEYS[2], 'cancel') == 1 then
  redis.call('HSET', KEYS[2], 'status', 'cancelled')
  redis.call('ZADD', KEYS[6], ARGV[3], id)
  return {'cancelled', 0}
end
local n = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local function said(template, count)
  return (string.gsub(template, '{attempts}', tostring(count)))
end
if n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[2], 'status', 'failed', 'message', said(ARGV[5], n),
    'error', said(ARGV[6], n))
  redis.call('ZADD', KEYS[5], ARGV[3], id)
  return {'failed', n}
end
redis.call('HSET', KEYS[2], 'status', 'queued', 'message', said(ARGV[7], n + 1),
  'error', said(ARGV[8], n + 1))
redis.call('ZADD', KEYS[4], ARGV[3], id)
return {'requeue', n}
"""


class Reaper:
    def __init__(
        self,
        ctx: WorkerContext,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        memory_bytes: int | None = None,
    ) -> None:
        """`memory_bytes`: what this worker reports it may use; None reads the machine's
        (its cgroup limit, else MemTotal)."""
        self._ctx = ctx
        self._redis = ctx.redis
        self._settings = ctx.settings.recovery
        self._clock = clock
        self._monotonic = monotonic
        self._reap = ctx.redis.register_script(_REAP)
        self._missing_since: dict[str, float] = {}
        self._last_tick: float | None = None
        self._queues = worker_queue_names(ctx.settings)
        self._sweeps = SweepDriver(ctx, clock)
        self._memory_bytes = memory_bytes if memory_bytes is not None else machine_memory_bytes()
        log.info(
            "worker %s reports %s of memory (what the API admits runs against)",
            ctx.worker_name,
            "unknown" if self._memory_bytes is None else gib(self._memory_bytes),
            extra=log_fields("worker_memory", memory_bytes=self._memory_bytes),
        )

    @property
    def interval(self) -> float:
        return self._settings.reaper_interval_sec

    def tick(self, *, force: bool = False) -> None:
        """One pass, unless the last one was less than `reaper_interval_sec` ago."""
        now = self._monotonic()
        if (
            not force
            and self._last_tick is not None
            and now - self._last_tick < self._settings.reaper_interval_sec
        ):
            return
        self._last_tick = now
        try:
            self._say_alive()
            watched: set[str] = set()
            for kind in DISPATCHED_KINDS:
                watched |= self._reap_kind(JOB_KEYS[kind])
            self._forget_except(watched)
            self._sweeps.tick()
        except RedisError as exc:
            log.warning("reaper pass skipped: %s", exc, extra=log_fields("reaper_redis_error"))

    def _reap_kind(self, keys: KeySchema) -> set[str]:
        """Steps 2-4 for one kind; returns the markers still being watched."""
        self._enqueue_due_retries(keys)
        store = self._ctx.store(keys.kind)
        running = store.ids_with_status(Status.RUNNING)
        queued = store.ids_with_status(Status.QUEUED)
        self._take_back_from_dead_owners(keys, running)
        self._reconcile_queued(keys, queued)
        return {f"r:{i}" for i in running} | {f"q:{i}" for i in queued}

    def leave(self) -> None:
        """The worker is stopping: stop counting it at once, and let its sweeps go."""
        self._sweeps.leave()
        with contextlib.suppress(RedisError):
            for queue in self._queues:
                self._redis.zrem(workers_key(queue), self._ctx.worker_name)
                self._redis.hdel(worker_memory_key(queue), self._ctx.worker_name)

    # --- 1. presence ------------------------------------------------------------------
    def _say_alive(self) -> None:
        for queue in self._queues:
            self._say_alive_on(workers_key(queue), worker_memory_key(queue))

    def _say_alive_on(self, presence_key: str, memory_key: str) -> None:
        now = self._clock()
        name = self._ctx.worker_name
        # Forget workers long gone (the keys would otherwise grow with every redeploy).
        forget_before = now - 10 * self._settings.worker_presence_ttl_sec
        stale = self._redis.zrangebyscore(presence_key, "-inf", forget_before)
        gone = [s for s in (as_str(v) for v in stale) if s and s != name]
        pipe = self._redis.pipeline()
        pipe.zadd(presence_key, {name: now})
        if self._memory_bytes is not None:
            pipe.hset(memory_key, name, str(self._memory_bytes))
        pipe.zremrangebyscore(presence_key, "-inf", forget_before)
        if gone:
            pipe.hdel(memory_key, *gone)
        pipe.execute()

    # --- 2. retries whose delay is over -----------------------------------------------
    def _enqueue_due_retries(self, keys: KeySchema) -> None:
        due = self._redis.zrangebyscore(keys.delayed, "-inf", self._clock())
        for job_id in (s for s in (as_str(v) for v in due) if s):
            if not self._redis.zrem(keys.delayed, job_id):
                continue  # another worker's reaper took it
            if self._ctx.store(keys.kind).status(job_id) is Status.QUEUED:
                self._requeue(keys, job_id, "retry delay over")

    # --- 3. jobs whose owner is gone --------------------------------------------------
    def _take_back_from_dead_owners(self, keys: KeySchema, running: list[str]) -> None:
        if not running:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id in running:
            pipe.exists(lease_key(job_id))
        held = pipe.execute()
        for job_id, has_lease in zip(running, held, strict=True):
            if has_lease:
                self._missing_since.pop(f"r:{job_id}", None)
            elif self._missing_long_enough(f"r:{job_id}"):
                self._take_back(keys, job_id)

    def _take_back(self, keys: KeySchema, job_id: str) -> None:
        kind = keys.kind
        failed, requeued = self._lost_messages(kind, job_id)
        reply = self._reap(
            keys=[
                lease_key(job_id),
                job_key(job_id),
                keys.status_index(Status.RUNNING.value),
                keys.status_index(Status.QUEUED.value),
                keys.status_index(Status.FAILED.value),
                keys.status_index(Status.CANCELLED.value),
            ],
            args=[
                self._settings.max_attempts,
                RECORD_TTL_SEC,
                repr(self._clock()),
                job_id,
                failed.message,
                failed.model_dump_json(),
                requeued.message,
                requeued.model_dump_json(),
            ],
        )
        outcome, attempts = _reply(reply)
        self._missing_since.pop(f"r:{job_id}", None)
        if outcome == "skip":
            return
        store = self._ctx.store(kind)
        # The script wrote the status with its message and error; this write adds what
        # follows a status change (the webhooks' marker, the record's TTL, no file_id).
        if outcome == "cancelled":
            message = "cancelled by request (its worker had stopped answering)"
            store.set_status(job_id, Status.CANCELLED, message)
            self._publish_failed(kind, job_id, message, "user", cancelled=True)
        elif outcome == "failed":
            error = _counted(failed, attempts)
            store.set_status(
                job_id,
                Status.FAILED,
                error.message,
                error=error,
                also=(hdel(job_id, JobField.FILE_ID),),
            )
            self._publish_failed(kind, job_id, error.message, "system", cancelled=False)
        else:
            error = _counted(requeued, attempts + 1)
            store.set_status(job_id, Status.QUEUED, error.message, error=error)
            self._requeue(keys, job_id, "owner lost")
        log.warning(
            "%s %s: owner lost, %s",
            kind,
            job_id,
            outcome,
            extra=log_fields("job_reaped", job_id=job_id, outcome=outcome, attempts=attempts),
        )

    # --- 4. queued jobs that nothing will start ---------------------------------------
    def _reconcile_queued(self, keys: KeySchema, queued: list[str]) -> None:
        if not queued:
            return
        delayed = {s for s in (as_str(v) for v in self._redis.zrange(keys.delayed, 0, -1)) if s}
        for job_id in queued:
            marker = f"q:{job_id}"
            if (
                job_id in delayed
                or self._redis.exists(lease_key(job_id))
                or self._ctx.queue.job_pending(job_id)
            ):
                self._missing_since.pop(marker, None)
                continue
            if not self._missing_long_enough(marker):
                continue
            self._missing_since.pop(marker, None)
            claimed = self._redis.set(claim_key(job_id), self._ctx.worker_name, nx=True, px=30_000)
            if claimed:
                self._requeue(keys, job_id, "queued without a job")

    # --- helpers ----------------------------------------------------------------------
    def _missing_long_enough(self, marker: str) -> bool:
        now = self._monotonic()
        first = self._missing_since.setdefault(marker, now)
        return now - first >= self._settings.lease_ttl_sec / 3

    def _forget_except(self, keep: set[str]) -> None:
        for marker in [m for m in self._missing_since if m not in keep]:
            del self._missing_since[marker]

    def _requeue(self, keys: KeySchema, job_id: str, why: str) -> None:
        rq_id = self._ctx.queue.requeue(keys.kind, job_id)
        if rq_id is None:
            message = f"cannot queue the {keys.kind} again: its job payload expired"
            error = ErrorInfo(kind="fatal", code=ErrorCode.INTERNAL_ERROR.value, message=message)
            self._ctx.store(keys.kind).set_status(job_id, Status.FAILED, message, error=error)
            self._publish_failed(keys.kind, job_id, message, "system", cancelled=False)
            return
        log.info(
            "%s %s queued again (%s) as job %s",
            keys.kind,
            job_id,
            why,
            rq_id,
            extra=log_fields("job_requeued", job_id=job_id, rq_job_id=rq_id),
        )

    def _lost_messages(self, kind: JobKind, job_id: str) -> tuple[ErrorInfo, ErrorInfo]:
        """What a job whose owner is gone says, failed or queued again (`{attempts}`: the
        count the reaper's script fills in)."""
        where = self._where(kind, job_id)
        failed = (
            "its worker stopped answering on each of {attempts} attempts (killed, out of "
            f"memory, or its machine lost){where}"
        )
        resume = "from its last checkpoint " if kind is JobKind.RUN else ""
        requeued = (
            f"its worker stopped answering{where}; queued to run again {resume}"
            f"(attempt {{attempts}} of {self._settings.max_attempts})"
        )
        code = ErrorCode.WORKER_LOST.value
        return (
            ErrorInfo(kind="fatal", code=code, message=failed),
            ErrorInfo(kind="transient", code=code, message=requeued),
        )

    def _where(self, kind: JobKind, job_id: str) -> str:
        """Where a run was when its worker went (its step); nothing for other kinds."""
        if kind is not JobKind.RUN:
            return ""
        progress = self._ctx.runs.progress(job_id)
        return f" at step {progress.step if progress else 0}"

    def _publish_failed(
        self, kind: JobKind, job_id: str, message: str, error_kind: str, *, cancelled: bool
    ) -> None:
        record = self._ctx.store(kind).record(job_id)
        request = record.meta.request if record and record.meta else {}
        user = request.get("user_id", 0)
        user_id = user if isinstance(user, int) else 0
        self._ctx.events.publish(
            job_failed(kind, job_id, user_id, message, error_kind, cancelled=cancelled)
        )


def _counted(error: ErrorInfo, attempts: int) -> ErrorInfo:
    return error.model_copy(update={"message": error.message.replace("{attempts}", str(attempts))})


def _reply(reply: object) -> tuple[str, int]:
    if not isinstance(reply, list) or len(reply) != 2:
        raise TypeError(f"unexpected reaper script reply {reply!r}")
    outcome, count = reply
    text = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
    return text, int(count) if isinstance(count, int) else 0
