"""A Redis database of the test session's own, so parallel runs and a local stack never meet.

Each session claims one of databases 1..14 with a lock key (SET NX with a TTL), flushes it,
and flushes it again at the end. Database 0 is left to the developer's stack.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

LOCK_KEY = "modeltrainer:test-session-lock"


def base_redis_url() -> str:
    return (
        os.environ.get("TEST_REDIS_URL")
        or os.environ.get("REDIS_URL")
        or ("redis://127.0.0.1:6379/0")
    )


def _url_for_db(base: str, db: int) -> str:
    head, _, tail = base.rpartition("/")
    return f"{head}/{db}" if tail.isdigit() and head.count("/") >= 2 else f"{base.rstrip('/')}/{db}"


@contextmanager
def claimed_database() -> Iterator[str]:
    token = uuid.uuid4().hex
    for db in range(1, 15):  # 15 is the container smoke test's
        url = _url_for_db(base_redis_url(), db)
        client = Redis.from_url(url)
        if client.set(LOCK_KEY, token, nx=True, ex=3 * 3600):
            client.flushdb()
            client.set(LOCK_KEY, token, ex=3 * 3600)
            try:
                yield url
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise RuntimeError("no free Redis database (1..14) for this test session")
