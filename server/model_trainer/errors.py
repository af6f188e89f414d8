"""Every error the trainer raises, in one tree (as httpx draws its own in `_exceptions.py`).

    TrainerError                     the root; `failure` says how a job that raised it ends
    ├── AppError                     a stable `ErrorCode` and a message for people
    │   ├── NotFoundError            an unknown id
    │   ├── ConflictError            not possible in the current state
    │   ├── FieldsInvalid            refused field by field (api/errors.py)
    │   ├── ClientGone               the client left before its answer was ready
    │   └── UserError                a job's input is wrong                    failure: user
    ├── JobStopped                   a job body stopped at a safe point; not a failure
    │   ├── JobCancelled             the user asked: the job ends `cancelled`
    │   ├── WorkerShutdown           the worker is stopping: the job is handed back
    │   ├── JobPaused                the user paused the run: it waits, checkpointed
    │   └── LeaseLost                another worker owns the job now: write nothing
    ├── TrainingStopped              the tokenizer library was told to stop (tokenization/)
    ├── GenerationStopped            a generation's client left (training/generate.py)
    ├── CheckpointInvalid            a checkpoint that cannot be read            failure: fatal
    ├── ArtifactUploadFailed         a finished artifact could not be uploaded   failure: transient
    ├── OutOfMemory                  torch could not allocate                    failure: fatal
    ├── UnsafeArchiveError           a tar we refuse to extract (databank/archive.py)
    ├── CliError                     what the CLI tells a person, with its exit code
    └── DataBankError                Data Bank refused or failed (databank/errors.py):
                                     unavailable: transient; anything else: fatal

The HTTP status of each `ErrorCode` is api/errors.py's (and only there); how each way of
ending an attempt moves a job is jobs/ownership.py's; foreign exceptions (Redis, the
network, memory) are classed in jobs/failures.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel

# How a failed job ends: `user` never retried, `transient` retried with backoff, `fatal` not.
FailureKind = Literal["user", "transient", "fatal"]


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
    # Too many requests in a window (submissions, wrong keys): try again after Retry-After.
    RATE_LIMITED = "RATE_LIMITED"
    # A principal's quota (active runs, queued jobs, corpus bytes) is used up.
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    CLIENT_CLOSED_REQUEST = "CLIENT_CLOSED_REQUEST"
    # Job failures, stored with a failed status and published in events.
    DATA_INVALID = "DATA_INVALID"
    CONFIG_INVALID = "CONFIG_INVALID"
    # A structured corpus (tokenization/corpus_formats.py) that cannot be used as asked.
    CORPUS_UNREADABLE = "CORPUS_UNREADABLE"
    CORPUS_FIELD_NOT_FOUND = "CORPUS_FIELD_NOT_FOUND"
    CORPUS_FIELD_NOT_TEXT = "CORPUS_FIELD_NOT_TEXT"
    # It decodes to more text than `app.corpus_max_text_bytes` (a compression bomb, or just big).
    CORPUS_TEXT_TOO_LARGE = "CORPUS_TEXT_TOO_LARGE"
    TOKENIZER_TRAIN_FAILED = "TOKENIZER_TRAIN_FAILED"
    MODEL_TRAIN_FAILED = "MODEL_TRAIN_FAILED"
    ARTIFACT_UPLOAD_FAILED = "ARTIFACT_UPLOAD_FAILED"
    # Failure classes of jobs (jobs/failures.py).
    DATABANK_UNAVAILABLE = "DATABANK_UNAVAILABLE"
    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    WORKER_LOST = "WORKER_LOST"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CHECKPOINT_INVALID = "CHECKPOINT_INVALID"


class TrainerError(Exception):
    """The root of the tree. `failure` and `code` say how a job that raised it ends (None:
    the error is not a job failure)."""

    failure: ClassVar[FailureKind | None] = None
    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    @property
    def message(self) -> str:
        return str(self) or type(self).__name__

    @property
    def failure_message(self) -> str:
        """What a failed job says of it (its status message and event)."""
        return self.message


class AppError(TrainerError):
    """A refusal or a failure with a stable code (what clients switch on) and a message for
    people; `headers` and `details` (a 422's fields) travel with an HTTP answer."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Sequence[BaseModel] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers
        self.details = details


class NotFoundError(AppError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NOT_FOUND, message)


class ConflictError(AppError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CONFLICT, message)


class ClientGone(AppError):
    """The client disconnected before the answer was ready (api/generation.py): the work
    stopped, and the answer (499, as nginx logs it) goes nowhere but the access log."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CLIENT_CLOSED_REQUEST, message)


class UserError(AppError):
    """A job failed because of its input (bad corpus, diverging learning rate...): the job
    ends failed with this message and is not retried."""

    failure: ClassVar[FailureKind | None] = "user"

    def __init__(self, message: str, code: ErrorCode = ErrorCode.DATA_INVALID) -> None:
        super().__init__(code, message)


class JobStopped(TrainerError):
    """The job body stopped at a safe point for a reason that is not a failure."""


class JobCancelled(JobStopped):
    """The user cancelled the job; raised at a safe point by the job body."""


class WorkerShutdown(JobStopped):
    """The worker is shutting down; the job stopped at a safe point and is handed back."""


class JobPaused(JobStopped):
    """The user paused the run: it checkpointed at a safe point and waits, holding no worker,
    until resumed."""


class LeaseLost(JobStopped):
    """This worker no longer owns the job: another took it over. Stop, write nothing."""


class TrainingStopped(TrainerError):
    """A library's `should_stop()` answered true; nothing was written to its final files."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"tokenizer training stopped during {phase}")
        self.phase = phase


class GenerationStopped(TrainerError):
    """A text generation was told to stop (its client left); nothing is answered."""


class CheckpointInvalid(TrainerError):
    """A checkpoint file that cannot be read (corrupt, truncated, another format)."""

    failure: ClassVar[FailureKind | None] = "fatal"
    code = ErrorCode.CHECKPOINT_INVALID


class ArtifactUploadFailed(TrainerError):
    """A finished artifact could not be uploaded (Data Bank down): a later attempt uploads
    it."""

    failure: ClassVar[FailureKind | None] = "transient"
    code = ErrorCode.ARTIFACT_UPLOAD_FAILED

    def __init__(self, detail: str) -> None:
        super().__init__(f"artifact upload failed: {detail}")


class OutOfMemory(TrainerError):
    """The job asked for more memory than the machine gives (torch's allocator said so)."""

    failure: ClassVar[FailureKind | None] = "fatal"
    code = ErrorCode.OUT_OF_MEMORY

    @property
    def failure_message(self) -> str:
        return f"out of memory: {self.message}. Use a smaller model, batch or context"


class UnsafeArchiveError(TrainerError):
    """A tar that is not safe (or not ours) to extract; the callers say what to do."""
