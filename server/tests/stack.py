"""The real stack for end-to-end tests: Data Bank and worker processes, the API in-process.

`Stack` owns one Data Bank server (no size cap), one queue of its own (and a GPU queue,
which its CPU workers never serve) and the worker
processes serving it; `stack.client()` is an HTTP client for an API app bound to them. API and
workers get different data roots, as in production. `Api` runs the API as its own Hypercorn
process instead, for clients that need a real URL (the CLI, a browser).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import httpx
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis
from rq.job import Job

from model_trainer.api.main import build_context, create_app
from model_trainer.databank.client import DataBankClient
from model_trainer.jobs.queue import fetch_rq_job
from model_trainer.settings import (
    AppSettings,
    QuotaSettings,
    RecoverySettings,
    RQSettings,
    SecuritySettings,
    Settings,
)
from model_trainer.store.keys import JobField, job_key, workers_key
from model_trainer.store.records import as_str
from tests.databank_fixtures import UPLOAD_KEY, DataBankServer, start_databank
from tests.processes import (
    TEST_QUOTA_LIMITS,
    Proc,
    child_env,
    free_port,
    start_worker_process,
    wait_until,
)

# Durable-run timings scaled down so that tests of dead workers and outages take seconds: a
# lease lapses 3 s after its owner stops, reapers look every 0.5 s. With
# DURABLE_PRODUCTION_TIMINGS=1 the lease and reaper keep their shipped defaults (15 s, 5 s),
# to measure recovery times as deployed (`make bench-recovery`).
FAST_LEASES = {
    "RECOVERY__LEASE_TTL_SEC": "3",
    "RECOVERY__REAPER_INTERVAL_SEC": "0.5",
    "RECOVERY__WORKER_PRESENCE_TTL_SEC": "3",
}
RECOVERY_ENV = {
    **({} if os.environ.get("DURABLE_PRODUCTION_TIMINGS") == "1" else FAST_LEASES),
    "RECOVERY__BACKOFF_BASE_SEC": "0.5",
    "RECOVERY__BACKOFF_MAX_SEC": "2",
    "RECOVERY__UPLOAD_RETRY_SEC": "2",
    "RECOVERY__REDIS_WAIT_SEC": "300",
}


# The security of apps under TestClient: anonymous (tests of keys set their own), and
# TestClient's own Host (`testserver`) trusted besides the local names.
TEST_SECURITY = SecuritySettings(
    allow_anonymous=True, trusted_hosts=["testserver", "127.0.0.1", "localhost"]
)
# The suite shares one Redis and submits as one principal from many modules at once: the
# quotas meant for a person would refuse the suite's own jobs. test_api_keys tests them.
TEST_QUOTAS = QuotaSettings.model_validate(TEST_QUOTA_LIMITS)


class Stack:
    def __init__(self, root: Path, redis_url: str, **rq: int) -> None:
        self.root = root
        self.redis_url = redis_url
        self.queue_name = f"e2e-{uuid.uuid4().hex[:10]}"
        self.rq = RQSettings.model_validate(
            {"queue_name": self.queue_name, "gpu_queue_name": f"{self.queue_name}-gpu", **rq}
        )
        self.databank: DataBankServer = self._databank()
        self.workers: list[Proc] = []
        self.redis = Redis.from_url(redis_url)
        # A fixture whose setup fails after this never reaches its `close()`: the processes
        # are stopped when the test process exits all the same (stopping twice is harmless).
        atexit.register(self.close)

    def _databank(self, port: int | None = None) -> DataBankServer:
        return start_databank(
            self.root / "databank", port, API_UPLOAD_KEYS=UPLOAD_KEY, MIN_FREE_GB="0"
        )

    def stop_databank(self) -> None:
        self.databank.proc.stop(timeout=10)

    def restart_databank(self) -> None:
        """The same Data Bank (files and port) again, after `stop_databank`."""
        port = int(self.databank.url.rsplit(":", 1)[1])
        self.databank = self._databank(port)

    def settings(self, name: str = "api") -> Settings:
        base = self.root / name
        return Settings(
            redis_url=self.redis_url,
            app=AppSettings(
                data_root=base / "data",
                artifacts_root=base / "artifacts",
                runs_root=base / "runs",
                threads=1,
                data_bank_api_url=self.databank.url,
                data_bank_api_key=SecretStr(UPLOAD_KEY),
            ),
            rq=self.rq,
            recovery=RecoverySettings(worker_presence_ttl_sec=3),
            security=TEST_SECURITY,
            quotas=TEST_QUOTAS,
        )

    def client(self, settings: Settings | None = None) -> TestClient:
        """The API in this process, with `settings` (default: `self.settings()`)."""
        return TestClient(create_app(build_context(settings or self.settings())))

    def bank(self) -> DataBankClient:
        return DataBankClient(self.databank.url, UPLOAD_KEY, backoff_base_sec=0.05)

    def upload_text(self, text: str | bytes, name: str = "corpus.txt") -> str:
        path = self.root / "uploads" / f"{uuid.uuid4().hex[:8]}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        with self.bank() as bank:
            return bank.upload_file(path).file_id

    def start_worker(self, name: str | None = None, **env: str) -> Proc:
        """A worker process; `name` picks its data root (the same name = the same disk)."""
        name = name or f"worker{len(self.workers)}"
        s = self.settings(name)
        environment = child_env(
            {
                "REDIS_URL": self.redis_url,
                "RQ__QUEUE_NAME": self.queue_name,
                "RQ__GPU_QUEUE_NAME": self.rq.gpu_queue_name,
                "RQ__JOB_MONITORING_INTERVAL_SEC": "2",
                "RQ__ABANDONED_GRACE_SEC": "3",
                "RQ__MAINTENANCE_INTERVAL_SEC": "2",
                "APP__DATA_ROOT": str(s.app.data_root),
                "APP__ARTIFACTS_ROOT": str(s.app.artifacts_root),
                "APP__RUNS_ROOT": str(s.app.runs_root),
                # One thread: tiny models gain nothing from two, and a loaded machine (CI, the
                # crash tests under stress) slows oversubscribed torch threads tenfold.
                "APP__THREADS": "1",
                # As conftest's workers: runs here are about jobs, not speed.
                "APP__COMPILE_STEPS": "false",
                "APP__DATA_BANK_API_URL": self.databank.url,
                "APP__DATA_BANK_API_KEY": UPLOAD_KEY,
                **RECOVERY_ENV,
                **env,
            }
        )
        (self.root / name).mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{name}-{len(self.workers)}.log"
        proc = start_worker_process(
            environment, log_path, lambda p: self.worker_name(p) is not None
        )
        self.workers.append(proc)
        return proc

    def retire(self, worker: Proc) -> None:
        """Stop a worker as a deploy does (SIGTERM, its job handed back) and forget it."""
        worker.stop(timeout=30)
        self.workers.remove(worker)

    def retire_all(self) -> None:
        """For an autouse fixture of a module whose tests start their own workers: a test
        that fails midway leaves no worker behind to take the next test's job."""
        for worker in list(self.workers):
            self.retire(worker)

    def worker_name(self, proc: Proc) -> str | None:
        """The name a live worker process announces (its reaper's presence), if it has yet."""
        names = [as_str(n) for n in self.redis.zrange(workers_key(self.queue_name), 0, -1)]
        return next((n for n in names if n and n.endswith(f"-{proc.pid}")), None)

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(timeout=20)
        self.databank.proc.stop(timeout=10)
        self.redis.close()


