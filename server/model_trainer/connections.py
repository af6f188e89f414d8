"""How every process connects to Redis and to Data Bank: one factory each, and the reasons
for each profile in one place.

Redis:
    API       on the request path: fail at once (a refused connection in a millisecond, an
              unanswered connect in 2 s, an unanswered command in 5 s) and never retry, so
              the API answers 503 instead of hanging (api/errors.py). redis-py's defaults
              differ by constructor and version (Redis() retries 3 times with up to 10 s of
              backoff), so the profile says it. A pooled connection the server closed (a
              Redis restart) is noticed and reconnected when taken from the pool.
    WORKER    RQ's own loop in the worker's parent: it blocks in BLPOP for up to its
              dequeue timeout, so no socket timeout; a health check every 30 s.
    JOBS      what jobs and reapers use (jobs/context.py): commands answer within seconds;
              30 s before a command is given up (the owners retry Redis outages themselves).
Data Bank:
    JOB        a job's downloads and uploads: retried with backoff (4 retries).
    CHECKPOINT a checkpoint upload gives up fast: the next checkpoint tries again.
    API        on the request path: no retries and the API's short remote timeout
               (api/remote.py answers 503 while Data Bank is down).
    API_UPLOAD a corpus streamed through the API: one POST of content-addressed bytes, safe
               to repeat once after a dropped connection (more would keep a browser
               waiting on a Data Bank that is down); the default (long) timeout.
    CLI        a person waits: two quick retries.
"""

from __future__ import annotations

from enum import StrEnum

import httpx
from pydantic import SecretStr
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from model_trainer.databank.client import DEFAULT_TIMEOUT, DataBankClient


class RedisUse(StrEnum):
    API = "api"
    WORKER = "worker"
    JOBS = "jobs"


def redis_client(url: str, use: RedisUse) -> Redis:
    if use is RedisUse.API:
        return Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
    if use is RedisUse.WORKER:
        return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    return Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)


class DataBankUse(StrEnum):
    JOB = "job"
    CHECKPOINT = "checkpoint"
    API = "api"
    API_UPLOAD = "api_upload"
    CLI = "cli"


def databank_client(
    url: str,
    api_key: SecretStr | None,
    use: DataBankUse,
    *,
    request_timeout_sec: float | None = None,
) -> DataBankClient:
    """`request_timeout_sec`: the API's remote timeout (`limits.remote_timeout_sec`), for
    `DataBankUse.API`."""
    key = api_key.get_secret_value() if api_key else None
    if use is DataBankUse.API:
        timeout = httpx.Timeout(request_timeout_sec) if request_timeout_sec else DEFAULT_TIMEOUT
        return DataBankClient(url, key, max_retries=0, timeout=timeout)
    if use is DataBankUse.CLI:
        return DataBankClient(url, key, max_retries=2, backoff_base_sec=0.2)
    retries = {DataBankUse.JOB: 4, DataBankUse.CHECKPOINT: 1, DataBankUse.API_UPLOAD: 1}[use]
    return DataBankClient(url, key, max_retries=retries)
