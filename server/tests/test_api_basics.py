"""Request ids, API-key auth on every route, the error shape, and readiness."""

from __future__ import annotations

import logging
import re
import time
import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, JsonValue, SecretStr
from redis import Redis

from model_trainer.api.deps import ApiContext
from model_trainer.api.errors import VOCABULARY
from model_trainer.api.main import build_context, create_app
from model_trainer.errors import ErrorCode
from model_trainer.jobs.payloads import TrainJob
from model_trainer.settings import HealthSettings, Settings
from model_trainer.store.keys import RUN_KEYS, JobField, JobKind, workers_key
from model_trainer.store.records import RecordMeta, RunProgress, StatusStore
from model_trainer.training.config import TrainingSpec
from tests.databank_fixtures import DataBankServer
from tests.processes import wait_until
from tests.stack import job_field


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int


PUBLIC_PATHS = {"/healthz", "/readyz"}
KEY = "s3cret-key"


def _app(settings: Settings, api_key: str | None = None) -> FastAPI:
    if api_key is not None:
        settings = settings.model_copy(
            update={
                "security": settings.security.model_copy(
                    update={
                        "api_key": SecretStr(api_key),
                        "allow_anonymous": False,
                        # These tests send many wrong keys on purpose: no throttle here.
                        "auth_failures_per_minute": 100_000,
                    }
                )
            }
        )
    return create_app(build_context(settings))


def _assert_error_shape(body: object, code: str, request_id: str | None = None) -> None:
    assert isinstance(body, dict)
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["request_id"], str) and body["request_id"]
    if request_id is not None:
        assert body["request_id"] == request_id


def test_request_id_is_echoed_or_generated(settings: Settings) -> None:
    with TestClient(_app(settings)) as client:
        echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert echoed.status_code == 200
        assert echoed.headers["x-request-id"] == "abc-123"
        made = client.get("/healthz")
        assert len(made.headers["x-request-id"]) == 32
        garbage = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
        assert garbage.headers["x-request-id"] != "bad id with spaces"


def _concrete(path: str) -> str:
    return (
        path.replace("{run_id}", "r1")
        .replace("{tokenizer_id}", "t1")
        .replace("{", "")
        .replace("}", "")
    )


def test_every_route_but_health_requires_the_api_key(settings: Settings) -> None:
    app = _app(settings, api_key=KEY)
    # The OpenAPI document lists every route, so one added later is checked too.
    paths = app.openapi()["paths"]
    protected = [
        (method.upper(), path)
        for path, ops in paths.items()
        if path not in PUBLIC_PATHS
        for method in ops
    ]
    assert protected, "the app should have protected routes"
    with TestClient(app) as client:
        for method, template in protected:
            path = _concrete(template)
            missing = client.request(method, path, headers={"X-Request-ID": "rid-1"})
            assert missing.status_code == 401, (method, template, missing.text)
            _assert_error_shape(missing.json(), "UNAUTHORIZED", "rid-1")
            wrong = client.request(method, path, headers={"X-API-Key": KEY + "x"})
            assert wrong.status_code == 401, (method, template)
            right = client.request(method, path, headers={"X-API-Key": KEY})
            assert right.status_code != 401, (method, template)
        for path in PUBLIC_PATHS:
            assert client.get(path).status_code in (200, 503)


def test_anonymous_when_asked_means_open(settings: Settings) -> None:
    """`settings` allows anonymous use (tests/stack.py TEST_SECURITY): no key needed.
    Without it the API does not start (test_api_keys.py)."""
    assert settings.security.allow_anonymous
    with TestClient(_app(settings)) as client:
        response = client.get("/runs/unknown/artifact")
        assert response.status_code == 404
        _assert_error_shape(response.json(), "NOT_FOUND")


def test_error_shape_for_404_and_422(settings: Settings) -> None:
    with TestClient(_app(settings)) as client:
        missing = client.get("/no/such/route", headers={"X-Request-ID": "r-404"})
        assert missing.status_code == 404
        _assert_error_shape(missing.json(), "NOT_FOUND", "r-404")
        wrong_method = client.post("/healthz")
        assert wrong_method.status_code == 405
        _assert_error_shape(wrong_method.json(), "METHOD_NOT_ALLOWED")


def test_validation_error_names_the_field(settings: Settings) -> None:
    app = _app(settings)

    @app.post("/_test/validate")
    def validate(body: Body) -> dict[str, int]:
        return {"vocab_size": body.vocab_size}

    with TestClient(app) as client:
        response = client.post("/_test/validate", json={"vocab_size": "many"})
        assert response.status_code == 422
        body = response.json()
        _assert_error_shape(body, "VALIDATION_ERROR")
        assert body["details"][0]["field"] == "vocab_size"
        assert "vocab_size" in body["message"]


