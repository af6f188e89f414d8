"""Typed errors shared by the API and the worker.

    AppError (ServiceError)        a stable `ErrorCode`, a message, the HTTP status
    ├── NotFoundError, ConflictError
    └── UserError                  a job's input is wrong: failed, never retried
    JobStopped                     a job body stopped at a safe point; not a failure
    ├── JobCancelled               the user asked: the job ends `cancelled`
    ├── WorkerShutdown             the worker is stopping: the job is handed back
    └── LeaseLost                  another worker owns the job now: write nothing
    CheckpointInvalid (ValueError) a checkpoint that cannot be read: fatal

How each ends a job is jobs/ownership.py's table; which failure class the rest fall in is
jobs/failures.py's.
"""

from __future__ import annotations

from enum import StrEnum

from service_common.service_error import ServiceError


class ErrorCode(StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    CONFLICT = "CONFLICT"
    BAD_REQUEST = "BAD_REQUEST"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # Job failures, stored with a failed status and published in events.
    DATA_INVALID = "DATA_INVALID"
    CONFIG_INVALID = "CONFIG_INVALID"
    # A structured corpus (tokenization/corpus_formats.py) that cannot be used as asked.
    CORPUS_UNREADABLE = "CORPUS_UNREADABLE"
    CORPUS_FIELD_NOT_FOUND = "CORPUS_FIELD_NOT_FOUND"
    CORPUS_FIELD_NOT_TEXT = "CORPUS_FIELD_NOT_TEXT"
    TOKENIZER_TRAIN_FAILED = "TOKENIZER_TRAIN_FAILED"
    MODEL_TRAIN_FAILED = "MODEL_TRAIN_FAILED"
    ARTIFACT_UPLOAD_FAILED = "ARTIFACT_UPLOAD_FAILED"
    # Failure classes of jobs (jobs/failures.py).
    DATABANK_UNAVAILABLE = "DATABANK_UNAVAILABLE"
    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    WORKER_LOST = "WORKER_LOST"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CHECKPOINT_INVALID = "CHECKPOINT_INVALID"


class AppError(ServiceError[ErrorCode]):
    # A ServiceError, so the API's shared error handlers answer it with its status and code.
    def __init__(self, code: ErrorCode, message: str, status_code: int = 400) -> None:
        super().__init__(status_code, code, message)

    @property
    def status_code(self) -> int:
        return self.status


class NotFoundError(AppError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NOT_FOUND, message, 404)


class ConflictError(AppError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CONFLICT, message, 409)


class UserError(AppError):
    """A job failed because of its input (bad corpus, diverging learning rate...).

    The job records it as failed with this message and is not retried.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.DATA_INVALID) -> None:
        super().__init__(code, message, 400)


class CheckpointInvalid(ValueError):
    """A checkpoint file that cannot be read (corrupt, truncated, another format): fatal."""


class JobStopped(Exception):
    """The job body stopped at a safe point for a reason that is not a failure."""


class JobCancelled(JobStopped):
    """The user cancelled the job; raised at a safe point by the job body."""


class WorkerShutdown(JobStopped):
    """The worker is shutting down; the job stopped at a safe point and is handed back."""


class LeaseLost(JobStopped):
    """This worker no longer owns the job: another took it over. Stop, write nothing."""
