"""The API when Redis goes away, and what it shows of durable runs: errors, attempts,
checkpoints, and runs that start from another run's weights.

Real HTTP stack (the app from `create_app(build_context(...))` under TestClient), real Redis
servers, the real Data Bank server; records are written with the store's own classes, as the
worker writes them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from model_trainer.api.main import build_context, create_app
from model_trainer.api.schemas import TrainRequest
from model_trainer.databank.client import DataBankClient
from model_trainer.jobs.payloads import TrainJob
from model_trainer.settings import Settings
from model_trainer.store.checkpoints import CheckpointEntry, CheckpointIndex, index_commands
from model_trainer.store.fencing import DirectWriter
from model_trainer.store.keys import RUN_KEYS, TOKENIZER_KEYS, JobField
from model_trainer.store.records import (
    ErrorInfo,
    RecordMeta,
    RunProgress,
    Status,
    StatusStore,
    TokenizerSummary,
    hset,
)
from tests.databank_fixtures import UPLOAD_KEY, DataBankServer
from tests.processes import BlackHole, wait_until
from tests.redis_server import RedisServer
from tests.stack import Answer, rq_job


def _assert_error_body(response: Answer, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(build_context(settings)))


def _runs(redis: Redis) -> StatusStore[RunProgress]:
    return StatusStore(redis, RUN_KEYS, RunProgress)


def _new_run(redis: Redis, request: dict[str, object] | None = None) -> str:
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    body = request if request is not None else {"note": "written by the test"}
    meta = RecordMeta.model_validate({"created_at": time.time(), "request": body})
    assert _runs(redis).create(run_id, meta)
    return run_id


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, persisted (AOF), that the test may stop."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


# -- 1. Redis down: 503 with the error body, never 500 -----------------------------------


def test_redis_down_answers_503_fast_and_recovers(
    settings: Settings, private_redis: RedisServer
) -> None:
    settings = settings.model_copy(update={"redis_url": private_redis.url})
    direct = Redis.from_url(private_redis.url)
    run_id = _new_run(direct)
    _runs(direct).set_status(run_id, Status.RUNNING)
    direct.close()
    body = {"corpus_file_id": "a" * 64, "tokenizer_id": "tok-x", "max_steps": 10}
    with _client(settings) as client:
        assert client.get(f"/runs/{run_id}").status_code == 200

        # A log stream open when Redis goes: it ends with an `unavailable` event, not a 500.
        stopper = threading.Timer(1.0, private_redis.stop)
        stopper.start()
        stream = client.get(f"/runs/{run_id}/logs/stream")
        stopper.join()
        assert stream.status_code == 200
        assert "event: unavailable" in stream.text
        assert "SERVICE_UNAVAILABLE" in stream.text

        for method, path, json_body in [
            ("GET", f"/runs/{run_id}", None),
            ("GET", "/runs", None),
            ("POST", "/runs/train", body),
            ("GET", "/tokenizers/tok-0123456789abcdef", None),
            ("GET", f"/runs/{run_id}/checkpoints", None),
            ("POST", f"/runs/{run_id}/cancel", None),
        ]:
            response = client.request(method, path, json=json_body)
            answer = _assert_error_body(response, 503, "SERVICE_UNAVAILABLE")
            assert answer["message"] == "Redis is unavailable; try again shortly"
            assert response.headers["retry-after"] == "5"
        assert client.get("/healthz").status_code == 200
        # /readyz says so from its next background probe (api/readiness.py).
        wait_until(
            lambda: "redis unreachable" in str(client.get("/readyz").json().get("reason")),
            60,
            "/readyz to report Redis unreachable",
        )
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "degraded"

        # Same port and directory: the AOF brings the record back; the pool reconnects.
        again = RedisServer(private_redis.directory, appendonly=True, port=private_redis.port)
        try:
            again.start()
            back = client.get(f"/runs/{run_id}")
            assert back.status_code == 200, back.text
            assert back.json()["run_id"] == run_id
            assert back.json()["status"] == "running"
            assert client.get("/runs").json()["page"]["total"] == 1
        finally:
            again.stop()


def test_redis_client_fails_fast_without_retries(settings: Settings) -> None:
    """A Redis that hangs up on every connection: the request's first command fails, and
    the API answers 503 from that one connection, without connecting again to retry."""
    redis = BlackHole(close_at_once=True)
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        # Readiness probes Redis at the app's start, then not again within this test.
        health = settings.health.model_copy(update={"probe_interval_sec": 300})
        ctx = build_context(settings.model_copy(update={"redis_url": url, "health": health}))
        with TestClient(create_app(ctx)) as client:
            wait_until(
                lambda: "redis unreachable" in str(client.get("/readyz").json().get("reason")),
                60,
                "the start's readiness probe to find Redis unreachable",
            )
            before = redis.accepted
            response = client.get("/runs/run-0000000000000000")
            assert redis.accepted == before + 1
    finally:
        redis.close()
    _assert_error_body(response, 503, "SERVICE_UNAVAILABLE")


# -- 3. errors and attempts, one round trip -----------------------------------------------


def test_run_and_tokenizer_info_show_error_and_attempts(
    settings: Settings, redis_client: Redis
) -> None:
    runs = _runs(redis_client)
    run_id = _new_run(redis_client)
    error = ErrorInfo(kind="transient", code="UPSTREAM_ERROR", message="data bank answered 503")
    runs.set_status(run_id, Status.QUEUED, "retrying in 10 s", error=error)
    DirectWriter(redis_client).write(hset(run_id, (JobField.ATTEMPTS, "2")))
    fresh = _new_run(redis_client)

    tokenizers = StatusStore(redis_client, TOKENIZER_KEYS, TokenizerSummary)
    tokenizer_id = f"tok-{uuid.uuid4().hex[:16]}"
    tokenizers.create(tokenizer_id, RecordMeta(created_at=time.time(), request={}))
    bad_corpus = ErrorInfo(kind="user", code="DATA_INVALID", message="the corpus is empty")
    tokenizers.set_status(tokenizer_id, Status.FAILED, "the corpus is empty", error=bad_corpus)

    with _client(settings) as client:
        info = client.get(f"/runs/{run_id}").json()
        assert info["status"] == "queued"
        assert info["error"] == error.model_dump()
        assert info["attempts"] == 2
        plain = client.get(f"/runs/{fresh}").json()
        assert plain["error"] is None
        assert plain["attempts"] == 0
        listed = {item["run_id"]: item for item in client.get("/runs").json()["items"]}
        assert listed[run_id]["error"] == error.model_dump()
        assert listed[run_id]["attempts"] == 2
        assert listed[fresh]["attempts"] == 0
        tokenizer = client.get(f"/tokenizers/{tokenizer_id}").json()
        assert tokenizer["error"] == {
            "kind": "user",
            "code": "DATA_INVALID",
            "message": "the corpus is empty",
        }
    # The store reads the attempts with the record, in its one MGET.
    record = runs.record(run_id)
    assert record is not None and record.attempts == 2
    assert runs.record("run-nope") is None


def _command_calls(redis: Redis) -> dict[str, int]:
    stats = redis.info("commandstats")
    assert isinstance(stats, dict)
    calls: dict[str, int] = {}
    for name, value in stats.items():
        if isinstance(name, str) and isinstance(value, dict):
            calls[name.removeprefix("cmdstat_")] = int(value["calls"])
    return calls


def test_run_info_and_list_read_redis_once(settings: Settings, private_redis: RedisServer) -> None:
    """GET /runs/{id}: one HMGET; GET /runs: ZCARD + ZREVRANGE of the index, then one HMGET
    per run, in one round trip.
    Queued runs add one ZCOUNT per queue they wait on (is a worker serving it? `waiting_for`),
    not one per run."""
    settings = settings.model_copy(update={"redis_url": private_redis.url})
    direct = Redis.from_url(private_redis.url)
    run_ids = [_new_run(direct) for _ in range(3)]
    with _client(settings) as client:
        assert client.get(f"/runs/{run_ids[0]}").status_code == 200  # connects (HELLO...)
        direct.config_resetstat()
        assert client.get(f"/runs/{run_ids[0]}").status_code == 200
        one = _command_calls(direct)
        direct.config_resetstat()
        assert client.get("/runs").json()["page"]["total"] == 3
        page = _command_calls(direct)
    direct.close()
    one.pop("config|resetstat", None)
    page.pop("config|resetstat", None)
    assert one == {"hmget": 1, "zcount": 1}
    assert page == {"zcard": 1, "zrevrange": 1, "hmget": 3, "zcount": 1}


# -- 4. GET /runs/{id}/checkpoints -------------------------------------------------------


def _entry(step: int, kind: str, file_id: str, val_loss: float | None = 2.5) -> CheckpointEntry:
    return CheckpointEntry.model_validate(
        {
            "step": step,
            "kind": kind,
            "file_id": file_id,
            "sha256": file_id,
            "size": 1234,
            "val_loss": val_loss,
            "created_at": 1_700_000_000.0 + step,
            "worker": "worker-a",
        }
    )


def _write_index(redis: Redis, run_id: str, entries: list[CheckpointEntry]) -> None:
    DirectWriter(redis).write(index_commands(run_id, CheckpointIndex(entries=entries)))


def test_checkpoints_route(settings: Settings, redis_client: Redis) -> None:
    run_id = _new_run(redis_client)
    with _client(settings) as client:
        unknown = client.get("/runs/run-0000000000000000/checkpoints")
        _assert_error_body(unknown, 404, "NOT_FOUND")
        assert client.get(f"/runs/{run_id}/checkpoints").json() == {
            "run_id": run_id,
            "checkpoints": [],
        }
        # Stored as the worker's index keeps them: sorted by (step, kind).
        _write_index(
            redis_client,
            run_id,
            [
                _entry(40, "best", "b" * 64, 1.9),
                _entry(60, "last", "c" * 64, None),
                _entry(20, "last", "a" * 64, 2.4),
            ],
        )
        answer = client.get(f"/runs/{run_id}/checkpoints")
    assert answer.status_code == 200
    assert answer.json() == {
        "run_id": run_id,
        "checkpoints": [
            {
                "step": 20,
                "kind": "last",
                "val_loss": 2.4,
                "created_at": 1_700_000_020.0,
                "file_id": "a" * 64,
            },
            {
                "step": 40,
                "kind": "best",
                "val_loss": 1.9,
                "created_at": 1_700_000_040.0,
                "file_id": "b" * 64,
            },
            {
                "step": 60,
                "kind": "last",
                "val_loss": None,
                "created_at": 1_700_000_060.0,
                "file_id": "c" * 64,
            },
        ],
    }


# -- 5. POST /runs/train from another run's weights --------------------------------------


@pytest.fixture
def bank_settings(settings: Settings, databank_server: DataBankServer) -> Settings:
    app = settings.app.model_copy(
        update={
            "data_bank_api_url": databank_server.url,
            "data_bank_api_key": SecretStr(UPLOAD_KEY),
        }
    )
    return settings.model_copy(update={"app": app})


def _upload(bank: DataBankClient, directory: Path, text: str) -> str:
    path = directory / f"{uuid.uuid4().hex}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return bank.upload_file(path).file_id


class FromRunSetup:
    """A completed tokenizer and a corpus in Data Bank, and a source run with checkpoints."""

    def __init__(self, redis: Redis, bank: DataBankClient, directory: Path) -> None:
        self.redis = redis
        self.corpus_id = _upload(bank, directory, "to be or not to be\n" * 50)
        self.tokenizer_id = f"tok-{uuid.uuid4().hex[:16]}"
        tokenizers = StatusStore(redis, TOKENIZER_KEYS, TokenizerSummary)
        tokenizers.create(self.tokenizer_id, RecordMeta(created_at=time.time(), request={}))
        tokenizer_file = _upload(bank, directory, f"tok {uuid.uuid4()}")
        tokenizers.set_status(
            self.tokenizer_id,
            Status.COMPLETED,
            also=tokenizers.file_id_commands(self.tokenizer_id, tokenizer_file),
        )
        self.last_20 = _upload(bank, directory, f"ckpt 20 {uuid.uuid4()}")
        self.last_40 = _upload(bank, directory, f"ckpt 40 {uuid.uuid4()}")
        self.best_20 = _upload(bank, directory, f"best 20 {uuid.uuid4()}")
        source = TrainRequest.model_validate(self.body(n_layer=2, n_embd=64))
        self.source_id = _new_run(redis, source.model_dump(mode="json"))
        _runs(redis).set_status(self.source_id, Status.COMPLETED)
        _write_index(
            redis,
            self.source_id,
            [
                _entry(20, "last", self.last_20),
                _entry(20, "best", self.best_20),
                _entry(40, "last", self.last_40),
            ],
        )

    def body(self, **overrides: object) -> dict[str, object]:
        body: dict[str, object] = {
            "corpus_file_id": self.corpus_id,
            "tokenizer_id": self.tokenizer_id,
            "model_size": "tiny",
            "max_seq_len": 32,
            "max_steps": 50,
        }
        body.update(overrides)
        return body

    def enqueued(self, run_id: str) -> TrainJob:
        args = rq_job(self.redis, run_id).args
        assert len(args) == 1 and isinstance(args[0], str)
        return TrainJob.model_validate_json(args[0])


@pytest.fixture
def from_run(redis_client: Redis, databank_client: DataBankClient, tmp_path: Path) -> FromRunSetup:
    return FromRunSetup(redis_client, databank_client, tmp_path / "uploads")


def test_start_from_another_runs_checkpoint(
    bank_settings: Settings, from_run: FromRunSetup
) -> None:
    same_model = {"n_layer": 2, "n_embd": 64, "from_run_id": from_run.source_id}
    with _client(bank_settings) as client:
        # No from_checkpoint: the latest `last`. Other hyper-parameters may differ.
        accepted = client.post(
            "/runs/train", json=from_run.body(**same_model, learning_rate=1e-4, max_steps=99)
        )
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        job = from_run.enqueued(run_id)
        assert job.init_from is not None
        assert job.init_from.model_dump() == {
            "run_id": from_run.source_id,
            "step": 40,
            "kind": "last",
            "file_id": from_run.last_40,
        }
        request = client.get(f"/runs/{run_id}").json()["request"]
        assert request["from_run_id"] == from_run.source_id
        assert request["from_checkpoint"] == "last"

        for which, step, kind, file_id in [
            ("best", 20, "best", from_run.best_20),
            ("20", 20, "last", from_run.last_20),
        ]:
            body = from_run.body(**same_model, from_checkpoint=which)
            response = client.post("/runs/train", json=body)
            assert response.status_code == 202, response.text
            init = from_run.enqueued(response.json()["run_id"]).init_from
            assert init is not None
            assert (init.step, init.kind, init.file_id) == (step, kind, file_id)

        # Without from_run_id nothing changes: no init_from.
        plain = client.post("/runs/train", json=from_run.body(n_layer=2, n_embd=64))
        assert plain.status_code == 202, plain.text
        assert from_run.enqueued(plain.json()["run_id"]).init_from is None


def test_start_from_another_run_is_refused_when_it_cannot_work(
    bank_settings: Settings, from_run: FromRunSetup, redis_client: Redis
) -> None:
    same_model = {"n_layer": 2, "n_embd": 64, "from_run_id": from_run.source_id}
    before = _runs(redis_client).list_ids(0, 1)[1]
    with _client(bank_settings) as client:
        unknown = client.post(
            "/runs/train",
            json=from_run.body(n_layer=2, n_embd=64, from_run_id="run-0123456789abcdef"),
        )
        body = _assert_error_body(unknown, 404, "NOT_FOUND")
        assert "run-0123456789abcdef" in str(body["message"])

        missing = client.post("/runs/train", json=from_run.body(**same_model, from_checkpoint="30"))
        message = str(_assert_error_body(missing, 409, "CONFLICT")["message"])
        assert "'30'" in message
        assert "last at step 20, 40" in message and "best at step 20" in message

        # As the API stores a request: every field, defaults filled in.
        stored = TrainRequest.model_validate(from_run.body(n_layer=2, n_embd=64))
        empty_id = _new_run(redis_client, stored.model_dump(mode="json"))
        no_checkpoints = client.post(
            "/runs/train",
            json=from_run.body(n_layer=2, n_embd=64, from_run_id=empty_id),
        )
        message = str(_assert_error_body(no_checkpoints, 409, "CONFLICT")["message"])
        assert "no checkpoints yet" in message

        other_tokenizer = f"tok-{uuid.uuid4().hex[:16]}"
        different = client.post(
            "/runs/train",
            json=from_run.body(
                from_run_id=from_run.source_id,
                n_layer=2,
                n_embd=128,
                max_seq_len=64,
                tokenizer_id=other_tokenizer,
            ),
        )
        # The tokenizer check comes first: make that tokenizer usable too.
        assert different.status_code == 404
        tokenizers = StatusStore(redis_client, TOKENIZER_KEYS, TokenizerSummary)
        tokenizers.create(other_tokenizer, RecordMeta(created_at=time.time(), request={}))
        tokenizers.set_status(other_tokenizer, Status.COMPLETED)
        different = client.post(
            "/runs/train",
            json=from_run.body(
                from_run_id=from_run.source_id,
                n_layer=2,
                n_embd=128,
                max_seq_len=64,
                tokenizer_id=other_tokenizer,
            ),
        )
        body = _assert_error_body(different, 422, "VALIDATION_ERROR")
        details = body["details"]
        assert isinstance(details, list)
        assert [d["field"] for d in details] == ["n_embd", "max_seq_len", "tokenizer_id"]
        assert all(d["type"] == "differs_from_source_run" for d in details)
        assert "n_embd, max_seq_len, tokenizer_id" in str(body["message"])
        # The same shape reached another way (the preset instead of overrides) is the same.
        via_preset = client.post(
            "/runs/train",
            json=from_run.body(
                from_run_id=from_run.source_id, model_size="mini", n_layer=2, n_head=4, n_embd=64
            ),
        )
        assert via_preset.status_code == 202, via_preset.text

        # A source run whose request is not a training request cannot be compared.
        odd_id = _new_run(redis_client, {"something": "else"})
        odd = client.post(
            "/runs/train", json=from_run.body(n_layer=2, n_embd=64, from_run_id=odd_id)
        )
        assert "cannot read the request" in str(_assert_error_body(odd, 409, "CONFLICT")["message"])

        # The checkpoint's blob is gone from Data Bank: refused now, not minutes later.
        gone = "f" * 64
        _write_index(redis_client, from_run.source_id, [_entry(60, "last", gone)])
        response = client.post("/runs/train", json=from_run.body(**same_model))
        message = str(_assert_error_body(response, 409, "CONFLICT")["message"])
        assert "not in Data Bank" in message
    # Only the accepted `via_preset` run (and the source runs the test wrote) were created.
    assert _runs(redis_client).list_ids(0, 1)[1] == before + 3


# -- 6. the OpenAPI document -------------------------------------------------------------


def test_openapi_lists_checkpoints_and_the_error_answers(settings: Settings) -> None:
    doc = create_app(build_context(settings)).openapi()
    paths = doc["paths"]
    assert "/runs/{run_id}/checkpoints" in paths
    checkpoints = paths["/runs/{run_id}/checkpoints"]["get"]["responses"]
    assert checkpoints["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CheckpointList"
    }
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method in [
        ("/runs/{run_id}", "get"),
        ("/runs", "get"),
        ("/runs/train", "post"),
        ("/tokenizers/{tokenizer_id}", "get"),
        ("/runs/{run_id}/checkpoints", "get"),
    ]:
        responses = paths[path][method]["responses"]
        assert responses["503"]["content"]["application/json"]["schema"] == error_ref, path
    train = paths["/runs/train"]["post"]["responses"]
    for status in ("404", "409", "422"):
        assert train[status]["content"]["application/json"]["schema"] == error_ref
    run_info = doc["components"]["schemas"]["RunInfo"]["properties"]
    assert "error" in run_info and "attempts" in run_info
    assert "error" in doc["components"]["schemas"]["TokenizerInfo"]["properties"]
    assert "/healthz" in paths and "503" not in paths["/healthz"]["get"]["responses"]