def test_unknown_exception_is_a_sanitized_500_and_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(settings)

    @app.get("/_test/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.get("/_test/boom", headers={"X-Request-ID": "r-500"})
    assert response.status_code == 500
    body = response.json()
    _assert_error_shape(body, "INTERNAL_ERROR", "r-500")
    assert "secret" not in response.text
    assert any(
        r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records
    )


def _probing(settings: Settings) -> Settings:
    """Readiness probed often: a test sees what it changed after a probe or two."""
    return settings.model_copy(update={"health": HealthSettings(probe_interval_sec=0.1)})


def _probed(ctx: ApiContext) -> None:
    """Until a probe has run that started after this call: /readyz then reflects the state
    the test set up."""
    target = ctx.readiness.probes + 2  # the one under way may have read the state before
    wait_until(lambda: ctx.readiness.probes >= target, 30, "two readiness probes")


def test_readyz_counts_only_workers_seen_lately(
    settings: Settings, redis_client: Redis, databank_server: DataBankServer
) -> None:
    """Ready needs a member of trainer:workers:{queue} seen within worker_presence_ttl_sec:
    a worker that died without cleaning up (RQ's registry still lists it) does not count."""
    app_settings = settings.app.model_copy(update={"data_bank_api_url": databank_server.url})
    settings = _probing(settings.model_copy(update={"app": app_settings}))
    queue = settings.rq.queue_name
    ttl = settings.recovery.worker_presence_ttl_sec
    key = workers_key(queue)
    ctx = build_context(settings)
    with TestClient(create_app(ctx)) as client:
        _probed(ctx)
        degraded = client.get("/readyz")
        assert degraded.status_code == 503
        assert degraded.json() == {
            "status": "degraded",
            "reason": f"no live worker for queue {queue!r} (none seen in the last {ttl:g} s)",
            "gpu_workers": 0,
        }
        # Seen, but longer ago than the TTL; and a live worker of another queue.
        redis_client.zadd(key, {"worker-gone": time.time() - ttl - 5})
        redis_client.zadd(workers_key(queue + "-other"), {"worker-elsewhere": time.time()})
        _probed(ctx)
        stale = client.get("/readyz")
        assert stale.status_code == 503
        assert "no live worker" in stale.json()["reason"]
        redis_client.zadd(key, {"worker-a": time.time()})
        _probed(ctx)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "gpu_workers": 0}
        assert client.get("/healthz").json() == {"status": "ok"}
    redis_client.delete(key, workers_key(queue + "-other"))


def test_a_queued_cuda_run_says_it_waits_for_a_gpu_worker(
    settings: Settings, redis_client: Redis
) -> None:
    """A `cuda` run is accepted and waits on the GPU queue; while no GPU worker is alive, its
    info and /readyz say so, and once one is, the wait is no longer reported."""
    rq = settings.rq
    runs = StatusStore(redis_client, RUN_KEYS, RunProgress)
    cuda_run, cpu_run = (f"run-{uuid.uuid4().hex[:16]}" for _ in range(2))
    for run_id, device in ((cuda_run, "cuda"), (cpu_run, "auto")):
        runs.create(run_id, RecordMeta(created_at=time.time(), request={"device": device}))
    redis_client.zadd(workers_key(rq.queue_name), {"cpu-worker": time.time()})
    ctx = build_context(_probing(settings))
    with TestClient(create_app(ctx)) as client:
        waiting = client.get(f"/runs/{cuda_run}").json()
        assert waiting["status"] == "queued"
        assert waiting["queue"] == rq.gpu_queue_name
        assert waiting["waiting_for"].startswith(
            f"no live worker serves queue {rq.gpu_queue_name!r}"
        )
        ordinary = client.get(f"/runs/{cpu_run}").json()
        assert (ordinary["queue"], ordinary["waiting_for"]) == (rq.queue_name, None)
        listed = {r["run_id"]: r for r in client.get("/runs").json()["items"]}
        assert listed[cuda_run]["waiting_for"] == waiting["waiting_for"]
        _probed(ctx)
        assert client.get("/readyz").json()["gpu_workers"] == 0

        redis_client.zadd(workers_key(rq.gpu_queue_name), {"gpu-worker": time.time()})
        served = client.get(f"/runs/{cuda_run}").json()
        assert (served["queue"], served["waiting_for"]) == (rq.gpu_queue_name, None)
        _probed(ctx)
        assert client.get("/readyz").json()["gpu_workers"] == 1
    redis_client.delete(workers_key(rq.queue_name), workers_key(rq.gpu_queue_name))


def test_readyz_degraded_when_data_bank_is_unreachable(
    settings: Settings, redis_client: Redis
) -> None:
    redis_client.zadd(workers_key(settings.rq.queue_name), {"worker-a": time.time()})
    app_settings = settings.app.model_copy(update={"data_bank_api_url": "http://127.0.0.1:1"})
    ctx = build_context(_probing(settings.model_copy(update={"app": app_settings})))
    with TestClient(create_app(ctx)) as client:
        _probed(ctx)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "degraded",
            "reason": "data bank unreachable: ConnectError",
            "gpu_workers": 0,
        }
    redis_client.delete(workers_key(settings.rq.queue_name))


