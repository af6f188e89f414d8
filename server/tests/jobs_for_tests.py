"""Small jobs the RQ adapter tests enqueue; the worker imports them by dotted path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from redis import Redis
from rq.job import Job


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    seconds: float = 0.0
    fail_times: int = 0


def _redis() -> Redis:
    return Redis.from_url(os.environ["REDIS_URL"])


def record(payload_json: str) -> str:
    p = Payload.model_validate_json(payload_json)
    _redis().rpush(p.key, f"ran pid={os.getpid()}")
    return "ok"


def sleep(payload_json: str) -> str:
    p = Payload.model_validate_json(payload_json)
    _redis().rpush(p.key, "started")
    time.sleep(p.seconds)
    _redis().rpush(p.key, "finished")
    return "slept"


def flaky(payload_json: str) -> str:
    p = Payload.model_validate_json(payload_json)
    attempt = int(_redis().incr(p.key))
    if attempt <= p.fail_times:
        raise RuntimeError(f"planned failure {attempt}")
    return f"succeeded on attempt {attempt}"


def touch(payload_json: str) -> str:
    """What an attacker would run: creates the file `key` names. Not in FUNCTIONS, so no
    worker may run it."""
    Path(Payload.model_validate_json(payload_json).key).touch()
    return "touched"


def touch_callback(job: Job, connection: Redis, result: object) -> None:
    """`touch` as an RQ success callback (RQ imports callbacks by dotted path)."""
    touch(str(job.args[0]))


class TouchOnLoad:
    """Pickled, it creates the file `path` names as it is loaded: a pickled job runs code
    before any function is looked up."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


FUNCTIONS = {
    "record": "tests.jobs_for_tests.record",
    "sleep": "tests.jobs_for_tests.sleep",
    "flaky": "tests.jobs_for_tests.flaky",
}
