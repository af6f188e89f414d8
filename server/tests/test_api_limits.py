"""Bad input and abuse at the API's door: the body cap, id shapes, `user_id`'s range, the SSE
resume header, and an OpenAPI document that lists every answer each route gives.

Real HTTP stack (the app from `create_app(build_context(...))` under TestClient) and real
Redis. Every client here checks each answer it gets against the OpenAPI document of its app
(`_checked_client`): a status a route gives but does not document fails the test that saw it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis
from starlette.types import Message

from model_trainer.api.ids import TOKENIZER_ID_PATTERN, is_stream_id
from model_trainer.api.main import build_context, create_app
from model_trainer.api.schemas import MAX_OFFSET
from model_trainer.settings import LimitsSettings, Settings
from model_trainer.store.keys import RUN_KEYS
from model_trainer.store.records import RecordMeta, RunProgress, Status, StatusStore
from model_trainer.store.runlog import RunLogReader, capture_job_logs
from model_trainer.tokenization.config import TokenizerTrainConfig
from service_common.jsonlog import bound, run_id_var
from tests.stack import Answer

CAP = 4096
KEY = "limits-test-key"
# Nothing listens on port 1: every Redis command fails at once (the API answers 503).
REDIS_DOWN = "redis://127.0.0.1:1/0"
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
RUN_ID = "run-0123456789abcdef"
TOKENIZER_ID = "tok-0123456789abcdef"
SWEEP_ID = "swp-0123456789abcdef"
# A request body each route with one accepts (values that pass validation).
BODIES: dict[tuple[str, str], dict[str, object]] = {
    ("POST", "/runs/train"): {"corpus_file_id": "a" * 64, "tokenizer_id": TOKENIZER_ID},
    ("POST", "/tokenizers/train"): {"method": "bpe", "corpus_file_id": "a" * 64},
    ("POST", "/runs/{run_id}/evaluate"): {"split": "validation"},
    ("POST", "/runs/{run_id}/generate"): {"prompt": "To be"},
    ("POST", "/v1/completions"): {"model": "run-0123456789abcdef", "prompt": "To be"},
    ("POST", "/runs/{run_id}/resume"): {},
    ("POST", "/sweeps"): {
        "base": {"corpus_file_id": "a" * 64, "tokenizer_id": TOKENIZER_ID},
        "space": {"parameters": {"learning_rate": {"values": [0.001, 0.01]}}},
    },
}
# The query a route with required query parameters takes (well-formed).
QUERIES: dict[str, str] = {"/runs/compare": f"run_id={RUN_ID}&run_id={RUN_ID}"}


# -- helpers --------------------------------------------------------------------------------


class _Url(Protocol):
    @property
    def path(self) -> str: ...


class _Sent(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def url(self) -> _Url: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class _Answer(Answer, Protocol):
    """An answer and the request it answers."""

    @property
    def request(self) -> _Sent: ...


def _settings(
    settings: Settings,
    *,
    redis_url: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = CAP,
) -> Settings:
    # The uploads' own caps are set as low, so that their 413 is as quick to provoke.
    limits = LimitsSettings(
        max_body_bytes=max_body_bytes,
        corpus_upload_max_bytes=max_body_bytes,
        model_upload_max_bytes=max_body_bytes,
    )
    update: dict[str, object] = {"limits": limits}
    if redis_url is not None:
        update["redis_url"] = redis_url
    if api_key is not None:
        update["security"] = settings.security.model_copy(
            update={
                "api_key": SecretStr(api_key),
                "allow_anonymous": False,
                # These tests send many wrong keys on purpose: no throttle here.
                "auth_failures_per_minute": 100_000,
            }
        )
    return settings.model_copy(update=update)


def _app(settings: Settings) -> FastAPI:
    return create_app(build_context(settings))


def _dict(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return {str(k): v for k, v in value.items()}


def _concrete(template: str) -> str:
    """A path template with well-formed ids in it."""
    ids = {
        "{run_id}": RUN_ID,
        "{tokenizer_id}": TOKENIZER_ID,
        "{file_id}": FILE_ID,
        "{sweep_id}": SWEEP_ID,
    }
    query = QUERIES.get(template)
    for param, value in ids.items():
        template = template.replace(param, value)
    return f"{template}?{query}" if query else template


def _operations(app: FastAPI) -> dict[tuple[str, str], dict[str, object]]:
    """(METHOD, path template) -> its operation in the OpenAPI document."""
    operations: dict[tuple[str, str], dict[str, object]] = {}
    for path, ops in _dict(app.openapi()["paths"]).items():
        for method, operation in _dict(ops).items():
            operations[(method.upper(), path)] = _dict(operation)
    return operations


def _documented(app: FastAPI) -> dict[tuple[str, str], set[int]]:
    return {
        key: {int(status) for status in _dict(op["responses"])}
        for key, op in _operations(app).items()
    }


def _template(documented: dict[tuple[str, str], set[int]], method: str, path: str) -> str:
    """The path template of the documented route that answers `method path`: literal
    segments win over parameters (`POST /runs/train`), as in the app's routing."""
    matching = [
        template
        for (verb, template) in documented
        if verb == method and re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path)
    ]
    assert matching, f"no documented route answers {method} {path}"
    return min(matching, key=lambda template: template.count("{"))


