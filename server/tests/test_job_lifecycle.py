"""One lifecycle for every job kind: tokenizer and evaluation jobs survive dead and redeployed
workers and fail with the right class, as runs do (tests/test_durable_runs.py covers runs).
Real workers, Redis and Data Bank.

A job is held mid-way without any hook in the product: Data Bank is paused (SIGSTOP) before
a worker takes the job, so the job, running and leased, waits on its download; the test
then kills or stops the worker and lets Data Bank go on (SIGCONT).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_trainer.jobs.payloads import TrainJob
from model_trainer.store.keys import (
    EVAL_KEYS,
    RUN_KEYS,
    TOKENIZER_KEYS,
    JobField,
    KeySchema,
    lease_key,
)
from model_trainer.store.records import (
    RecordMeta,
    RunProgress,
    Status,
    StatusStore,
    as_str,
    hset,
)
from model_trainer.training.config import TrainingSpec
from tests.processes import Proc, wait_until
from tests.stack import Stack, get_json, job_field, json_dict, poll
from tests.test_training_runs import _run_body, _submit, _text

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

# Each kind under test: its keys, and how the test submits one job of it and reads it back.
KINDS = ("tokenizer", "eval")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("lifecycle"), redis_url)
    yield s
    with contextlib.suppress(ProcessLookupError):
        os.kill(s.databank.proc.pid, signal.SIGCONT)
    s.close()


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(stack: Stack) -> Iterator[None]:
    yield
    stack.retire_all()


@pytest.fixture(scope="module")
def corpus_id(stack: Stack) -> str:
    return stack.upload_text(_text()[:60_000])


@pytest.fixture(scope="module")
def run_id(stack: Stack, corpus_id: str) -> str:
    """A completed tiny run to evaluate (its tokenizer trained on the way)."""
    worker = stack.start_worker(_disk())
    with stack.client() as client:
        tokenizer = _submit_tokenizer(client, corpus_id, seed=1)
        assert _wait_done(lambda: _tokenizer(client, tokenizer))["status"] == "completed"
        run = _submit(client, _run_body(corpus_id, tokenizer, max_steps=20))
        done = _wait_done(lambda: get_json(client, f"/runs/{run}"))
    assert done["status"] == "completed", done
    stack.retire(worker)
    return run


def _disk() -> str:
    return f"disk-{uuid.uuid4().hex[:8]}"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _kill(stack: Stack, worker: Proc) -> None:
    """SIGKILL the worker, its job process and its scheduler: a machine lost."""
    for pid in [*_children(worker.pid), worker.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.process.wait(30)
    stack.workers.remove(worker)


@contextlib.contextmanager
def _databank_paused(stack: Stack) -> Iterator[None]:
    os.kill(stack.databank.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(stack.databank.proc.pid, signal.SIGCONT)


def _submit_tokenizer(client: TestClient, corpus_id: str, seed: int) -> str:
    # A seed of its own per test: the same request is the same (maybe finished) tokenizer.
    body = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus_id, "seed": seed}
    response = client.post("/tokenizers/train", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["tokenizer_id"])


def _tokenizer(client: TestClient, tokenizer_id: str) -> dict[str, object]:
    return get_json(client, f"/tokenizers/{tokenizer_id}")


def _evaluation(client: TestClient, run_id: str) -> dict[str, object]:
    return get_json(client, f"/runs/{run_id}/eval")


def _submit_eval(client: TestClient, run_id: str, body: dict[str, object] | None = None) -> str:
    response = client.post(f"/runs/{run_id}/evaluate", json=body or {"split": "validation"})
    assert response.status_code == 202, response.text
    return str(response.json()["eval_id"])


class Job:
    """One job of `kind` under test: submitted through the API, read back through it."""

    def __init__(self, stack: Stack, client: TestClient, kind: str, corpus: str, run: str) -> None:
        self.stack, self.client, self.kind, self.run = stack, client, kind, run
        self.keys: KeySchema = TOKENIZER_KEYS if kind == "tokenizer" else EVAL_KEYS
        self.seed = int(uuid.uuid4().int % 1_000_000)
        self.corpus = corpus
        self.id = self.submit()

    def submit(self) -> str:
        """Submit the job (a tokenizer: the same request each time, so the same id)."""
        if self.kind == "tokenizer":
            return _submit_tokenizer(self.client, self.corpus, self.seed)
        return _submit_eval(self.client, self.run)

    def answer(self) -> dict[str, object]:
        if self.kind == "tokenizer":
            return _tokenizer(self.client, self.id)
        answer = _evaluation(self.client, self.run)
        assert answer["eval_id"] == self.id, answer
        return answer

    def attempts(self) -> int:
        return int(job_field(self.stack.redis, self.id, JobField.ATTEMPTS) or 0)

    def epoch(self) -> int:
        return int(job_field(self.stack.redis, self.id, JobField.EPOCH) or 0)

    def status(self) -> str | None:
        return job_field(self.stack.redis, self.id, JobField.STATUS)

    def owner(self) -> str | None:
        token = as_str(self.stack.redis.get(lease_key(self.id)))
        return token.split("#")[0] if token else None


def _wait_done(get: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Until the job ends; fails only when its status stops changing for two minutes."""
    last_change, seen = time.monotonic(), None
    answer: dict[str, object] = {}
    while time.monotonic() - last_change < 120:
        answer = get()
        if answer["status"] in ("completed", "failed", "cancelled"):
            return answer
        state = (answer["status"], answer.get("message"))
        if state != seen:
            seen, last_change = state, time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"stuck: {answer}")


