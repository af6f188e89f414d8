"""The JobQueue boundary: what the API needs from a queue, and its RQ implementation.

The API never imports job code (that would pull torch into the API process): a job is
named by a dotted path that only the worker imports. Payloads are Pydantic models sent as
JSON, so a job sees exactly the validated shape the API accepted.

Redis does not carry code. RQ's default serializer is pickle, and loading a pickle runs
whatever it names: anyone who can write to Redis could run anything on a worker. Jobs are
therefore written and read as JSON (`SERIALIZER`, in every queue, job and worker of ours),
and a worker runs a job only if it is shaped as `enqueue` writes one, naming one of this
project's job functions (`job_refusal`); anything else is refused unrun (jobs/worker.py).

RQ only dispatches. It retries nothing: a job's owner and the reapers decide when a job goes
back on the queue (jobs/ownership.py, jobs/reaper.py), with `requeue`, which reads the
payload that `submit` kept beside the job's record. Each dispatch is a new RQ job with an id
of its own (`{job id}-{8 hex}`); the record names the current one.

Which queue: a run that asks for `device: cuda` waits on the GPU queue (`rq.gpu_queue_name`),
which only GPU workers serve; everything else goes on the ordinary queue (`rq.queue_name`).
The queue follows from the payload, so a job put back by its owner, a reaper or a shutdown
lands on the queue it was first sent to.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel
from redis import Redis
from rq import Queue
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from model_trainer.jobs.payloads import EvaluateJob, TokenizerJob, TrainJob
from model_trainer.settings import RQSettings, Settings
from model_trainer.store.fencing import DirectWriter
from model_trainer.store.keys import JobField, JobKind, job_key
from model_trainer.store.records import as_str, hset
from model_trainer.training.config import Device

# Where the worker finds each kind's job. Only the worker imports these modules.
JOB_FUNCTIONS: Mapping[str, str] = {
    JobKind.TOKENIZER: "model_trainer.jobs.tokenizer_training.run",
    JobKind.RUN: "model_trainer.jobs.model_training.run",
    JobKind.EVAL: "model_trainer.jobs.model_evaluation.run",
}

# How jobs are written to Redis and read back: JSON, never pickle (the module's docstring).
SERIALIZER = JSONSerializer
# RQ job fields that name code RQ would import and call, or URLs it would call; `enqueue`
# sets none of them, so a job that has one was not written by us.
_FOREIGN_HOOKS = (
    "success_callback_name",
    "failure_callback_name",
    "stopped_callback_name",
    "webhooks",
)

Payload = TokenizerJob | TrainJob | EvaluateJob
PAYLOADS: Mapping[JobKind, type[Payload]] = {
    JobKind.TOKENIZER: TokenizerJob,
    JobKind.RUN: TrainJob,
    JobKind.EVAL: EvaluateJob,
}


def run_queue_name(settings: RQSettings, device: Device) -> str:
    """The queue a run of `device` waits on: the GPU queue for cuda, else the ordinary one."""
    return settings.gpu_queue_name if device is Device.CUDA else settings.queue_name


def worker_queue_names(settings: Settings) -> list[str]:
    """The queues a worker serves, in priority order: a GPU worker takes `cuda` runs first,
    then ordinary jobs (on which `device: auto` runs train on its GPU); a CPU worker, only
    the ordinary queue."""
    rq = settings.rq
    if settings.app.worker_device == "cuda":
        return [rq.gpu_queue_name, rq.queue_name]
    return [rq.queue_name]


def rq_queue(name: str, redis: Redis) -> Queue:
    return Queue(name, connection=redis, serializer=SERIALIZER)


def fetch_rq_job(rq_id: str, redis: Redis) -> Job:
    """The RQ job `rq_id`, read as JSON (raises NoSuchJobError once it expired)."""
    return Job.fetch(rq_id, connection=redis, serializer=SERIALIZER)


def job_refusal(job: Job, functions: Collection[str], redis: Redis) -> str | None:
    """Why a worker must not run `job`, or None when it is one of ours: JSON data naming
    one of `functions` with the one payload argument `enqueue` gives, and no callback or
    webhook. Reading it runs nothing: JSON loads no code, and nothing named is imported."""
    try:
        func, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "its data is not JSON (a pickled job?)"
    if not isinstance(func, str) or func not in functions:
        return f"{func!r} is not one of this project's job functions"
    if instance is not None or kwargs or len(args) != 1 or not isinstance(args[0], str):
        return f"its arguments are not one payload as enqueued ({func})"
    hooks = redis.hmget(job.key, list(_FOREIGN_HOOKS))
    named = [name for name, value in zip(_FOREIGN_HOOKS, hooks, strict=True) if value]
    if named:
        return f"it names {', '.join(named)}, which our jobs never set"
    return None


class JobState(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    SCHEDULED = "scheduled"  # waiting for a retry interval
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"


class JobQueue(Protocol):
    def submit(self, kind: JobKind, job_id: str, payload: Payload) -> str:
        """Dispatch a new job of `kind` (its record exists): returns the RQ job's id."""
        ...

    def requeue(self, kind: JobKind, job_id: str) -> str | None:
        """Dispatch the job again from its kept payload (None if it is gone)."""
        ...

    def state(self, job_id: str) -> JobState:
        """Where the job is in the queue's life cycle (UNKNOWN once it has expired)."""
        ...


