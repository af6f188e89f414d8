"""Keys per person, closed by default, trusted hosts, quotas and rate limits (issue 20).

Real HTTP stack (the app from `create_app(build_context(...))` under TestClient), real Redis
and the real Data Bank server: corpora are uploaded through `POST /corpora`, tokenizers and
runs submitted through the API and left queued (no worker runs here). Each test has
principals of its own (names with a random suffix), so indexes and quotas start empty.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis
from rq import Queue

from model_trainer.api.main import build_context, create_app
from model_trainer.errors import AppError, ErrorCode
from model_trainer.settings import ApiKey, QuotaSettings, Settings
from model_trainer.store.keys import CORPORA_BYTES, RUN_KEYS, TOKENIZER_KEYS
from model_trainer.store.records import Status, StatusStore, TokenizerSummary
from tests.databank_fixtures import UPLOAD_KEY, DataBankServer, make_client
from tests.stack import Answer, json_dict

LEGACY_KEY = "legacy-admin-key-0123456789abcdef"


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Person:
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@dataclass(frozen=True)
class People:
    ada: Person  # user
    bob: Person  # user
    root: Person  # admin, configured per person
    legacy: Person  # the one key of SECURITY__API_KEY: the admin `admin`


@pytest.fixture
def people() -> People:
    suffix = uuid.uuid4().hex[:8]
    return People(
        ada=Person(f"ada-{suffix}", f"ada-key-{uuid.uuid4().hex}"),
        bob=Person(f"bob-{suffix}", f"bob-key-{uuid.uuid4().hex}"),
        root=Person(f"root-{suffix}", f"root-key-{uuid.uuid4().hex}"),
        legacy=Person("admin", LEGACY_KEY),
    )


def _settings(
    settings: Settings, databank: DataBankServer, people: People, **quotas: int
) -> Settings:
    keys = [
        ApiKey(name=people.ada.name, role="user", key_sha256=_sha256(people.ada.key)),
        ApiKey(name=people.bob.name, role="user", key_sha256=_sha256(people.bob.key)),
        ApiKey(name=people.root.name, role="admin", key_sha256=_sha256(people.root.key)),
    ]
    security = settings.security.model_copy(
        update={"allow_anonymous": False, "api_key": SecretStr(LEGACY_KEY), "api_keys": keys}
    )
    app = settings.app.model_copy(
        update={"data_bank_api_url": databank.url, "data_bank_api_key": SecretStr(UPLOAD_KEY)}
    )
    return settings.model_copy(
        update={
            "security": security,
            "app": app,
            "quotas": QuotaSettings.model_validate(quotas),
        }
    )


@pytest.fixture
def app(settings: Settings, databank_server: DataBankServer, people: People) -> FastAPI:
    return create_app(build_context(_settings(settings, databank_server, people)))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def _error(response: Answer, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = json_dict(response.json())
    assert body["code"] == code
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert isinstance(body["message"], str) and body["message"]
    return body


def _ids(response: Answer, field: str) -> list[object]:
    """`field` of each item of a list answer."""
    items = json_dict(response.json())["items"]
    assert isinstance(items, list), items
    return [json_dict(item)[field] for item in items]


def _retry_after(response: Answer) -> int:
    value = int(response.headers["retry-after"])
    assert value >= 1
    return value


def _upload(client: TestClient, who: Person, text: str | None = None) -> str:
    body = text if text is not None else f"a corpus of {who.name} {uuid.uuid4().hex}\n" * 20
    response = client.post(
        "/corpora?name=mine.txt",
        content=body.encode(),
        headers={**who.headers, "content-type": "text/plain"},
    )
    assert response.status_code == 201, response.text
    return str(json_dict(response.json())["file_id"])


def _tokenizer(client: TestClient, who: Person, corpus: str, vocab_size: int = 300) -> str:
    body = {"method": "bpe", "corpus_file_id": corpus, "vocab_size": vocab_size}
    response = client.post("/tokenizers/train", json=body, headers=who.headers)
    assert response.status_code == 202, response.text
    return str(json_dict(response.json())["tokenizer_id"])


def _complete(redis: Redis, tokenizer_id: str, file_id: str) -> None:
    """What a worker would write at the end: the tokenizer completed, its artifact (here any
    file Data Bank holds) recorded."""
    store = StatusStore(redis, TOKENIZER_KEYS, TokenizerSummary)
    store.set_status(
        tokenizer_id, Status.COMPLETED, also=store.file_id_commands(tokenizer_id, file_id)
    )


def _run(client: TestClient, who: Person, corpus: str, tokenizer_id: str) -> Answer:
    body = {"corpus_file_id": corpus, "tokenizer_id": tokenizer_id, "max_steps": 10}
    return client.post("/runs/train", json=body, headers=who.headers)


def _queued(redis: Redis, settings: Settings) -> int:
    """Jobs on the queue plus records: what a refused submission must leave unchanged."""
    jobs = Queue(settings.rq.queue_name, connection=redis).count
    return jobs + int(redis.zcard(RUN_KEYS.index)) + int(redis.zcard(TOKENIZER_KEYS.index))


# -- 1. closed by default, trusted hosts ----------------------------------------------------


def test_the_api_refuses_to_start_without_a_key_unless_anonymous_is_asked(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    closed = settings.security.model_copy(update={"allow_anonymous": False})
    with pytest.raises(AppError) as refused:
        create_app(build_context(settings.model_copy(update={"security": closed})))
    assert refused.value.code is ErrorCode.CONFIG_INVALID
    assert "SECURITY__ALLOW_ANONYMOUS" in refused.value.message

    # Anonymous, as asked: a warning at every start, and the dashboard's data says so.
    with caplog.at_level(logging.WARNING, logger="model_trainer.api"):
        app = create_app(build_context(settings))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("SECURITY__ALLOW_ANONYMOUS" in r.getMessage() for r in warnings)
    with TestClient(app) as client:
        me = client.get("/whoami")
        assert me.status_code == 200
        assert me.json() == {"name": "anonymous", "role": "admin", "anonymous": True}
        script = client.get("/dashboard/app.js").text
        assert "/whoami" in script and "anonymous-banner" in script
        assert 'id="anonymous-banner"' in client.get("/dashboard/").text


def test_an_untrusted_host_is_refused_with_the_error_body(app: FastAPI, people: People) -> None:
    with TestClient(app, base_url="http://rebound.example") as client:
        for path in ("/healthz", "/runs", "/dashboard/"):
            response = client.get(path, headers=people.root.headers)
            body = _error(response, 400, "BAD_REQUEST")
            assert "trusted_hosts" in str(body["message"])
            assert "rebound.example" not in str(body["message"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as local:
        assert local.get("/healthz").status_code == 200


# -- 2. keys per person, with roles ---------------------------------------------------------


def test_a_user_sees_only_its_own_jobs_and_corpora_an_admin_all(
    client: TestClient, redis_client: Redis, people: People
) -> None:
    ada, bob, root = people.ada, people.bob, people.root
    corpus = _upload(client, bob)
    tokenizer_id = _tokenizer(client, bob, corpus)
    _complete(redis_client, tokenizer_id, corpus)
    accepted = _run(client, bob, corpus, tokenizer_id)
    assert accepted.status_code == 202, accepted.text
    run_id = str(json_dict(accepted.json())["run_id"])

    # Ada: every route of Bob's run, tokenizer and corpus answers as for an unknown id.
    generate = {"prompt": "To be", "checkpoint": "last"}
    for method, path, body in [
        ("GET", f"/runs/{run_id}", None),
        ("POST", f"/runs/{run_id}/cancel", None),
        ("GET", f"/runs/{run_id}/artifact", None),
        ("GET", f"/runs/{run_id}/checkpoints", None),
        ("GET", f"/runs/{run_id}/logs", None),
        ("GET", f"/runs/{run_id}/logs/stream", None),
        ("GET", f"/runs/{run_id}/metrics", None),
        ("GET", f"/runs/{run_id}/eval", None),
        ("POST", f"/runs/{run_id}/evaluate", {"split": "validation"}),
        ("POST", f"/runs/{run_id}/generate", generate),
        ("GET", f"/tokenizers/{tokenizer_id}", None),
        ("GET", f"/tokenizers/{tokenizer_id}/artifact", None),
        ("DELETE", f"/corpora/{corpus}", None),
    ]:
        response = client.request(method, path, json=body, headers=ada.headers)
        _error(response, 404, "NOT_FOUND")
    # Nor can she train on his tokenizer, or start from his run.
    _error(_run(client, ada, corpus, tokenizer_id), 404, "NOT_FOUND")
    for path in ("/runs", "/runs?status=queued", "/tokenizers", "/corpora"):
        assert json_dict(client.get(path, headers=ada.headers).json())["items"] == [], path

    # Bob sees his own; so does an admin, who may also cancel it.
    for who in (bob, root):
        assert run_id in _ids(client.get("/runs?status=queued", headers=who.headers), "run_id")
        assert run_id in _ids(client.get("/runs", headers=who.headers), "run_id")
        assert client.get(f"/runs/{run_id}", headers=who.headers).status_code == 200
        assert client.get(f"/tokenizers/{tokenizer_id}", headers=who.headers).status_code == 200
        artifact = client.get(f"/tokenizers/{tokenizer_id}/artifact", headers=who.headers)
        assert json_dict(artifact.json())["file_id"] == corpus
        assert corpus in _ids(client.get("/corpora", headers=who.headers), "file_id")
        # The run has no model yet: a conflict, not a missing run.
        answer = client.post(f"/runs/{run_id}/generate", json=generate, headers=who.headers)
        _error(answer, 409, "CONFLICT")
    cancelled = client.post(f"/runs/{run_id}/cancel", headers=root.headers)
    assert cancelled.status_code == 202
    assert json_dict(cancelled.json())["status"] == "cancelled"

    # The same tokenizer request by Ada is the same tokenizer, and hers to see from then on.
    assert _tokenizer(client, ada, corpus) == tokenizer_id
    assert client.get(f"/tokenizers/{tokenizer_id}", headers=ada.headers).status_code == 200


def test_the_single_key_of_before_acts_as_the_admin(client: TestClient, people: People) -> None:
    corpus = _upload(client, people.bob)
    me = client.get("/whoami", headers=people.legacy.headers)
    assert me.json() == {"name": "admin", "role": "admin", "anonymous": False}
    assert corpus in _ids(client.get("/corpora", headers=people.legacy.headers), "file_id")
    mine = client.get("/whoami", headers=people.ada.headers)
    assert mine.json() == {"name": people.ada.name, "role": "user", "anonymous": False}


# -- 3. quotas, rate limits, corpus delete --------------------------------------------------


def _app_with(
    settings: Settings, databank: DataBankServer, people: People, **quotas: int
) -> FastAPI:
    return create_app(build_context(_settings(settings, databank, people, **quotas)))


def test_each_quota_answers_429_with_retry_after_and_queues_nothing(
    settings: Settings, databank_server: DataBankServer, redis_client: Redis, people: People
) -> None:
    ada, bob = people.ada, people.bob
    # Submissions per minute: the third of a minute is refused, for Ada only.
    with TestClient(_app_with(settings, databank_server, people, submissions_per_minute=2)) as c:
        corpus = _upload(c, ada)
        _tokenizer(c, ada, corpus, vocab_size=300)
        before = _queued(redis_client, settings)
        refused = c.post(
            "/tokenizers/train",
            json={"method": "bpe", "corpus_file_id": corpus, "vocab_size": 301},
            headers=ada.headers,
        )
        _error(refused, 429, "RATE_LIMITED")
        assert _retry_after(refused) <= 60
        assert _queued(redis_client, settings) == before
        _upload(c, bob)  # Bob's minute is his own

    # Queued jobs: one; a second tokenizer waits for the first to start.
    with TestClient(_app_with(settings, databank_server, people, queued_jobs=1)) as c:
        corpus = _upload(c, bob)
        _tokenizer(c, bob, corpus, vocab_size=310)
        before = _queued(redis_client, settings)
        body = {"method": "bpe", "corpus_file_id": corpus, "vocab_size": 311}
        refused = c.post("/tokenizers/train", json=body, headers=bob.headers)
        _error(refused, 429, "QUOTA_EXCEEDED")
        assert _retry_after(refused) >= 1
        assert _queued(redis_client, settings) == before

    # Active runs: one queued run is all Root may have; a second is refused until it ends.
    root = people.root
    with TestClient(_app_with(settings, databank_server, people, active_runs=1)) as c:
        corpus = _upload(c, root)
        tokenizer_id = _tokenizer(c, root, corpus, vocab_size=320)
        _complete(redis_client, tokenizer_id, corpus)
        first = _run(c, root, corpus, tokenizer_id)
        assert first.status_code == 202, first.text
        before = _queued(redis_client, settings)
        too_many = _run(c, root, corpus, tokenizer_id)
        assert "quotas.active_runs" in str(_error(too_many, 429, "QUOTA_EXCEEDED")["message"])
        _retry_after(too_many)
        assert _queued(redis_client, settings) == before
        run_id = json_dict(first.json())["run_id"]
        assert c.post(f"/runs/{run_id}/cancel", headers=root.headers).status_code == 202
        assert _run(c, root, corpus, tokenizer_id).status_code == 202

    # Corpus bytes: a file that would pass the quota never reaches Data Bank or the catalog.
    held = int(redis_client.hget(CORPORA_BYTES, ada.name) or 0)
    room = held + 1500
    with TestClient(_app_with(settings, databank_server, people, corpus_bytes=room)) as c:
        _upload(c, ada, f"{uuid.uuid4().hex} fits\n" * 30)  # 1,110 bytes
        listed = len(_ids(c.get("/corpora", headers=ada.headers), "file_id"))
        text = f"{uuid.uuid4().hex} does not fit\n" * 20  # 900 bytes more
        refused = c.post(
            "/corpora", content=text.encode(), headers={**ada.headers, "content-type": "text/plain"}
        )
        _error(refused, 429, "QUOTA_EXCEEDED")
        _retry_after(refused)
        assert len(_ids(c.get("/corpora", headers=ada.headers), "file_id")) == listed
        with make_client(databank_server.url) as bank:
            assert not bank.exists(hashlib.sha256(text.encode()).hexdigest())


def test_wrong_keys_are_throttled_per_address_and_valid_keys_elsewhere_are_not(
    settings: Settings, databank_server: DataBankServer, people: People
) -> None:
    base = _settings(settings, databank_server, people)
    security = base.security.model_copy(update={"auth_failures_per_minute": 3})
    app = create_app(build_context(base.model_copy(update={"security": security})))
    guesser = TestClient(app, client=("203.0.113.7", 40000))
    with TestClient(app, client=("198.51.100.2", 40000)) as colleague:
        for _ in range(3):
            _error(guesser.get("/runs", headers={"X-API-Key": "guess"}), 401, "UNAUTHORIZED")
        throttled = guesser.get("/runs", headers={"X-API-Key": "guess"})
        _error(throttled, 429, "RATE_LIMITED")
        assert 1 <= _retry_after(throttled) <= 60
        # Over its budget, the address learns nothing more: a right key is not looked at.
        _error(guesser.get("/runs", headers=people.ada.headers), 429, "RATE_LIMITED")
        # Another address, with a right key, is answered as always; its own wrong key is a
        # plain 401 (its budget is its own), and right keys are never counted.
        for _ in range(10):
            assert colleague.get("/runs", headers=people.ada.headers).status_code == 200
        _error(colleague.get("/runs", headers={"X-API-Key": "typo"}), 401, "UNAUTHORIZED")
        assert colleague.get("/whoami", headers=people.bob.headers).status_code == 200


def test_a_corpus_is_deleted_by_its_owner_not_by_another_user(
    client: TestClient, redis_client: Redis, databank_server: DataBankServer, people: People
) -> None:
    ada, bob = people.ada, people.bob
    text = f"shared words {uuid.uuid4().hex}\n" * 30
    mine = _upload(client, ada, text)
    assert _upload(client, bob, text) == mine  # the same bytes: one file in Data Bank
    held = int(redis_client.hget(CORPORA_BYTES, ada.name) or 0)
    assert held == len(text.encode())

    _error(client.delete(f"/corpora/{'0' * 64}", headers=ada.headers), 404, "NOT_FOUND")
    # Ada's entry goes; Bob still holds the file, so Data Bank keeps it.
    assert client.delete(f"/corpora/{mine}", headers=ada.headers).status_code == 204
    _error(client.delete(f"/corpora/{mine}", headers=ada.headers), 404, "NOT_FOUND")
    assert json_dict(client.get("/corpora", headers=ada.headers).json())["items"] == []
    assert int(redis_client.hget(CORPORA_BYTES, ada.name) or 0) == 0
    with make_client(databank_server.url) as bank:
        assert bank.exists(mine)
        # Bob's is the last entry: deleting it deletes the file.
        assert client.delete(f"/corpora/{mine}", headers=bob.headers).status_code == 204
        assert not bank.exists(mine)
    assert json_dict(client.get("/corpora", headers=bob.headers).json())["items"] == []