def _held_by(stack: Stack, job: Job, worker: Proc) -> None:
    """Wait until `worker` owns the job and it runs (waiting on the paused Data Bank)."""
    wait_until(
        lambda: job.owner() == stack.worker_name(worker) and job.status() == "running",
        60,
        f"{worker.pid} to take the {job.kind}",
        worker,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_killed_on_an_earlier_attempt_runs_again_on_a_fresh_worker(
    stack: Stack, corpus_id: str, run_id: str, kind: str
) -> None:
    with stack.client() as client:
        job = Job(stack, client, kind, corpus_id, run_id)
        with _databank_paused(stack):
            worker_a = stack.start_worker(_disk())
            _held_by(stack, job, worker_a)
            _kill(stack, worker_a)
        worker_b = stack.start_worker(_disk())  # an empty disk: a new machine
        done = _wait_done(job.answer)
        assert done["status"] == "completed", done
        assert done["error"] is None
        assert job.attempts() == 1, "the lost worker cost one attempt"
        assert job.epoch() == 3, "taken by A, fenced off by the reaper, taken by B"
        stack.retire(worker_b)


@pytest.mark.parametrize("kind", KINDS)
def test_killed_on_the_last_attempt_fails_as_worker_lost(
    stack: Stack, corpus_id: str, run_id: str, kind: str
) -> None:
    one_try = {"RECOVERY__MAX_ATTEMPTS": "1"}
    with stack.client() as client:
        job = Job(stack, client, kind, corpus_id, run_id)
        with _databank_paused(stack):
            worker_a = stack.start_worker(_disk(), **one_try)
            _held_by(stack, job, worker_a)
            _kill(stack, worker_a)
        worker_b = stack.start_worker(_disk(), **one_try)  # its reaper finds the job
        done = _wait_done(job.answer)
        assert done["status"] == "failed", done
        error = json_dict(done["error"])
        assert error["kind"] == "fatal" and error["code"] == "WORKER_LOST", error
        assert "stopped answering" in str(error["message"])
        # Not stuck: the same tokenizer request trains it anew; a new evaluation of the run
        # is accepted (no 409 behind a stuck one). Both complete.
        job.id = job.submit()
        assert _wait_done(job.answer)["status"] == "completed"
        stack.retire(worker_b)


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_hands_the_job_back_without_an_attempt(
    stack: Stack, corpus_id: str, run_id: str, kind: str
) -> None:
    with stack.client() as client:
        job = Job(stack, client, kind, corpus_id, run_id)
        with _databank_paused(stack):
            worker_a = stack.start_worker(_disk())
            _held_by(stack, job, worker_a)
            worker_a.process.send_signal(signal.SIGTERM)  # a redeploy
        # The download finishes; at its next safe point the job is handed back.
        answer = poll(job.answer, lambda a: a["status"] == "queued", 60)
        assert "shutdown" in str(answer["message"]), answer
        assert worker_a.process.wait(60) == 0
        stack.workers.remove(worker_a)
        worker_b = stack.start_worker(_disk())
        done = _wait_done(job.answer)
        assert done["status"] == "completed", done
        assert job.attempts() == 0, "a redeploy costs no attempt"
        assert job.epoch() == 2
        stack.retire(worker_b)


@pytest.mark.parametrize("kind", KINDS)
def test_data_bank_down_is_transient_and_retried(
    stack: Stack, corpus_id: str, run_id: str, kind: str
) -> None:
    with stack.client() as client:
        job = Job(stack, client, kind, corpus_id, run_id)
        stack.stop_databank()
        try:
            worker = stack.start_worker(_disk())
            answer = poll(job.answer, lambda a: job.attempts() >= 1, 120)
            assert answer["status"] in ("queued", "running"), answer
            if answer["status"] == "queued":
                error = json_dict(answer["error"])
                assert error["kind"] == "transient", error
                assert error["code"] == "DATABANK_UNAVAILABLE", error
        finally:
            stack.restart_databank()
        done = _wait_done(job.answer)
        assert done["status"] == "completed", done
        assert job.attempts() >= 1
        stack.retire(worker)


def test_user_and_fatal_failures_of_evaluations_are_not_retried(stack: Stack, run_id: str) -> None:
    """A corpus that cannot be text is the user's to fix; an artifact without its manifest
    (corrupt) is fatal. Neither is tried again."""
    worker = stack.start_worker(_disk())
    bad = stack.upload_text(b"good line\nbad byte: \xff\xfe\n", "bad.txt")
    with stack.client() as client:
        user = _submit_eval(client, run_id, {"corpus_file_id": bad})
        done = _wait_done(lambda: _evaluation(client, run_id))
        assert done["eval_id"] == user and done["status"] == "failed", done
        assert json_dict(done["error"])["kind"] == "user"
        assert job_field(stack.redis, user, JobField.ATTEMPTS) is None

        broken = _completed_run_without_a_manifest(stack)
        fatal = _submit_eval(client, broken)
        done = _wait_done(lambda: _evaluation(client, broken))
        assert done["eval_id"] == fatal and done["status"] == "failed", done
        assert json_dict(done["error"])["kind"] == "fatal", done
        assert job_field(stack.redis, fatal, JobField.ATTEMPTS) is None
    stack.retire(worker)


def test_user_and_fatal_failures_of_tokenizers_are_not_retried(
    stack: Stack, tmp_path: Path
) -> None:
    """A corpus that cannot be text is the user's to fix; a worker that cannot write the
    tokenizer's files (its artifacts folder is a file: a bug or a broken disk) is fatal.
    Neither is tried again."""
    bad = stack.upload_text(b"good line\nbad byte: \xff\xfe\n", "bad.txt")
    not_a_folder = tmp_path / "artifacts"
    not_a_folder.write_text("a file where the worker's artifacts folder should be")
    for corpus, worker_env, kind in (
        (bad, {}, "user"),
        (stack.upload_text(_text()[:20_000]), {"APP__ARTIFACTS_ROOT": str(not_a_folder)}, "fatal"),
    ):
        worker = stack.start_worker(_disk(), **worker_env)
        with stack.client() as client:
            tokenizer = _submit_tokenizer(client, corpus, seed=int(uuid.uuid4().int % 1_000_000))
            done = _wait_done(lambda: _tokenizer(client, tokenizer))  # noqa: B023
        assert done["status"] == "failed", done
        assert json_dict(done["error"])["kind"] == kind, done
        assert job_field(stack.redis, tokenizer, JobField.ATTEMPTS) is None
        stack.retire(worker)


def _completed_run_without_a_manifest(stack: Stack) -> str:
    """A run whose artifact is a tar of our shape with weights but no manifest (corrupt: our
    worker always writes one; weights that are not safetensors would be a user error)."""
    runs = StatusStore(stack.redis, RUN_KEYS, RunProgress)
    run = f"run-{uuid.uuid4().hex[:16]}"
    runs.create(run, RecordMeta(created_at=time.time(), request={}))
    folder = stack.root / "uploads" / run
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not read: the manifest is missing first")
    with stack.bank() as bank:
        artifact = bank.upload_directory(folder, f"model-{run}").file_id
    job = TrainJob(
        run_id=run,
        spec=TrainingSpec(),
        corpus_file_id=stack.upload_text(_text()[:5_000]),
        tokenizer_id="tok-unused",
    )
    runs.set_status(
        run,
        Status.COMPLETED,
        also=(
            *runs.file_id_commands(run, artifact),
            *hset(run, (JobField.PAYLOAD, job.model_dump_json())),
        ),
    )
    return run