_STATE_FROM_RQ: Mapping[RQStatus, JobState] = {
    RQStatus.CREATED: JobState.QUEUED,
    RQStatus.QUEUED: JobState.QUEUED,
    RQStatus.DEFERRED: JobState.QUEUED,
    RQStatus.READY_TO_ENQUEUE: JobState.QUEUED,
    RQStatus.RATE_LIMITED: JobState.QUEUED,
    RQStatus.SCHEDULED: JobState.SCHEDULED,
    RQStatus.STARTED: JobState.STARTED,
    RQStatus.FINISHED: JobState.FINISHED,
    RQStatus.FAILED: JobState.FAILED,
    RQStatus.STOPPED: JobState.CANCELED,
    RQStatus.CANCELED: JobState.CANCELED,
}


class RQJobQueue:
    """JobQueue over RQ: explicit timeout and TTLs on every job, no retries."""

    def __init__(
        self,
        redis: Redis,
        settings: RQSettings,
        functions: Mapping[str, str] = JOB_FUNCTIONS,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._functions = functions
        self._queues = {
            name: rq_queue(name, redis) for name in (settings.queue_name, settings.gpu_queue_name)
        }

    @property
    def name(self) -> str:
        return self._settings.queue_name

    def enqueue(self, name: str, payload: BaseModel, *, job_id: str, queue: str = "") -> str:
        """Put function `name` with `payload` on `queue` (default: the ordinary one) as RQ
        job `job_id`."""
        func = self._functions.get(name)
        if func is None:
            raise KeyError(f"unknown job {name!r}")
        s = self._settings
        job = self._queues[queue or s.queue_name].enqueue_call(
            func,
            args=(payload.model_dump_json(),),
            job_id=job_id,
            timeout=s.job_timeout_sec,
            result_ttl=s.result_ttl_sec,
            failure_ttl=s.failure_ttl_sec,
            description=f"{name}:{job_id}",
        )
        return str(job.id)

    def submit(self, kind: JobKind, job_id: str, payload: Payload) -> str:
        """Keep the payload in the job's record (any worker can dispatch the job again), then
        dispatch it."""
        DirectWriter(self._redis).write(hset(job_id, (JobField.PAYLOAD, payload.model_dump_json())))
        return self._dispatch(kind, job_id, payload)

    def requeue(self, kind: JobKind, job_id: str) -> str | None:
        """Dispatch the job again as a new RQ job; None if its payload is gone."""
        raw = as_str(self._redis.hget(job_key(job_id), JobField.PAYLOAD.value))
        if raw is None:
            return None
        return self._dispatch(kind, job_id, PAYLOADS[kind].model_validate_json(raw))

    def _dispatch(self, kind: JobKind, job_id: str, payload: Payload) -> str:
        queue = (
            run_queue_name(self._settings, payload.device)
            if isinstance(payload, TrainJob)
            else self._settings.queue_name
        )
        rq_id = self.enqueue(kind, payload, job_id=f"{job_id}-{uuid.uuid4().hex[:8]}", queue=queue)
        DirectWriter(self._redis).write(hset(job_id, (JobField.DISPATCH, rq_id)))
        return rq_id

    def job_pending(self, job_id: str) -> bool:
        """Whether the job's current RQ job is waiting or running (False once it ended)."""
        rq_id = as_str(self._redis.hget(job_key(job_id), JobField.DISPATCH.value))
        if rq_id is None:
            return False
        return self.state(rq_id) in (JobState.QUEUED, JobState.STARTED, JobState.SCHEDULED)

    def state(self, job_id: str) -> JobState:
        try:
            job = fetch_rq_job(job_id, self._redis)
        except NoSuchJobError:
            return JobState.UNKNOWN
        return _STATE_FROM_RQ.get(job.get_status(refresh=True), JobState.UNKNOWN)