def _checked_client(app: FastAPI) -> TestClient:
    """A client whose every answer must be one the OpenAPI document lists for its route."""
    documented = _documented(app)

    def check(response: _Answer) -> None:
        method = response.request.method
        template = _template(documented, method, response.request.url.path)
        statuses = documented[(method, template)]
        assert response.status_code in statuses, (
            f"{method} {template} answered {response.status_code}, documented: {sorted(statuses)}"
        )

    client = TestClient(app)
    client.event_hooks = {"request": [], "response": [check]}
    return client


def _assert_error(response: _Answer, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = _dict(response.json())
    assert set(body) <= {"code", "message", "request_id", "details"}
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def _padded(body: dict[str, object], size: int) -> bytes:
    """`body` as JSON, padded with trailing whitespace (still valid JSON) to `size` bytes."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _new_run(redis: Redis, status: Status) -> str:
    runs = StatusStore(redis, RUN_KEYS, RunProgress)
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    assert runs.create(run_id, RecordMeta(created_at=time.time(), request={}))
    runs.set_status(run_id, status)
    return run_id


# -- 1. the body cap ------------------------------------------------------------------------


def test_a_body_over_the_cap_by_content_length_is_413_before_anything_runs(
    settings: Settings,
) -> None:
    # Redis is down and a key is required: any route that ran would answer 401 or 503.
    app = _app(_settings(settings, redis_url=REDIS_DOWN, api_key=KEY))
    over = _padded(BODIES[("POST", "/runs/train")], CAP + 1)
    with _checked_client(app) as client:
        response = client.post(
            "/runs/train",
            content=over,
            headers={"Content-Type": "application/json", "X-Request-ID": "big-1"},
        )
        body = _assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert body["request_id"] == "big-1"
        assert f"{CAP}-byte limit" in str(body["message"])
        assert response.headers["connection"] == "close"
        # Any route, a GET included: the cap is checked before routing.
        assert client.request("GET", "/healthz", content=b"x" * (CAP + 1)).status_code == 413
        # Without a body the same app answers as usual.
        assert client.get("/healthz").status_code == 200
        _assert_error(client.get(f"/runs/{RUN_ID}"), 401, "UNAUTHORIZED")


def test_a_chunked_body_over_the_cap_is_413(settings: Settings) -> None:
    app = _app(_settings(settings))
    over = _padded(BODIES[("POST", "/runs/train")], CAP + 1)
    with _checked_client(app) as client:
        response = client.post(
            "/runs/train", content=_chunks(over), headers={"Content-Type": "application/json"}
        )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    body = _assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert f"{CAP}-byte limit" in str(body["message"])
    assert response.headers["connection"] == "close"


def test_a_body_at_the_cap_is_read_and_validated_as_usual(settings: Settings) -> None:
    app = _app(_settings(settings))
    body = BODIES[("POST", "/runs/train")]
    json_type = {"Content-Type": "application/json"}
    with _checked_client(app) as client:
        for content in (_padded(body, CAP), _chunks(_padded(body, CAP))):
            # Read whole, validated, and handed to the service: the tokenizer is unknown.
            response = client.post("/runs/train", content=content, headers=json_type)
            answer = _assert_error(response, 404, "NOT_FOUND")
            assert TOKENIZER_ID in str(answer["message"])
        invalid = _padded({**body, "max_steps": 0}, CAP)
        response = client.post("/runs/train", content=invalid, headers=json_type)
        answer = _assert_error(response, 422, "VALIDATION_ERROR")
        assert [_dict(d)["field"] for d in _as_list(answer["details"])] == ["max_steps"]


def _as_list(value: object) -> list[object]:
    assert isinstance(value, list), value
    return list(value)


def test_a_chunked_body_is_read_no_further_than_the_cap(settings: Settings) -> None:
    """What the middleware pulls from the server. TestClient reads a generator body whole
    before the app sees it, so here the test is the ASGI server: it hands out 1 KiB chunks
    of a 10 MiB body, one per `receive()`, and counts them."""
    app = _app(_settings(settings))
    chunk, total_chunks = 1024, 10 * 1024
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * chunk, "more_body": pulled < total_chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/runs/train",
        "raw_path": b"/runs/train",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    # The chunk that went over the cap is the last one read.
    assert pulled == CAP // chunk + 1
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 413
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["code"] == "PAYLOAD_TOO_LARGE"


def test_a_log_stream_that_receives_a_body_over_the_cap_ends(
    settings: Settings, redis_client: Redis
) -> None:
    """A stream route reads the request only to notice a disconnect. A chunked body over the
    cap is one: the run never ends, yet the request does, with the 413 if the stream had not
    answered yet (here Starlette listens before it streams), else with the stream cut."""
    run_id = _new_run(redis_client, Status.RUNNING)
    app = _app(_settings(settings))
    with _checked_client(app) as client:
        response = client.request(
            "GET", f"/runs/{run_id}/logs/stream", content=_chunks(b"x" * (CAP + 1))
        )
    if response.status_code == 200:
        assert "event: end" not in response.text
    else:
        _assert_error(response, 413, "PAYLOAD_TOO_LARGE")


# -- 2. user_id ----------------------------------------------------------------------------


def test_user_id_is_a_signed_64_bit_integer(settings: Settings) -> None:
    app = _app(_settings(settings))
    body = BODIES[("POST", "/runs/train")]
    with _checked_client(app) as client:
        for user_id in (2**70, 2**63, -1):
            response = client.post("/runs/train", json={**body, "user_id": user_id})
            answer = _assert_error(response, 422, "VALIDATION_ERROR")
            assert [_dict(d)["field"] for d in _as_list(answer["details"])] == ["user_id"]
        # The largest one passes validation: the request reaches the (unknown) tokenizer.
        largest = client.post("/runs/train", json={**body, "user_id": 2**63 - 1})
        _assert_error(largest, 404, "NOT_FOUND")


# -- 3. ids by shape, before any lookup ----------------------------------------------------

MALFORMED_RUN_IDS = [
    "nope",
    "run-nope",
    "run-0123456789ABCDEF",  # upper case
    "run-0123456789abcde",  # 15 digits
    "run-0123456789abcdef0",  # 17 digits
    TOKENIZER_ID,  # the other kind
    "run-0123456789abcdef%0A",  # a trailing newline
    "x" * 2000,
]
MALFORMED_SWEEP_IDS = ["x", "swp-nope", "swp-0123456789ABCDEF", RUN_ID, "swp-" + "a" * 64]
MALFORMED_TOKENIZER_IDS = ["x", "tok-unknown", "tok-0123456789ABCDEF", RUN_ID, "tok-" + "a" * 64]
FILE_ID = "a" * 64
MALFORMED_FILE_IDS = ["x", "A" * 64, "a" * 63, "a" * 65, RUN_ID, "a" * 64 + "%0A"]


def test_malformed_ids_are_404_without_a_redis_lookup(settings: Settings) -> None:
    """Redis is down: a malformed id answers 404 all the same, a well-formed one 503 (the
    lookup it needs fails). So the shape is checked first, and alone."""
    app = _app(_settings(settings, redis_url=REDIS_DOWN))
    routes = [key for key in _operations(app) if "{" in key[1]]
    assert len(routes) == 19, routes
    kinds = {
        "{run_id}": ("run", MALFORMED_RUN_IDS, "16 hex digits"),
        "{sweep_id}": ("sweep", MALFORMED_SWEEP_IDS, "16 hex digits"),
        "{tokenizer_id}": ("tokenizer", MALFORMED_TOKENIZER_IDS, "16 hex digits"),
        "{file_id}": ("file", MALFORMED_FILE_IDS, "64 hex digits"),
    }
    with _checked_client(app) as client:
        for method, template in routes:
            param = next(p for p in kinds if p in template)
            kind, malformed, shape = kinds[param]
            body = BODIES.get((method, template))
            for bad in malformed:
                path = template.replace(param, bad)
                # 404, not Redis's 503: answered from the shape alone.
                answer = _assert_error(client.request(method, path, json=body), 404, "NOT_FOUND")
                message = str(answer["message"])
                assert f"unknown {kind}" in message and shape in message
                assert len(message) < 200  # a long id is cut short in the message
            good = _concrete(template)
            _assert_error(client.request(method, good, json=body), 503, "SERVICE_UNAVAILABLE")


def test_the_tokenizer_id_pattern_is_the_shape_of_real_ids() -> None:
    for method in ("bpe", "sentencepiece"):
        config = TokenizerTrainConfig.model_validate({"method": method, "corpus_file_id": "b" * 64})
        assert re.fullmatch(TOKENIZER_ID_PATTERN, config.tokenizer_id())


# -- 4. Last-Event-ID ----------------------------------------------------------------------


def _log_lines(redis: Redis, run_id: str, folder: Path, count: int) -> list[str]:
    """`count` lines in the run's log stream, written as the worker writes them."""
    log = logging.getLogger("model_trainer.test_api_limits")
    with capture_job_logs(redis, run_id, folder, maxlen=1000), bound(run_id_var, run_id):
        for i in range(count):
            log.warning("line %d", i)
    return [line.id for line in RunLogReader(redis).after(run_id, "0")]


def _event_ids(text: str) -> list[str]:
    return [line[4:] for line in text.splitlines() if line.startswith("id: ")]


def test_last_event_id_must_be_a_stream_id(
    settings: Settings, redis_client: Redis, tmp_path: Path
) -> None:
    run_id = _new_run(redis_client, Status.RUNNING)
    ids = _log_lines(redis_client, run_id, tmp_path, 5)
    assert len(ids) == 5
    StatusStore(redis_client, RUN_KEYS, RunProgress).set_status(run_id, Status.COMPLETED)
    app = _app(_settings(settings))
    malformed = [
        "abc",
        "1-",
        "-1",
        "1",
        "1-2-3",
        "1.5-0",
        " 1-0",
        "0-0 ",
        "99999999999999999999999-0",
        f"{2**64}-0",
        f"{2**64 - 1}-{2**64 - 1}",  # nothing comes after it
        "$",
        "+",
    ]
    with _checked_client(app) as client:
        for value in malformed:
            assert not is_stream_id(value), value
            response = client.get(f"/runs/{run_id}/logs/stream", headers={"Last-Event-ID": value})
            answer = _assert_error(response, 400, "BAD_REQUEST")
            assert "Last-Event-ID" in str(answer["message"])
        # A valid one resumes after that line; "0" and no header replay everything.
        resumed = client.get(f"/runs/{run_id}/logs/stream", headers={"Last-Event-ID": ids[1]})
        assert resumed.status_code == 200
        assert _event_ids(resumed.text) == ids[2:]
        assert resumed.text.rstrip().endswith('data: {"status": "completed"}')
        for headers in ({"Last-Event-ID": "0"}, {}):
            whole = client.get(f"/runs/{run_id}/logs/stream", headers=headers)
            assert _event_ids(whole.text) == ids
        last = client.get(f"/runs/{run_id}/logs/stream", headers={"Last-Event-ID": ids[-1]})
        assert _event_ids(last.text) == []
        assert "event: end" in last.text


# -- 5. the OpenAPI document ---------------------------------------------------------------


def test_openapi_documents_each_routes_error_answers(settings: Settings) -> None:
    app = _app(_settings(settings))
    doc = app.openapi()
    # Every 4xx/5xx the API answers is the shared error body; FastAPI's own 422 schema is gone.
    assert "HTTPValidationError" not in json.dumps(doc)
    operations = _operations(app)
    protected = {k: op for k, op in operations.items() if k[1] not in ("/healthz", "/readyz")}
    assert len(protected) == 34
    for (method, path), operation in protected.items():
        responses = _dict(operation["responses"])
        parameters = [_dict(p) for p in _as_list(operation.get("parameters", []))]
        validates = "requestBody" in operation or any(p["in"] == "query" for p in parameters)
        expected = {"400", "401", "413", "429", "503"}
        if validates:
            expected.add("422")
        if "{" in path:
            expected.add("404")
        errors = {s for s in responses if int(s) >= 400}
        assert expected <= errors, (method, path, sorted(errors))
        # 422 exactly where FastAPI can refuse a request.
        assert ("422" in errors) == validates, (method, path)
        for status in errors:
            content = _dict(_dict(responses[status])["content"])
            schema = _dict(content["application/json"])["schema"]
            assert schema == ERROR_REF, (method, path, status)
    assert "400" in _dict(operations[("GET", "/runs/{run_id}/logs/stream")]["responses"])
    for key in [
        ("POST", "/runs/train"),
        ("POST", "/runs/{run_id}/cancel"),
        ("POST", "/runs/{run_id}/evaluate"),
        ("POST", "/runs/{run_id}/generate"),
    ]:
        assert "409" in _dict(operations[key]["responses"]), key
    for path in ("/healthz", "/readyz"):
        assert {"400", "413"} <= set(_dict(operations[("GET", path)]["responses"]))
    # The id patterns are in the document.
    run_param = _dict(_as_list(operations[("GET", "/runs/{run_id}")]["parameters"])[0])
    assert _dict(run_param["schema"])["pattern"] == r"^run-[0-9a-f]{16}$"


def test_every_route_gives_its_documented_error_answers(settings: Settings) -> None:
    """Walks the OpenAPI document and makes each protected route give 401, 413, 503, 404 (a
    malformed id) and 422 (a bad body or query) for real; the checked clients fail on any
    answer the document does not list for that route, and each must be the one expected."""
    locked = _app(_settings(settings, api_key=KEY))
    down = _app(_settings(settings, redis_url=REDIS_DOWN))
    seen: set[tuple[str, str, int]] = set()
    with _checked_client(locked) as locked_client, _checked_client(down) as client:
        for (method, template), operation in _operations(down).items():
            if template in ("/healthz", "/readyz"):
                continue
            path = _concrete(template)
            if (method, template) in (("POST", "/corpora"), ("POST", "/models")):
                answers = _upload_answers(template, locked_client, client)
                for status, response in answers.items():
                    assert response.status_code == status, (method, template, response.text)
                    seen.add((method, template, status))
                continue
            body = BODIES[(method, template)] if "requestBody" in operation else None
            answers = {
                401: locked_client.request(method, path, json=body),
                413: client.request(method, path, content=b"{" + b" " * CAP + b"}"),
            }
            # /whoami reads nothing from Redis: it has no 503 to give.
            if template != "/whoami":
                answers[503] = client.request(method, path, json=body)
            if "{" in template:
                answers[404] = client.request(
                    method,
                    template.format(run_id="r", tokenizer_id="t", file_id="f", sweep_id="s"),
                )
            if body is not None:
                answers[422] = client.request(method, path, json={"unexpected": 1})
                answers[400] = client.request(
                    method, path, content=b"\xff{", headers={"content-type": "application/json"}
                )
            elif "422" in _dict(operation["responses"]):
                query = {
                    "/logs": "tail=0",
                    "/metrics": "after_step=-1",
                    "/compare": f"run_id={RUN_ID}",  # one run: two at least
                }.get(template[template.rfind("/") :], "limit=0")
                answers[422] = client.request(method, f"{path.split('?')[0]}?{query}")
            for status, response in answers.items():
                assert response.status_code == status, (method, template, response.text)
                seen.add((method, template, status))
    # 401, 413 and 503 from each of the 34 (but /whoami's 503); 404 from the 19 with an id;
    # 422 from the 17 with a body or query parameters; 400 (not JSON) from the 7 with a JSON
    # body. 429s: tests/test_api_keys.py.
    bodies = sum(1 for (_, _, status) in seen if status == 400)
    assert bodies == 7
    assert len(seen) == 34 * 3 - 1 + 19 + 17 + bodies


def _upload_answers(path: str, locked: TestClient, down: TestClient) -> dict[int, _Answer]:
    """`POST /corpora` and `POST /models` take a file, not JSON: an empty one is their 422
    (given with the key, Redis up: a submission is counted first); their 503 is Data Bank's
    (none runs here) or Redis's, whichever they meet first."""
    kind = {"content-type": "text/plain" if path == "/corpora" else "application/x-tar"}
    return {
        401: locked.post(path, content=b"some text", headers=kind),
        413: down.post(path, content=b"x\n" * CAP, headers=kind),
        503: down.post(path, content=b"some text", headers=kind),
        422: locked.post(path, content=b"", headers={**kind, "X-API-Key": KEY}),
    }


def test_list_offsets_are_bounded(settings: Settings) -> None:
    """A page offset past what Redis takes as an index is refused (422), not passed on (the
    fuzzer found `offset=7.4e27` reaching Redis); the deepest allowed page is simply empty."""
    with _checked_client(_app(settings)) as client:
        for path in ("/runs", "/tokenizers"):
            too_deep = client.get(path, params={"offset": MAX_OFFSET + 1})
            _assert_error(too_deep, 422, "VALIDATION_ERROR")
            deepest = client.get(path, params={"offset": MAX_OFFSET})
            assert deepest.status_code == 200 and deepest.json()["items"] == []