def test_readyz_degraded_when_redis_is_unreachable(settings: Settings) -> None:
    ctx = build_context(
        _probing(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    )
    with TestClient(create_app(ctx)) as client:
        _probed(ctx)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "degraded"
        assert "redis unreachable" in response.json()["reason"]
        assert client.get("/healthz").status_code == 200


def test_starlette_errors_get_the_api_codes_by_status() -> None:
    expected = {
        400: ErrorCode.BAD_REQUEST,
        401: ErrorCode.UNAUTHORIZED,
        403: ErrorCode.FORBIDDEN,
        404: ErrorCode.NOT_FOUND,
        405: ErrorCode.METHOD_NOT_ALLOWED,
        409: ErrorCode.CONFLICT,
        413: ErrorCode.PAYLOAD_TOO_LARGE,
        422: ErrorCode.VALIDATION_ERROR,
        503: ErrorCode.SERVICE_UNAVAILABLE,
        418: ErrorCode.BAD_REQUEST,  # no code of its own: the fallback
    }
    assert {status: VOCABULARY.code_for_status(status) for status in expected} == expected


def test_docs_work_offline(settings: Settings) -> None:
    """`/docs` is served whole by the API: no asset from a CDN (the page would be blank
    without internet), and every asset it names answers 200 from the API itself."""
    with TestClient(_app(settings, api_key="docs-key")) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        refs += re.findall(r'data-openapi="([^"]+)"', page.text)
        assert refs
        for ref in refs:
            assert not ref.startswith(("http://", "https://", "//")), ref
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            assert "http://" not in asset.text and "https://" not in asset.text, ref
        assert "/openapi.json" in refs
        assert client.get("/openapi.json").json()["info"]["title"] == "Model Trainer"
        assert client.get("/redoc").status_code == 404  # FastAPI's CDN page is off


def test_a_file_id_with_a_trailing_newline_is_a_422_not_a_data_bank_call(
    settings: Settings,
) -> None:
    """Python's `$` matches before a final newline: such an id passed validation and reached
    Data Bank (503). It is refused as the malformed field it is, before any remote call."""
    file_id = "ab" * 32 + "\n"
    bodies = {
        "/tokenizers/train": {"method": "bpe", "vocab_size": 300, "corpus_file_id": file_id},
        "/runs/train": {"corpus_file_id": file_id, "tokenizer_id": "tok-0123456789abcdef"},
    }
    with TestClient(_app(settings)) as client:
        for path, body in bodies.items():
            response = client.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
            _assert_error_shape(response.json(), "VALIDATION_ERROR")
            assert "corpus_file_id" in [d["field"] for d in response.json()["details"]]


def test_a_queued_run_pauses_at_once_and_resumes_with_a_larger_budget(
    settings: Settings, redis_client: Redis
) -> None:
    """Nobody has started it: pause is immediate (no worker involved) and resume queues it
    again as a new dispatch; the budget only grows, and only a paused run resumes."""
    runs = StatusStore(redis_client, RUN_KEYS, RunProgress)
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    job = TrainJob(
        run_id=run_id,
        spec=TrainingSpec(max_steps=100),
        corpus_file_id="0" * 64,
        tokenizer_id="tok-0000000000000000",
    )
    request: dict[str, JsonValue] = {"max_steps": 100, "corpus_file_id": "0" * 64}
    runs.create(run_id, RecordMeta(created_at=time.time(), request=request))
    ctx = build_context(settings)
    ctx.queue.submit(JobKind.RUN, run_id, job)
    first_dispatch = job_field(redis_client, run_id, JobField.DISPATCH)
    with TestClient(create_app(ctx)) as client:
        assert client.post(f"/runs/{run_id}/resume").status_code == 409  # queued, not paused
        paused = client.post(f"/runs/{run_id}/pause")
        assert paused.status_code == 202, paused.text
        assert paused.json()["status"] == "paused"
        assert "before it started" in paused.json()["message"]
        assert runs.field(run_id, JobField.PAUSE) is None  # nothing left for a worker to see
        listed = client.get("/runs", params={"status": "paused"}).json()["items"]
        assert run_id in [r["run_id"] for r in listed]

        for bad in (
            {"max_steps": 100},
            {"max_train_seconds": 600},
            {"max_steps": 1, "num_epochs": 2},
        ):
            refused = client.post(f"/runs/{run_id}/resume", json=bad)
            assert refused.status_code == 422, (bad, refused.text)
        resumed = client.post(f"/runs/{run_id}/resume", json={"max_steps": 250})
        assert resumed.status_code == 202, resumed.text
        assert resumed.json()["status"] == "queued"
        assert resumed.json()["request"]["max_steps"] == 250
        payload = TrainJob.model_validate_json(runs.field(run_id, JobField.PAYLOAD) or "")
        assert payload.spec.max_steps == 250
        assert job_field(redis_client, run_id, JobField.DISPATCH) != first_dispatch

        client.post(f"/runs/{run_id}/cancel")
        assert client.post(f"/runs/{run_id}/pause").status_code == 409  # it has ended
