"""The reaper: every worker's periodic pass that keeps runs from getting stuck.

Every `reaper_interval_sec`, busy or idle, each worker:

1. says it is alive (`trainer:workers:{queue}`, what /readyz counts) and how much memory
   it may use (`trainer:workers:{queue}:memory`, what the API admits runs against), for
   each queue it serves (a GPU worker: the GPU queue and the ordinary one);
2. enqueues the runs whose retry delay is over (`trainer:runs:delayed`);
3. takes back runs whose owner is gone: status `running` and no lease. Once the lease has
   been seen missing for a third of its TTL (time for an owner cut off from Redis to renew
   it when Redis returns), one atomic script moves the run to `queued` (or `failed` when
   its attempts are spent, or `cancelled` if that was asked) and increments its epoch,
   which fences off the old owner for good. Only the worker whose script made the change
   enqueues the run, so exactly one new attempt starts;
4. reconciles: a `queued` run with no pending RQ job, no retry delay and no owner (a job
   lost with a Redis restart, a shutdown that could not enqueue) is enqueued again, under a
   short claim so that two reapers do not both do it.

Reading every run's status is one MGET over the run index; fine for thousands of runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from model_trainer.errors import ErrorCode
from model_trainer.jobs.queue import worker_queue_names
from model_trainer.jobs.runner import WorkerContext
from model_trainer.store.events import train_failed
from model_trainer.store.keys import (
    DELAYED_RUNS,
    RECORD_TTL_SEC,
    RUN_KEYS,
    RunKeys,
    worker_memory_key,
    workers_key,
)
from model_trainer.store.records import ErrorInfo, Status, as_str
from model_trainer.training.memory import gib, machine_memory_bytes
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs.reaper")

_REAP = """
if redis.call('GET', KEYS[2]) ~= 'running' then return {'skip', 0} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'skip', 0} end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[6])
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('SET', KEYS[2], 'cancelled', 'EX', ARGV[2])
  return {'cancelled', 0}
end
local n = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[2])
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], 'failed', 'EX', ARGV[2])
  return {'failed', n}
