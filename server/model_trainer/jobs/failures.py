"""Failure classes: what went wrong, and whether trying again can help (every job kind).

    user       bad input or hyper-parameters (UserError)          never retried
    transient  Data Bank, Redis or the network unavailable         retried with backoff
    fatal      a bug, a corrupt checkpoint, out of memory,         never retried
               a worker dying on every attempt

Our own exceptions carry their class (`TrainerError.failure`, errors.py); `classify` adds
the foreign ones (the network, Redis, memory) and calls the rest bugs. `retry_delay` is the
exponential backoff with jitter between transient attempts.
"""

from __future__ import annotations

import random

import httpx
from redis.exceptions import RedisError

from model_trainer.errors import ErrorCode, TrainerError
from model_trainer.settings import RecoverySettings
from model_trainer.store.records import ErrorInfo


def classify(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, TrainerError) and exc.failure is not None:
        return ErrorInfo(kind=exc.failure, code=exc.code.value, message=exc.failure_message)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TransportError):
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
    # Python's own; torch's allocation failures arrive as `OutOfMemory` (training/run.py).
    if isinstance(exc, MemoryError):
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
