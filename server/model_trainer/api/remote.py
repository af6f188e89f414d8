"""Calls to a remote (Data Bank) on the request path: bounded, and fast to fail while it is down.

A submit checks its corpus and tokenizer in Data Bank. Done naively, a Data Bank that hangs
holds an API thread for every submit (its client retries for seconds), the thread pool
fills, and reads that never touch Data Bank queue behind them. So each check:

- uses the API's Data Bank client, which never retries and times out in seconds
  (`limits.remote_timeout_sec`);
- takes one of `limits.remote_max_concurrent` slots, without waiting: when all are taken the
  request is answered 503 at once, so at most that many threads ever wait on Data Bank;
- after Data Bank was found unavailable, answers 503 without calling it for
  `limits.remote_cooldown_sec`, so a burst of submits against a dead remote costs one timeout,
  not one each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from model_trainer.databank import errors as bank_errors
from model_trainer.errors import AppError, ErrorCode


class RemoteGuard:
    def __init__(
        self,
        name: str,
        max_concurrent: int,
        cooldown_sec: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._cooldown = cooldown_sec
        self._clock = clock
        self._down_until = 0.0

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Around one call to the remote; raises 503 `AppError`s as the module says."""
        if self._clock() < self._down_until:
            raise self._unavailable(what, "it was unavailable moments ago")
        if not self._slots.acquire(blocking=False):
            raise self._unavailable(what, "too many checks against it are in flight")
        try:
            yield
        except (bank_errors.Unavailable, bank_errors.UnexpectedAnswer) as exc:
            self._down_until = self._clock() + self._cooldown
            raise self._unavailable(what, exc.message) from exc
        finally:
            self._slots.release()

    def _unavailable(self, what: str, why: str) -> AppError:
        return AppError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"cannot {what}: {self._name} is unavailable ({why}); try again shortly",
        )
