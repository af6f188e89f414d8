"""The RQ adapter against a real worker process.

One queue and one worker process serve the whole module (a worker takes seconds to start);
each test enqueues with the `RQSettings` it needs, which are per job, not per queue.
"""

from __future__ import annotations

import os
import uuid

import pytest
from redis import Redis
from rq.job import Job

from model_trainer.jobs.queue import JobState, RQJobQueue
from model_trainer.settings import RQSettings
from tests.conftest import StartWorker
from tests.jobs_for_tests import FUNCTIONS, Payload
from tests.processes import Proc, wait_until


@pytest.fixture(scope="module")
def queue_name() -> str:
    return f"test-jq-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def worker(module_worker: StartWorker) -> Proc:
    return module_worker()


def _queue(
    redis: Redis,
    name: str,
    job_timeout_sec: int = RQSettings().job_timeout_sec,
    retry_max: int = 0,
    retry_intervals_sec: tuple[int, ...] = (0,),
) -> RQJobQueue:
    settings = RQSettings(
        queue_name=name,
        job_timeout_sec=job_timeout_sec,
        retry_max=retry_max,
        retry_intervals_sec=list(retry_intervals_sec),
    )
    return RQJobQueue(redis, settings, functions=FUNCTIONS)


def test_enqueue_uses_our_id_and_runs_to_finished(
    redis_client: Redis, queue_name: str, request: pytest.FixtureRequest
) -> None:
    queue = _queue(redis_client, queue_name)
    our_id = f"run-{uuid.uuid4().hex}"
    key = f"k:{our_id}"
    assert queue.enqueue("record", Payload(key=key), job_id=our_id) == our_id
    assert queue.state(our_id) is JobState.QUEUED
    request.getfixturevalue("worker")  # started only now (the module's first use of it)
    wait_until(lambda: queue.state(our_id) is JobState.FINISHED, 60, "job to finish")
    assert redis_client.llen(key) == 1
    job = Job.fetch(our_id, connection=redis_client)
    assert job.timeout == RQSettings().job_timeout_sec  # explicit, not RQ's 180 s
    assert queue.state("no-such-job") is JobState.UNKNOWN


def test_state_walks_started_then_finished(
    redis_client: Redis, queue_name: str, worker: Proc
) -> None:
    queue = _queue(redis_client, queue_name)
    job_id = uuid.uuid4().hex
    queue.enqueue("sleep", Payload(key=f"k:{job_id}", seconds=1.5), job_id=job_id)
    wait_until(lambda: queue.state(job_id) is JobState.STARTED, 30, "job to start")
    wait_until(lambda: queue.state(job_id) is JobState.FINISHED, 30, "job to finish")


def test_job_timeout_is_honoured(redis_client: Redis, queue_name: str, worker: Proc) -> None:
    queue = _queue(redis_client, queue_name, job_timeout_sec=1, retry_max=0)
    job_id = uuid.uuid4().hex
    key = f"k:{job_id}"
    queue.enqueue("sleep", Payload(key=key, seconds=30), job_id=job_id)
    wait_until(lambda: queue.state(job_id) is JobState.FAILED, 30, "job to time out")
    assert redis_client.lrange(key, 0, -1) == [b"started"]
    result = Job.fetch(job_id, connection=redis_client).latest_result()
    assert result is not None
    assert "JobTimeoutException" in (result.exc_string or "")


def test_raising_job_is_retried_until_it_succeeds(
    redis_client: Redis, queue_name: str, worker: Proc
) -> None:
    queue = _queue(redis_client, queue_name, retry_max=2, retry_intervals_sec=(1,))
    job_id = uuid.uuid4().hex
    queue.enqueue("flaky", Payload(key=f"k:{job_id}", fail_times=2), job_id=job_id)
    wait_until(lambda: queue.state(job_id) is JobState.FINISHED, 60, "job to succeed on retry")
    assert int(redis_client.get(f"k:{job_id}") or 0) == 3
    job = Job.fetch(job_id, connection=redis_client)
    assert job.return_value() == "succeeded on attempt 3"


def test_retries_are_bounded(redis_client: Redis, queue_name: str, worker: Proc) -> None:
    queue = _queue(redis_client, queue_name, retry_max=1, retry_intervals_sec=(0,))
    job_id = uuid.uuid4().hex
    queue.enqueue("flaky", Payload(key=f"k:{job_id}", fail_times=5), job_id=job_id)
    wait_until(lambda: queue.state(job_id) is JobState.FAILED, 60, "job to fail for good")
    assert int(redis_client.get(f"k:{job_id}") or 0) == 2


def test_unknown_job_name_is_refused(redis_client: Redis, queue_name: str) -> None:
    queue = _queue(redis_client, queue_name)
    with pytest.raises(KeyError, match="nope"):
        queue.enqueue("nope", Payload(key="x"), job_id="x")


def test_the_worker_runs_at_a_lower_cpu_priority(worker: Proc) -> None:
    """Training is batch work: the worker (and the job processes it forks) yields the CPU to
    the API and other services on a shared machine (APP__WORKER_NICE, default 10)."""
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)  # nice stops at 19
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == expected
