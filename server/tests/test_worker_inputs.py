"""Inputs a worker must settle cleanly, end to end (API, real workers, Data Bank):

- a tokenizer or a run cancelled while queued ends `cancelled` when a worker reaches it, as
  a finished RQ job: no error, no retry;
- a corpus that cannot be trained on (whitespace only, a line past `corpus_max_line_bytes`)
  fails the tokenizer or the run at its start as the user's error, DATA_INVALID.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from rq import Queue, Worker
from rq.job import JobStatus
from rq.registry import FailedJobRegistry

from model_trainer.store.keys import TOKENIZER_KEYS
from model_trainer.store.records import StatusStore, TokenizerSummary
from model_trainer.store.runlog import RunLogReader
from tests.processes import wait_until
from tests.stack import Stack, get_json, json_dict, poll, rq_job

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

# Small enough to test with lines of a few kilobytes; the shipped default is 4 MiB.
MAX_LINE_BYTES = 4096
WORKER_ENV = {"APP__CORPUS_MAX_LINE_BYTES": str(MAX_LINE_BYTES)}
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(3000))
WHITESPACE = " \n\t\n\n   \r\n" * 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("inputs-stack"), redis_url)
    s.start_worker(**WORKER_ENV)
    yield s
    s.close()


@pytest.fixture(scope="module")
def corpus_id(stack: Stack) -> str:
    return stack.upload_text(TEXT)


@pytest.fixture(scope="module")
def tokenizer_id(stack: Stack, corpus_id: str) -> str:
    with stack.client() as client:
        accepted = _post(client, "/tokenizers/train", _tokenizer_body(corpus_id))
        done = _wait_tokenizer(client, str(accepted["tokenizer_id"]))
    assert done["status"] == "completed", done
    return str(accepted["tokenizer_id"])


def _tokenizer_body(corpus_id: str, seed: int = 0) -> dict[str, object]:
    return {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus_id, "seed": seed}


def _run_body(corpus_id: str, tokenizer_id: str) -> dict[str, object]:
    return {
        "corpus_file_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "model_size": "tiny",
        "n_layer": 1,
        "n_embd": 32,
        "max_seq_len": 16,
        "batch_size": 4,
        "max_steps": 5,
        "warmup_steps": 0,
        "eval_interval": 5,
        "eval_batches": 1,
    }


def _post(client: TestClient, path: str, body: dict[str, object]) -> dict[str, object]:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return json_dict(response.json())


def _wait_tokenizer(client: TestClient, tokenizer_id: str) -> dict[str, object]:
    return poll(
        lambda: get_json(client, f"/tokenizers/{tokenizer_id}"),
        lambda a: a["status"] in ("completed", "failed", "cancelled"),
        120,
    )


def _wait_run(client: TestClient, run_id: str) -> dict[str, object]:
    return poll(
        lambda: get_json(client, f"/runs/{run_id}"),
        lambda a: a["status"] in ("completed", "failed", "cancelled"),
        120,
    )


def _log_lines(stack: Stack, record_id: str) -> list[dict[str, object]]:
    return [json_dict(json.loads(x.line)) for x in RunLogReader(stack.redis).tail(record_id, 500)]


def _stop_workers(stack: Stack) -> None:
    for proc in stack.workers:
        proc.stop(timeout=30)
    queue = Queue(stack.queue_name, connection=stack.redis)
    wait_until(
        lambda: Worker.count(connection=stack.redis, queue=queue) == 0, 30, "workers to leave"
    )


def _job_outcome(stack: Stack, job_id: str) -> str:
    return JobStatus(rq_job(stack.redis, job_id).get_status(refresh=True)).value


def test_jobs_cancelled_while_queued_end_cleanly(stack: Stack, tokenizer_id: str) -> None:
    other_corpus = stack.upload_text(TEXT + "one more line\n")
    _stop_workers(stack)  # nothing may take the jobs before they are cancelled
    with stack.client() as client:
        queued_tokenizer = str(
            _post(client, "/tokenizers/train", _tokenizer_body(other_corpus, seed=5))[
                "tokenizer_id"
            ]
        )
        run_id = str(_post(client, "/runs/train", _run_body(other_corpus, tokenizer_id))["run_id"])
        assert get_json(client, f"/tokenizers/{queued_tokenizer}")["status"] == "queued"
        # Tokenizers have no cancel route yet: set the flag a cancel sets, as the API does for
        # runs; the worker finds it when it takes the job.
        StatusStore(stack.redis, TOKENIZER_KEYS, TokenizerSummary).request_cancel(queued_tokenizer)
        assert client.post(f"/runs/{run_id}/cancel").status_code == 202

        worker = stack.start_worker(**WORKER_ENV)

        def taken(job_id: str) -> bool:
            return _job_outcome(stack, job_id) in ("finished", "failed")

        wait_until(
            lambda: taken(queued_tokenizer) and taken(run_id),
            60,
            "the worker to take both",
            worker,
        )

        tokenizer = get_json(client, f"/tokenizers/{queued_tokenizer}")
        assert tokenizer["status"] == "cancelled", tokenizer
        assert tokenizer["message"] == "cancelled before it started"
        assert tokenizer["error"] is None and tokenizer["file_id"] is None
        run = get_json(client, f"/runs/{run_id}")
        assert run["status"] == "cancelled", run
        assert run["error"] is None and run["attempts"] == 0

    assert _job_outcome(stack, queued_tokenizer) == "finished"
    assert _job_outcome(stack, run_id) == "finished"
    failed = FailedJobRegistry(stack.queue_name, connection=stack.redis).get_job_ids()
    assert rq_job(stack.redis, queued_tokenizer).id not in failed
    assert rq_job(stack.redis, run_id).id not in failed
    events = [line.get("event") for line in _log_lines(stack, queued_tokenizer)]
    assert events == ["job_cancelled"], events
    output = worker.output()
    assert "generator didn't yield" not in output and "Traceback" not in output, output[-3000:]
    errors = [line for line in _json_lines(output) if line.get("level") in ("ERROR", "CRITICAL")]
    assert errors == [], errors


def _json_lines(output: str) -> list[dict[str, object]]:
    lines = []
    for text in output.splitlines():
        try:
            lines.append(json_dict(json.loads(text)))
        except (ValueError, AssertionError):
            continue  # a line that is not a JSON object (none is expected)
    return lines


def test_whitespace_only_corpus_fails_fast_for_tokenizers_and_runs(
    stack: Stack, tokenizer_id: str
) -> None:
    blank = stack.upload_text(WHITESPACE, "blank.txt")
    with stack.client() as client:
        accepted = _post(client, "/tokenizers/train", _tokenizer_body(blank))
        tokenizer = _wait_tokenizer(client, str(accepted["tokenizer_id"]))
        run_id = str(_post(client, "/runs/train", _run_body(blank, tokenizer_id))["run_id"])
        run = _wait_run(client, run_id)
        run_events = [line["event"] for line in client.get(f"/runs/{run_id}/logs").json()["lines"]]

    for record in (tokenizer, run):
        assert record["status"] == "failed", record
        error = json_dict(record["error"])
        assert error["kind"] == "user" and error["code"] == "DATA_INVALID", error
        assert f"its {len(WHITESPACE)} bytes are all whitespace" in str(error["message"])
    assert run["attempts"] == 0
    # Fast: refused right after the corpus was fetched, before tokenizing or training.
    assert "tokens_written" not in run_events and "run_started" not in run_events, run_events
    assert tokenizer["attempts"] == 0, "a user error is not retried"
    assert _job_outcome(stack, str(accepted["tokenizer_id"])) == "finished"


def test_a_corpus_without_line_breaks_fails_with_the_limit_named(stack: Stack) -> None:
    flat = stack.upload_text(TEXT.replace("\n", " "), "flat.txt")
    with stack.client() as client:
        accepted = _post(client, "/tokenizers/train", _tokenizer_body(flat))
        tokenizer = _wait_tokenizer(client, str(accepted["tokenizer_id"]))
    assert tokenizer["status"] == "failed", tokenizer
    error = json_dict(tokenizer["error"])
    assert error["kind"] == "user" and error["code"] == "DATA_INVALID", error
    message = str(error["message"])
    assert "line 1 of the corpus is longer than 4 KiB" in message
    assert "add line breaks" in message


def test_a_run_too_big_for_its_worker_fails_at_its_start_as_a_user_error(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    """Submitted while no worker was up (the API admits what it cannot size), the run meets a
    worker with 256 MiB: the worker refuses it at once, as a user error, never retried. The
    worker then reports its memory, so the API refuses the next one at submit."""
    _stop_workers(stack)
    small = {**WORKER_ENV, "ADMISSION__WORKER_MEMORY_BYTES": str(256 * 1024**2)}
    with stack.client() as client:
        run_id = str(_post(client, "/runs/train", _run_body(corpus_id, tokenizer_id))["run_id"])
        worker = stack.start_worker(**small)
        try:
            answer = _wait_run(client, run_id)
            assert answer["status"] == "failed", answer
            error = json_dict(answer["error"])
            assert error["kind"] == "user" and error["code"] == "CONFIG_INVALID", error
            assert "this worker's" in str(error["message"])
            assert answer["attempts"] == 0
            refused = client.post("/runs/train", json=_run_body(corpus_id, tokenizer_id))
            assert refused.status_code == 422, refused.text
            assert "lower" in refused.json()["message"]
        finally:
            worker.stop(timeout=30)
            stack.workers.remove(worker)
