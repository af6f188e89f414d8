"""Structured corpora through the real stack (API, a worker process, Data Bank): a tokenizer
and a tiny run train from a JSONL and from a Parquet corpus; a wrong text_field fails the job
at its start as the user's error, naming the field, with the run's failed event."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from model_trainer.store.runlog import RunLogReader
from tests.event_contracts import EventCollector
from tests.stack import Stack, get_json, json_dict, poll

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

LINES = [f"record {i}: the quick brown fox jumps over the lazy dog" for i in range(1500)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("formats-stack"), redis_url)
    s.start_worker()
    yield s
    s.close()


def _jsonl_corpus() -> bytes:
    return "".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(LINES)).encode()


def _parquet_corpus() -> bytes:
    out = io.BytesIO()
    table = pa.table({"id": list(range(len(LINES))), "text": LINES})
    pq.write_table(table, out, row_group_size=500)
    return out.getvalue()


def _post(client: TestClient, path: str, body: dict[str, object]) -> dict[str, object]:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return json_dict(response.json())


def _wait(client: TestClient, path: str) -> dict[str, object]:
    return poll(
        lambda: get_json(client, path),
        lambda a: a["status"] in ("completed", "failed", "cancelled"),
        180,
    )


def _run_body(corpus_id: str, tokenizer_id: str, **extra: object) -> dict[str, object]:
    return {
        "corpus_file_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "n_layer": 1,
        "n_embd": 32,
        "max_seq_len": 16,
        "batch_size": 4,
        "max_steps": 4,
        "warmup_steps": 0,
        "eval_interval": 4,
        "eval_batches": 1,
        **extra,
    }


@pytest.mark.parametrize(
    ("corpus", "fields"),
    [
        (_jsonl_corpus, {"corpus_format": "jsonl", "text_field": "body"}),
        (_parquet_corpus, {}),  # auto: recognised by its magic, default text_field "text"
    ],
    ids=["jsonl", "parquet-auto"],
)
def test_tokenizer_and_run_train_from_a_structured_corpus(
    stack: Stack, corpus: object, fields: dict[str, object]
) -> None:
    assert callable(corpus)
    corpus_id = stack.upload_text(corpus(), "corpus.bin")
    with stack.client() as client:
        body = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus_id, **fields}
        tokenizer_id = str(_post(client, "/tokenizers/train", body)["tokenizer_id"])
        tokenizer = _wait(client, f"/tokenizers/{tokenizer_id}")
        assert tokenizer["status"] == "completed", tokenizer
        run_body = _run_body(corpus_id, tokenizer_id, **fields)
        run_id = str(_post(client, "/runs/train", run_body)["run_id"])
        run = _wait(client, f"/runs/{run_id}")
        assert run["status"] == "completed", run
    # Both jobs checked (and so trained on) the records' text, one record a line, not the
    # file's bytes: the tokenizer's job wrote it out, the run's found it written.
    text_bytes = sum(len(line) + 1 for line in LINES)
    checked = f"corpus checked: {text_bytes} bytes, {len(LINES)} lines"
    for record_id in (tokenizer_id, run_id):
        messages = [str(line.get("message")) for line in _log_lines(stack, record_id)]
        assert any(m.startswith(checked) for m in messages), messages
    tokenizer_events = [line.get("event") for line in _log_lines(stack, tokenizer_id)]
    assert "corpus_converted" in tokenizer_events, tokenizer_events


def _log_lines(stack: Stack, record_id: str) -> list[dict[str, object]]:
    return [json_dict(json.loads(x.line)) for x in RunLogReader(stack.redis).tail(record_id, 500)]


def test_a_wrong_text_field_fails_at_the_start_naming_the_field(stack: Stack) -> None:
    corpus_id = stack.upload_text(_jsonl_corpus(), "corpus.jsonl")
    events = EventCollector(stack.redis_url)
    try:
        with stack.client() as client:
            body = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus_id}
            tokenizer_id = str(_post(client, "/tokenizers/train", body)["tokenizer_id"])
            tokenizer = _wait(client, f"/tokenizers/{tokenizer_id}")
            right = {**body, "corpus_format": "jsonl", "text_field": "body"}
            usable = str(_post(client, "/tokenizers/train", right)["tokenizer_id"])
            assert _wait(client, f"/tokenizers/{usable}")["status"] == "completed"
            wrong = _run_body(corpus_id, usable, text_field="content")
            run_id = str(_post(client, "/runs/train", wrong)["run_id"])
            run = _wait(client, f"/runs/{run_id}")
            logged = [line["event"] for line in client.get(f"/runs/{run_id}/logs").json()["lines"]]
        failed = events.wait_for(run_id, "trainer.train.failed.v1")
    finally:
        events.close()
    # The tokenizer asked for the default field "text"; this corpus has "id" and "body".
    for record, field in ((tokenizer, "text"), (run, "content")):
        assert record["status"] == "failed", record
        error = json_dict(record["error"])
        assert error["kind"] == "user" and error["code"] == "CORPUS_FIELD_NOT_FOUND", error
        assert f"text_field '{field}' is not a column" in str(error["message"]), error
        assert "'id', 'body'" in str(error["message"]), error
    # Never retried for it (`attempts` may count a lease that lapsed on a starved machine:
    # a stress run saw 2, the job taken back before it got to read the corpus).
    assert "job_retry_scheduled" not in logged, logged
    assert failed["error_kind"] == "user" and failed["status"] == "failed", failed
    assert "text_field 'content'" in str(failed["message"]), failed
    assert "tokens_written" not in logged and "run_started" not in logged, logged
