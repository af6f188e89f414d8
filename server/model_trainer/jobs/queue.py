"""The JobQueue boundary: what the API needs from a queue, and its RQ implementation.

The API never imports job code (that would pull torch into the API process): a job is
named by a dotted path that only the worker imports. Payloads are Pydantic models sent as
JSON, so a job sees exactly the validated shape the API accepted.

Training runs are the exception to RQ's retries: they get none from RQ. Their owner and the
reapers decide when a run goes back on the queue (jobs/ownership.py, jobs/reaper.py), with
`requeue_run`, which reads the payload the first enqueue kept in `runs:payload:{id}`.

Which queue: a run that asks for `device: cuda` waits on the GPU queue (`rq.gpu_queue_name`),
which only GPU workers serve; everything else goes on the ordinary queue (`rq.queue_name`).
The queue follows from the payload's config, so a run put back by its owner, a reaper or a
shutdown lands on the queue it was first sent to (`run_queue_name`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel
from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus

from model_trainer.jobs.payloads import TrainJob
from model_trainer.settings import RQSettings, Settings
from model_trainer.store.keys import RECORD_TTL_SEC, RunKeys
from model_trainer.store.records import as_str
from model_trainer.training.config import STORED, Device


class JobName(StrEnum):
    TRAIN_TOKENIZER = "train_tokenizer"
    TRAIN_MODEL = "train_model"
    EVALUATE_MODEL = "evaluate_model"


# Where the worker finds each job. Only the worker imports these modules.
JOB_FUNCTIONS: Mapping[str, str] = {
    JobName.TRAIN_TOKENIZER: "model_trainer.jobs.tokenizer_training.run",
    JobName.TRAIN_MODEL: "model_trainer.jobs.model_training.run",
    JobName.EVALUATE_MODEL: "model_trainer.jobs.model_evaluation.run",
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


class JobState(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    SCHEDULED = "scheduled"  # waiting for a retry interval
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"


class JobQueue(Protocol):
    def enqueue(self, name: str, payload: BaseModel, *, job_id: str) -> str:
        """Enqueue job `name` with `payload`; the job's id is `job_id`. Returns the id."""
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
    """JobQueue over RQ: explicit timeout, TTLs and retry policy on every job."""

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
            name: Queue(name, connection=redis)
            for name in (settings.queue_name, settings.gpu_queue_name)
        }

    @property
    def name(self) -> str:
        return self._settings.queue_name

    def enqueue(self, name: str, payload: BaseModel, *, job_id: str) -> str:
        func = self._functions.get(name)
        if func is None:
            raise KeyError(f"unknown job {name!r}")
        self._drop_finished(job_id)
        s = self._settings
        retry = (
            Retry(max=s.retry_max, interval=s.retry_intervals_sec or 0)
            if s.retry_max > 0 and name != JobName.TRAIN_MODEL
            else None
        )
        if isinstance(payload, TrainJob):
            # Kept so that any worker can put the run back on the queue (jobs/reaper.py).
            self._redis.set(
                RunKeys.payload(payload.run_id), payload.model_dump_json(), ex=RECORD_TTL_SEC
            )
        queue = (
            run_queue_name(s, payload.config.device)
            if isinstance(payload, TrainJob)
            else self._settings.queue_name
        )
        job = self._queues[queue].enqueue_call(
            func,
            args=(payload.model_dump_json(),),
            job_id=job_id,
            timeout=s.job_timeout_sec,
            result_ttl=s.result_ttl_sec,
            failure_ttl=s.failure_ttl_sec,
            retry=retry,
            description=f"{name}:{job_id}",
        )
        if isinstance(payload, TrainJob):
            self._redis.set(RunKeys.job(payload.run_id), str(job.id), ex=RECORD_TTL_SEC)
        return str(job.id)

    def requeue_run(self, run_id: str) -> str | None:
        """Put a run back on its queue as a new RQ job; None if its payload is gone."""
        raw = as_str(self._redis.get(RunKeys.payload(run_id)))
        if raw is None:
            return None
        payload = TrainJob.model_validate_json(raw, context=STORED)
        return self.enqueue(JobName.TRAIN_MODEL, payload, job_id=f"{run_id}-{uuid.uuid4().hex[:8]}")

    def run_job_pending(self, run_id: str) -> bool:
        """Whether the run's current RQ job is waiting or running (False once it ended)."""
        job_id = as_str(self._redis.get(RunKeys.job(run_id))) or run_id
        return self.state(job_id) in (JobState.QUEUED, JobState.STARTED, JobState.SCHEDULED)

    def _drop_finished(self, job_id: str) -> None:
        """Re-using the id of a finished or failed job (a re-submit): remove the old one first."""
        try:
            old = Job.fetch(job_id, connection=self._redis)
        except NoSuchJobError:
            return
        if _STATE_FROM_RQ.get(old.get_status(refresh=True)) in (
            JobState.QUEUED,
            JobState.STARTED,
            JobState.SCHEDULED,
        ):
            raise ValueError(f"job {job_id!r} is still queued or running")
        old.delete()

    def state(self, job_id: str) -> JobState:
        try:
            job = Job.fetch(job_id, connection=self._redis)
        except NoSuchJobError:
            return JobState.UNKNOWN
        return _STATE_FROM_RQ.get(job.get_status(refresh=True), JobState.UNKNOWN)
