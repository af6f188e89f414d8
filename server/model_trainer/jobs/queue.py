"""The JobQueue boundary: what the API needs from a queue, and its RQ implementation.

The API never imports job code (that would pull torch into the API process): a job is
named by a dotted path that only the worker imports. Payloads are Pydantic models sent as
JSON, so a job sees exactly the validated shape the API accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel
from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus

from model_trainer.settings import RQSettings


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
        self._queue = Queue(settings.queue_name, connection=redis)

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
            Retry(max=s.retry_max, interval=s.retry_intervals_sec or 0) if s.retry_max > 0 else None
        )
        job = self._queue.enqueue_call(
            func,
            args=(payload.model_dump_json(),),
            job_id=job_id,
            timeout=s.job_timeout_sec,
            result_ttl=s.result_ttl_sec,
            failure_ttl=s.failure_ttl_sec,
            retry=retry,
            description=f"{name}:{job_id}",
        )
        return str(job.id)

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
