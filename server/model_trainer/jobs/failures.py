"""Failure classes: what went wrong, and whether trying again can help (every job kind).

    user       bad input or hyper-parameters (UserError)          never retried
    transient  Data Bank, Redis or the network unavailable         retried with backoff
    fatal      a bug, a corrupt checkpoint, out of memory,         never retried
               a worker dying on every attempt

`classify` maps an exception to an `ErrorInfo` (kind, code, message); `retry_delay` is the
exponential backoff with jitter between transient attempts.
"""

from __future__ import annotations

import random

import httpx
from redis.exceptions import RedisError

from model_trainer.databank.errors import (
    DataBankError,
    InsufficientStorage,
    IntegrityError,
    Unavailable,
)
from model_trainer.errors import CheckpointInvalid, ErrorCode, UserError
from model_trainer.settings import RecoverySettings
from model_trainer.store.records import ErrorInfo


class ArtifactUploadFailed(Exception):
    """A finished artifact could not be uploaded (Data Bank down): transient, retried."""

    def __init__(self, detail: str) -> None:
        self.message = f"artifact upload failed: {detail}"
        super().__init__(self.message)


def classify(exc: BaseException) -> ErrorInfo:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, UserError):
        return ErrorInfo(kind="user", code=exc.code.value, message=exc.message)
    if isinstance(exc, ArtifactUploadFailed):
        return ErrorInfo(
            kind="transient", code=ErrorCode.ARTIFACT_UPLOAD_FAILED.value, message=exc.message
        )
    if isinstance(exc, Unavailable | InsufficientStorage | IntegrityError | httpx.TransportError):
        return ErrorInfo(
            kind="transient",
            code=ErrorCode.DATABANK_UNAVAILABLE.value,
            message=f"Data Bank unavailable: {message}",
        )
    if isinstance(exc, RedisError):
        return ErrorInfo(
            kind="transient",
            code=ErrorCode.REDIS_UNAVAILABLE.value,
            message=f"Redis unavailable: {type(exc).__name__}: {message}",
        )
    if isinstance(exc, DataBankError):
        # 401/403/400...: our configuration or our bug; trying again gives the same answer.
        return ErrorInfo(
            kind="fatal", code=ErrorCode.UPSTREAM_ERROR.value, message=f"Data Bank: {message}"
        )
    if isinstance(exc, CheckpointInvalid):
        return ErrorInfo(kind="fatal", code=ErrorCode.CHECKPOINT_INVALID.value, message=message)
    if isinstance(exc, MemoryError) or "out of memory" in message.lower():
        return ErrorInfo(
            kind="fatal",
            code=ErrorCode.OUT_OF_MEMORY.value,
            message=f"out of memory: {message}. Use a smaller model, batch or context",
        )
    return ErrorInfo(
        kind="fatal",
        code=ErrorCode.INTERNAL_ERROR.value,
        message=f"internal error: {type(exc).__name__}: {message}",
    )


def retry_delay(attempt: int, settings: RecoverySettings, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
    base = settings.backoff_base_sec * 2.0 ** max(0, attempt - 1)
    capped = min(base, settings.backoff_max_sec)
    jitter = settings.backoff_jitter
    return capped * rng.uniform(1 - jitter, 1 + jitter)
