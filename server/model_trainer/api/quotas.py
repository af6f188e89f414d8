"""What one principal may submit and hold (`quotas` settings), checked before anything is
written or queued: past a limit the answer is 429 with Retry-After, nothing else happens.

- Submissions (tokenizers, runs, evaluations, corpus uploads) per minute: a moving window
  kept in Redis by the `limits` library, so every API process counts the same window.
- Queued jobs (every kind) and active runs (queued or running): counted from the
  principal's index intersected with the status index (store/records.py `count_held`),
  walking the smaller: a principal's count never reads everyone's history.
- Corpus bytes: what the principal's catalog entries add up to (store/corpora.py).

Counts are read, then the job is written: two submissions of one principal at the same
instant may both pass the last free place (bounded by the submission rate), never more.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

from model_trainer.api.auth import Principal
from model_trainer.errors import AppError, ErrorCode
from model_trainer.settings import Settings
from model_trainer.store.corpora import CorpusCatalog
from model_trainer.store.keys import RATE_LIMIT_PREFIX
from model_trainer.store.records import AnyStatusStore, RunProgress, Status, StatusStore

# When to try again past a quota: a hint, not a promise (jobs end, corpora are deleted, on
# their own time).
QUOTA_RETRY_AFTER_SEC = 60


def _quota_exceeded(message: str) -> AppError:
    return AppError(
        ErrorCode.QUOTA_EXCEEDED, message, headers={"Retry-After": str(QUOTA_RETRY_AFTER_SEC)}
    )


class Quotas:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        runs: StatusStore[RunProgress],
        stores: list[AnyStatusStore],
    ) -> None:
        self._limits = settings.quotas
        self._runs = runs
        self._stores = stores  # every kind's
        self._corpora = CorpusCatalog(redis)
        # The API's own connection pool: Redis down is the API's usual 503.
        storage = RedisStorage(
            settings.redis_url,
            connection_pool=redis.connection_pool,
            key_prefix=RATE_LIMIT_PREFIX,
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self._per_minute = RateLimitItemPerMinute(self._limits.submissions_per_minute)

    def submission(self, who: Principal) -> None:
        """Count one submission of `who`; 429 past `quotas.submissions_per_minute`."""
        if self._limiter.hit(self._per_minute, "submit", who.name):
            return
        reset = self._limiter.get_window_stats(self._per_minute, "submit", who.name).reset_time
        raise AppError(
            ErrorCode.RATE_LIMITED,
            f"more than {self._limits.submissions_per_minute} submissions in a minute for "
            f"{who.name!r} (quotas.submissions_per_minute)",
            headers={"Retry-After": str(max(1, math.ceil(reset - time.time())))},
        )

    def new_job(self, who: Principal, *, run: bool = False) -> None:
        """Room for one more queued job of `who` (and, for a `run`, one more active run)."""
        queued = sum(store.count_held(who.name, Status.QUEUED) for store in self._stores)
        if queued >= self._limits.queued_jobs:
            raise _quota_exceeded(
                f"{who.name!r} has {queued} jobs queued, the most allowed "
                "(quotas.queued_jobs): wait for some to start, or cancel some"
            )
        if not run:
            return
        active = sum(self._runs.count_held(who.name, s) for s in (Status.QUEUED, Status.RUNNING))
        if active >= self._limits.active_runs:
            raise _quota_exceeded(
                f"{who.name!r} has {active} runs queued or running, the most allowed "
                "(quotas.active_runs): wait for one to end, or cancel one"
            )

    def corpus_bytes(self, who: Principal, adding: int) -> None:
        """Room for `adding` more bytes of corpora for `who`."""
        held = self._corpora.bytes_held(who.name)
        if held + adding > self._limits.corpus_bytes:
            raise _quota_exceeded(
                f"{who.name!r} holds {held} bytes of corpora; {adding} more would pass the "
                f"{self._limits.corpus_bytes}-byte quota (quotas.corpus_bytes): delete some "
                "(DELETE /corpora/{file_id})"
            )