end
redis.call('SET', KEYS[2], 'queued', 'EX', ARGV[2])
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
            self._enqueue_due_retries()
            running = self._ctx.runs.ids_with_status(Status.RUNNING)
            queued = self._ctx.runs.ids_with_status(Status.QUEUED)
            self._take_back_from_dead_owners(running)
            self._reconcile_queued(queued)
            self._forget_except(set(running) | {f"q:{i}" for i in queued})
        except RedisError as exc:
            log.warning("reaper pass skipped: %s", exc, extra=log_fields("reaper_redis_error"))

    def leave(self) -> None:
        """The worker is stopping: stop counting it at once."""
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
    def _enqueue_due_retries(self) -> None:
        due = self._redis.zrangebyscore(DELAYED_RUNS, "-inf", self._clock())
        for run_id in (s for s in (as_str(v) for v in due) if s):
            if not self._redis.zrem(DELAYED_RUNS, run_id):
                continue  # another worker's reaper took it
            if self._ctx.runs.status(run_id) is Status.QUEUED:
                self._requeue(run_id, "retry delay over")

    # --- 3. runs whose owner is gone --------------------------------------------------
    def _take_back_from_dead_owners(self, running: list[str]) -> None:
        if not running:
            return
        pipe = self._redis.pipeline()
        for run_id in running:
            pipe.exists(RunKeys.lease(run_id))
        held = pipe.execute()
        for run_id, has_lease in zip(running, held, strict=True):
            if has_lease:
                self._missing_since.pop(run_id, None)
            elif self._missing_long_enough(run_id):
                self._take_back(run_id)

    def _take_back(self, run_id: str) -> None:
        k = RUN_KEYS
        reply = self._reap(
            keys=[
                RunKeys.lease(run_id),
                k.key(k.status, run_id),
                RunKeys.epoch(run_id),
                RunKeys.attempts(run_id),
                k.key(k.cancelled, run_id),
                k.key(k.heartbeat, run_id),
            ],
            args=[self._settings.max_attempts, RECORD_TTL_SEC],
        )
        outcome, attempts = _reply(reply)
        self._missing_since.pop(run_id, None)
        if outcome == "skip":
            return
        step = self._step(run_id)
        runs = self._ctx.runs
        if outcome == "cancelled":
            message = "cancelled by request (its worker had stopped answering)"
            runs.set_status(run_id, Status.CANCELLED, message)
            self._publish_failed(run_id, message, "user", cancelled=True)
        elif outcome == "failed":
            message = (
                f"its worker stopped answering on each of {attempts} attempts (killed, out of "
                f"memory, or its machine lost); last at step {step}"
            )
            error = ErrorInfo(kind="fatal", code=ErrorCode.WORKER_LOST.value, message=message)
            runs.clear_file_id(run_id)
            runs.set_status(run_id, Status.FAILED, message, error=error)
            self._publish_failed(run_id, message, "system", cancelled=False)
        else:
            limit = self._settings.max_attempts
            message = (
                f"its worker stopped answering at step {step}; queued to resume from its last "
                f"checkpoint (attempt {attempts + 1} of {limit})"
            )
            error = ErrorInfo(kind="transient", code=ErrorCode.WORKER_LOST.value, message=message)
            runs.set_status(run_id, Status.QUEUED, message, error=error)
            self._requeue(run_id, "owner lost")
        log.warning(
            "run %s: owner lost, %s",
            run_id,
            outcome,
            extra=log_fields("run_reaped", run_id=run_id, outcome=outcome, attempts=attempts),
        )

    # --- 4. queued runs that nothing will start ---------------------------------------
    def _reconcile_queued(self, queued: list[str]) -> None:
        if not queued:
            return
        delayed = {s for s in (as_str(v) for v in self._redis.zrange(DELAYED_RUNS, 0, -1)) if s}
        for run_id in queued:
            marker = f"q:{run_id}"
            if (
                run_id in delayed
                or self._redis.exists(RunKeys.lease(run_id))
                or self._ctx.queue.run_job_pending(run_id)
            ):
                self._missing_since.pop(marker, None)
                continue
            if not self._missing_long_enough(marker):
                continue
            self._missing_since.pop(marker, None)
            claimed = self._redis.set(
                RunKeys.claim(run_id), self._ctx.worker_name, nx=True, px=30_000
            )
            if claimed:
                self._requeue(run_id, "queued without a job")

    # --- helpers ----------------------------------------------------------------------
    def _missing_long_enough(self, marker: str) -> bool:
        now = self._monotonic()
        first = self._missing_since.setdefault(marker, now)
        return now - first >= self._settings.lease_ttl_sec / 3

    def _forget_except(self, keep: set[str]) -> None:
        for marker in [m for m in self._missing_since if m not in keep]:
            del self._missing_since[marker]

    def _requeue(self, run_id: str, why: str) -> None:
        job_id = self._ctx.queue.requeue_run(run_id)
        if job_id is None:
            message = "cannot queue the run again: its job payload expired"
            error = ErrorInfo(kind="fatal", code=ErrorCode.INTERNAL_ERROR.value, message=message)
            self._ctx.runs.set_status(run_id, Status.FAILED, message, error=error)
            self._publish_failed(run_id, message, "system", cancelled=False)
            return
        log.info(
            "run %s queued again (%s) as job %s",
            run_id,
            why,
            job_id,
            extra=log_fields("run_requeued", run_id=run_id, job_id=job_id),
        )

    def _step(self, run_id: str) -> int:
        progress = self._ctx.runs.progress(run_id)
        return progress.step if progress else 0

    def _publish_failed(self, run_id: str, message: str, kind: str, *, cancelled: bool) -> None:
        meta = self._ctx.runs.record(run_id)
        request = meta.meta.request if meta and meta.meta else {}
        user = request.get("user_id", 0)
        user_id = user if isinstance(user, int) else 0
        self._ctx.events.publish(train_failed(run_id, user_id, message, kind, cancelled=cancelled))


def _reply(reply: object) -> tuple[str, int]:
    if not isinstance(reply, list) or len(reply) != 2:
        raise TypeError(f"unexpected reaper script reply {reply!r}")
    outcome, count = reply
    text = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
    return text, int(count) if isinstance(count, int) else 0