class Api:
    """The API as a Hypercorn process bound to `stack`, on a free port of 127.0.0.1;
    ready (`/readyz` 200: Redis, a worker and Data Bank answer) when the constructor returns."""

    def __init__(self, stack: Stack, root: Path, api_key: str, **env: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        s = stack.settings("api")
        environment = child_env(
            {
                "REDIS_URL": stack.redis_url,
                "RQ__QUEUE_NAME": stack.queue_name,
                "APP__DATA_ROOT": str(s.app.data_root),
                "APP__ARTIFACTS_ROOT": str(s.app.artifacts_root),
                "APP__RUNS_ROOT": str(s.app.runs_root),
                "APP__DATA_BANK_API_URL": stack.databank.url,
                "APP__DATA_BANK_API_KEY": UPLOAD_KEY,
                "SECURITY__API_KEY": api_key,
                **env,
            }
        )
        command = [
            sys.executable,
            "-m",
            "hypercorn",
            "model_trainer.api.main:create_app()",
            "--bind",
            f"127.0.0.1:{port}",
        ]
        self.proc = Proc.command(command, environment, root / "api.log")
        wait_until(self._ready, 60, "the API to be ready", self.proc, progress=self.proc.cpu_ticks)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.proc.stop(timeout=20)


def poll(
    get: Callable[[], dict[str, object]],
    done: Callable[[dict[str, object]], bool],
    stall_timeout: float,
) -> dict[str, object]:
    """Call `get` until `done(answer)`, and return that answer. No deadline while the answer
    keeps changing (status, step, message...; a heartbeat alone is no progress): fail only
    when it stood still for `stall_timeout` seconds (a stuck job, not a slow machine)."""
    last_change = time.monotonic()
    seen: object = None
    answer: dict[str, object] = {}
    while time.monotonic() - last_change < stall_timeout:
        answer = get()
        if done(answer):
            return answer
        state = {k: v for k, v in answer.items() if k != "last_heartbeat_ts"}
        if state != seen:
            seen, last_change = state, time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"no progress for {stall_timeout:.0f}s; last answer: {answer}")


def json_dict(value: object) -> dict[str, object]:
    """Narrow a JSON answer to an object (fails the test if it is not one)."""
    assert isinstance(value, dict), value
    return {str(k): v for k, v in value.items()}


def num(value: object) -> float:
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    return float(value)


def get_json(client: TestClient, path: str) -> dict[str, object]:
    return json_dict(client.get(path).json())


class Answer(Protocol):
    """What tests read of a TestClient response: `json()` typed as object, not Any, so that
    every use narrows it (json_dict, num...)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> object: ...


def job_field(redis: Redis, job_id: str, field: JobField) -> str | None:
    """One field of a job's record, as Redis holds it."""
    return as_str(redis.hget(job_key(job_id), field.value))


def rq_job(redis: Redis, job_id: str) -> Job:
    """The RQ job that dispatched our job last (RQ only dispatches; the record names it)."""
    rq_id = job_field(redis, job_id, JobField.DISPATCH)
    assert rq_id is not None, f"{job_id} was never dispatched"
    return fetch_rq_job(rq_id, redis)
