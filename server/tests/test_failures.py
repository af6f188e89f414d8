"""One exception tree: each of our errors carries its failure class; foreign ones are classed
by type, never by their message; every code has one HTTP status."""

from __future__ import annotations

import httpx
import pytest
import torch
from redis.exceptions import ConnectionError as RedisConnectionError

from model_trainer.api.errors import STATUS, FieldError, FieldsInvalid
from model_trainer.databank.errors import (
    IntegrityError,
    NotFound,
    Unauthorized,
    Unavailable,
)
from model_trainer.errors import (
    AppError,
    ArtifactUploadFailed,
    CheckpointInvalid,
    ConflictError,
    ErrorCode,
    JobCancelled,
    LeaseLost,
    NotFoundError,
    OutOfMemory,
    TrainerError,
    UnsafeArchiveError,
    UserError,
    WorkerShutdown,
)
from model_trainer.jobs.failures import classify
from model_trainer.training.run import _allocation_failures_as_out_of_memory


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (UserError("the corpus is empty"), "user", "DATA_INVALID"),
        (UserError("too big", ErrorCode.CONFIG_INVALID), "user", "CONFIG_INVALID"),
        (Unavailable("GET /files/x: 503"), "transient", "DATABANK_UNAVAILABLE"),
        (IntegrityError("sha differs"), "transient", "DATABANK_UNAVAILABLE"),
        (Unauthorized("401"), "fatal", "UPSTREAM_ERROR"),
        (NotFound("404"), "fatal", "UPSTREAM_ERROR"),
        (ArtifactUploadFailed("Data Bank down"), "transient", "ARTIFACT_UPLOAD_FAILED"),
        (CheckpointInvalid("truncated"), "fatal", "CHECKPOINT_INVALID"),
        (OutOfMemory("DefaultCPUAllocator: can't allocate"), "fatal", "OUT_OF_MEMORY"),
        (MemoryError(), "fatal", "OUT_OF_MEMORY"),
        (httpx.ConnectError("refused"), "transient", "DATABANK_UNAVAILABLE"),
        (RedisConnectionError("refused"), "transient", "REDIS_UNAVAILABLE"),
        (ValueError("a bug"), "fatal", "INTERNAL_ERROR"),
        # A message that says "out of memory" is not a memory failure: types decide.
        (RuntimeError("out of memory, said the message"), "fatal", "INTERNAL_ERROR"),
    ],
)
def test_failure_class_follows_the_type(exc: BaseException, kind: str, code: str) -> None:
    error = classify(exc)
    assert (error.kind, error.code) == (kind, code)
    assert error.message


def test_data_bank_failures_say_where_they_came_from() -> None:
    assert classify(Unavailable("GET /files/x: 503")).message.startswith("Data Bank unavailable")
    assert classify(Unauthorized("401 UNAUTHORIZED")).message.startswith("Data Bank: ")


def test_one_root() -> None:
    for exc_type in (
        AppError,
        UserError,
        NotFoundError,
        ConflictError,
        FieldsInvalid,
        JobCancelled,
        WorkerShutdown,
        LeaseLost,
        CheckpointInvalid,
        ArtifactUploadFailed,
        OutOfMemory,
        UnsafeArchiveError,
        Unavailable,
    ):
        assert issubclass(exc_type, TrainerError), exc_type
    # Stopping is not failing: none of these carries a failure class.
    assert JobCancelled.failure is WorkerShutdown.failure is LeaseLost.failure is None


def test_every_code_has_one_http_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert STATUS[FieldsInvalid("no", [FieldError(field="a", message="b", type="c")]).code] == 422
    assert STATUS[NotFoundError("x").code] == 404 and STATUS[ConflictError("x").code] == 409


def test_a_failed_cpu_allocation_becomes_out_of_memory() -> None:
    """torch's CPU allocator raises a plain RuntimeError; training turns it into ours."""
    with pytest.raises(OutOfMemory) as caught, _allocation_failures_as_out_of_memory():
        torch.empty(1 << 62, dtype=torch.uint8)
    assert classify(caught.value).code == "OUT_OF_MEMORY"
    with pytest.raises(RuntimeError, match="other"), _allocation_failures_as_out_of_memory():
        raise RuntimeError("some other failure")
