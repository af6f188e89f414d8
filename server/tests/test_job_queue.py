"""The RQ adapter against a real worker process.

One queue and one worker process serve the whole module (a worker takes seconds to start);
each test enqueues with the `RQSettings` it needs, which are per job, not per queue.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch
from redis import Redis
from rq import Callback, Queue, Worker

from model_trainer.jobs.payloads import TrainJob
from model_trainer.jobs.queue import (
    JobState,
    RQJobQueue,
    fetch_rq_job,
    rq_queue,
    run_queue_name,
    worker_queue_names,
)
from model_trainer.settings import AppSettings, RQSettings, Settings
from model_trainer.store.keys import JobKind, workers_key
from model_trainer.training.config import Device, TrainingSpec
from tests.conftest import StartWorker, worker_env
from tests.jobs_for_tests import FUNCTIONS, Payload, TouchOnLoad
from tests.processes import TEST_JOBS_WORKER_MODULE, WORKER_MODULE, Proc, wait_until
from tests.stack import rq_job

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def queue_name() -> str:
    return f"test-jq-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def worker(module_worker: StartWorker) -> Proc:
    return module_worker(module=TEST_JOBS_WORKER_MODULE)


def _queue(
    redis: Redis, name: str, job_timeout_sec: int = RQSettings().job_timeout_sec
) -> RQJobQueue:
    settings = RQSettings(
        queue_name=name, gpu_queue_name=f"{name}-gpu", job_timeout_sec=job_timeout_sec
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
    job = fetch_rq_job(our_id, redis_client)
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
    queue = _queue(redis_client, queue_name, job_timeout_sec=1)
    job_id = uuid.uuid4().hex
    key = f"k:{job_id}"
    queue.enqueue("sleep", Payload(key=key, seconds=30), job_id=job_id)
    wait_until(lambda: queue.state(job_id) is JobState.FAILED, 30, "job to time out")
    assert redis_client.lrange(key, 0, -1) == [b"started"]
    result = fetch_rq_job(job_id, redis_client).latest_result()
    assert result is not None
    assert "JobTimeoutException" in (result.exc_string or "")


def test_rq_retries_nothing(redis_client: Redis, queue_name: str, worker: Proc) -> None:
    """RQ only dispatches: a job that raises fails once and stays failed (our owners and
    reapers decide about another attempt, jobs/ownership.py)."""
    queue = _queue(redis_client, queue_name)
    job_id = uuid.uuid4().hex
    queue.enqueue("flaky", Payload(key=f"k:{job_id}", fail_times=1), job_id=job_id)
    wait_until(lambda: queue.state(job_id) is JobState.FAILED, 60, "job to fail")
    assert int(redis_client.get(f"k:{job_id}") or 0) == 1


def test_unknown_job_name_is_refused(redis_client: Redis, queue_name: str) -> None:
    queue = _queue(redis_client, queue_name)
    with pytest.raises(KeyError, match="nope"):
        queue.enqueue("nope", Payload(key="x"), job_id="x")


def test_the_worker_runs_only_our_jobs(
    redis_client: Redis, queue_name: str, worker: Proc, tmp_path: Path
) -> None:
    """Redis is not a channel for code. Jobs pushed onto the queue by hand, as RQ writes
    them, that would each create a file: a pickled one (its data creates the file as it is
    loaded, whatever function it names), a JSON one naming a function that is not one of
    ours, and one naming one of ours with a success callback that is not. Each is refused
    and logged, nothing ran (no file), and the worker goes on to run a real job after them."""
    touched = tmp_path / "touched"
    payload = Payload(key=str(touched)).model_dump_json()
    pickled, foreign, hooked = (f"refused-{uuid.uuid4().hex[:8]}" for _ in range(3))
    Queue(queue_name, connection=redis_client).enqueue_call(  # RQ's default: pickle
        "tests.jobs_for_tests.touch", args=(TouchOnLoad(touched),), job_id=pickled
    )
    by_hand = rq_queue(queue_name, redis_client)
    by_hand.enqueue_call("tests.jobs_for_tests.touch", args=(payload,), job_id=foreign)
    by_hand.enqueue_call(
        FUNCTIONS["record"],
        args=(payload,),  # record would push to a key named `touched`, the callback touch it
        job_id=hooked,
        on_success=Callback("tests.jobs_for_tests.touch_callback"),
    )
    queue = _queue(redis_client, queue_name)
    real = uuid.uuid4().hex
    queue.enqueue("record", Payload(key=f"k:{real}"), job_id=real)

    wait_until(
        lambda: queue.state(real) is JobState.FINISHED,
        60,
        "the real job after the refused ones",
        worker,
        progress=worker.cpu_ticks,
    )
    assert not touched.exists(), "a refused job ran"
    assert redis_client.llen(str(touched)) == 0
    assert redis_client.llen(f"k:{real}") == 1
    assert worker.alive()
    reasons = {
        pickled: "not JSON",
        foreign: "'tests.jobs_for_tests.touch' is not one of this project's job functions",
        hooked: "success_callback_name",
    }
    refusals = [line for line in worker.output().splitlines() if "worker_job_refused" in line]
    for job_id, reason in reasons.items():
        assert queue.state(job_id) is JobState.FAILED
        assert any(job_id in line and reason in line for line in refusals), refusals
        assert job_id in by_hand.failed_job_registry.get_job_ids()


def test_the_worker_runs_at_a_lower_cpu_priority(worker: Proc) -> None:
    """Training is batch work: the worker (and the job processes it forks) yields the CPU to
    the API and other services on a shared machine (APP__WORKER_NICE, default 10)."""
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)  # nice stops at 19
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == expected


def _train_job(device: str) -> TrainJob:
    return TrainJob(
        run_id=f"run-{uuid.uuid4().hex[:16]}",
        spec=TrainingSpec(),
        corpus_file_id="0" * 64,
        tokenizer_id="tok-x",
        device=Device(device),
    )


def _job_ids(redis: Redis, queue: str) -> list[str]:
    return [str(i) for i in Queue(queue, connection=redis).job_ids]


def test_cuda_runs_wait_on_the_gpu_queue_and_go_back_to_it(
    redis_client: Redis, queue_name: str, worker: Proc
) -> None:
    """A `cuda` run is queued on the GPU queue, which this module's CPU worker does not
    serve: it is still waiting after a later ordinary job ran, and a requeue (owner, reaper,
    shutdown) puts it back on the GPU queue. `auto` and `cpu` runs use the ordinary queue."""
    functions = {**FUNCTIONS, JobKind.RUN: FUNCTIONS["record"]}
    settings = RQSettings(queue_name=queue_name, gpu_queue_name=f"{queue_name}-gpu")
    queue = RQJobQueue(redis_client, settings, functions=functions)
    gpu_queue = settings.gpu_queue_name
    # The worker says which queues it serves, in RQ's registry and in our presence keys.
    workers = Worker.all(connection=redis_client, queue=Queue(queue_name, connection=redis_client))
    assert [w.queue_names() for w in workers] == [[queue_name]]
    assert redis_client.zcard(workers_key(queue_name)) == 1
    assert redis_client.zcard(workers_key(gpu_queue)) == 0

    cuda = _train_job("cuda")
    assert run_queue_name(settings, cuda.device) == gpu_queue
    job_id = queue.submit(JobKind.RUN, cuda.run_id, cuda)
    assert job_id.startswith(f"{cuda.run_id}-"), "each dispatch is an RQ job of its own"
    assert rq_job(redis_client, cuda.run_id).id == job_id
    assert _job_ids(redis_client, gpu_queue) == [job_id]
    later = uuid.uuid4().hex
    queue.enqueue("record", Payload(key=f"k:{later}"), job_id=later)
    wait_until(lambda: queue.state(later) is JobState.FINISHED, 60, "the ordinary job to run")
    assert queue.state(job_id) is JobState.QUEUED
    assert queue.job_pending(cuda.run_id)

    fetch_rq_job(job_id, redis_client).cancel()  # as if its attempt ended
    assert not queue.job_pending(cuda.run_id)
    again = queue.requeue(JobKind.RUN, cuda.run_id)
    assert again is not None and again != job_id
    assert _job_ids(redis_client, gpu_queue) == [again]
    assert again not in _job_ids(redis_client, queue_name)
    fetch_rq_job(again, redis_client).cancel()


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_other_runs_go_on_the_ordinary_queue(redis_client: Redis, device: str) -> None:
    settings = RQSettings(queue_name=f"unserved-{uuid.uuid4().hex[:8]}")
    queue = RQJobQueue(redis_client, settings)
    job = _train_job(device)
    assert run_queue_name(settings, job.device) == settings.queue_name
    job_id = queue.submit(JobKind.RUN, job.run_id, job)
    assert _job_ids(redis_client, settings.queue_name) == [job_id]
    assert _job_ids(redis_client, settings.gpu_queue_name).count(job_id) == 0
    fetch_rq_job(job_id, redis_client).cancel()


@pytest.mark.parametrize(("device", "served"), [("cpu", ["q"]), ("cuda", ["q-gpu", "q"])])
def test_a_gpu_worker_serves_the_gpu_queue_first(device: str, served: list[str]) -> None:
    settings = Settings(
        app=AppSettings.model_validate({"worker_device": device}),
        rq=RQSettings(queue_name="q", gpu_queue_name="q-gpu"),
    )
    assert worker_queue_names(settings) == served


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_gpu_worker_without_cuda_refuses_to_start(
    redis_url: str, redis_client: Redis, queue_name: str, tmp_path: Path
) -> None:
    """APP__WORKER_DEVICE=cuda where torch sees no CUDA device: the worker exits at once
    with a line that says why, and never serves (nor says it serves) either queue."""
    gpu_queue = f"{queue_name}-gpu-refused"
    env = worker_env(
        redis_url, queue_name, tmp_path, APP__WORKER_DEVICE="cuda", RQ__GPU_QUEUE_NAME=gpu_queue
    )
    proc = Proc.module(WORKER_MODULE, env, tmp_path / "worker.log")
    assert proc.process.wait(60) == 1
    output = proc.output()
    assert "worker_no_cuda" in output
    assert "APP__WORKER_DEVICE=cuda" in output and "sees no CUDA device" in output
    assert redis_client.zcard(workers_key(gpu_queue)) == 0
