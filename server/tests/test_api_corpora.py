"""`POST /corpora` and `GET /corpora`: a corpus uploaded through the API to a real Data Bank.

Real HTTP app (TestClient), real Redis, a real Data Bank server process (tests/stack.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_trainer.api.main import build_context, create_app
from model_trainer.settings import LimitsSettings, Settings
from model_trainer.store.keys import CORPORA_INDEX, CORPORA_INFO
from tests.processes import free_port
from tests.stack import Answer, Stack, json_dict

TEXT = {"content-type": "text/plain"}
UPLOAD_CAP = 8192
BODY_CAP = 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("corpora"), redis_url)
    s.redis.delete(CORPORA_INDEX, CORPORA_INFO)
    yield s
    s.close()


def _settings(stack: Stack, **app: object) -> Settings:
    settings = stack.settings()
    # The JSON cap below the upload cap: a corpus between the two must still be accepted.
    limits = LimitsSettings(max_body_bytes=BODY_CAP, corpus_upload_max_bytes=UPLOAD_CAP)
    return settings.model_copy(
        update={"limits": limits, "app": settings.app.model_copy(update=app)}
    )


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient]:
    with TestClient(create_app(build_context(_settings(stack)))) as c:
        yield c


def _spool_is_empty(stack: Stack) -> bool:
    spool = stack.settings().app.data_root / "uploads"
    return not spool.exists() or not any(spool.iterdir())


def _upload(client: TestClient, body: bytes, name: str = "corpus.txt") -> Answer:
    return client.post("/corpora", params={"name": name}, content=body, headers=TEXT)


def test_upload_stores_the_corpus_in_data_bank_and_lists_it(
    client: TestClient, stack: Stack
) -> None:
    # Larger than the 1 KiB cap on JSON bodies: this route has its own.
    first = ("To be, or not to be, that is the question.\n" * 100).encode()
    second = "Über allen Gipfeln ist Ruh.\nIn allen Wipfeln\n".encode()
    assert BODY_CAP < len(first) < UPLOAD_CAP

    answer = _upload(client, first, "hamlet.txt")
    assert answer.status_code == 201, answer.text
    info = json_dict(answer.json())
    assert info["file_id"] == hashlib.sha256(first).hexdigest()
    assert (info["name"], info["size"], info["lines"]) == ("hamlet.txt", len(first), 100)
    with stack.bank() as bank:
        assert bank.info(str(info["file_id"])).size == len(first)

    assert _upload(client, second, "goethe.txt").status_code == 201
    names = [json_dict(i)["name"] for i in _items(client)]
    assert names[:2] == ["goethe.txt", "hamlet.txt"]  # newest first

    # The same bytes again: one entry, moved to the top under its latest name.
    assert _upload(client, first, "hamlet-again.txt").status_code == 201
    items = [json_dict(i) for i in _items(client)]
    assert [i["name"] for i in items] == ["hamlet-again.txt", "goethe.txt"]
    assert _spool_is_empty(stack)


def _items(client: TestClient) -> list[object]:
    listed = json_dict(client.get("/corpora").json())
    items = listed["items"]
    assert isinstance(items, list)
    assert json_dict(listed["page"])["total"] == len(items)
    return items


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b" \n\t\n", "whitespace"),
        (b"caf\xe9 au lait\n", "not valid UTF-8: byte 0xe9 at byte offset 3"),
    ],
)
def test_a_corpus_no_job_could_use_is_refused(
    client: TestClient, stack: Stack, body: bytes, says: str
) -> None:
    answer = _upload(client, body)
    assert answer.status_code == 422, answer.text
    error = json_dict(answer.json())
    assert error["code"] == "DATA_INVALID"
    assert says in str(error["message"])
    assert _spool_is_empty(stack)


def test_a_corpus_over_its_cap_is_413_declared_or_streamed(
    client: TestClient, stack: Stack
) -> None:
    big = b"word " * (UPLOAD_CAP // 5 + 1) + b"\n"
    declared = _upload(client, big)
    assert declared.status_code == 413
    message = str(json_dict(declared.json())["message"])
    assert "limits.corpus_upload_max_bytes" in message

    def chunks() -> Iterator[bytes]:
        for _ in range(UPLOAD_CAP // 1000 + 2):
            yield b"x" * 999 + b"\n"

    streamed = client.post("/corpora", content=chunks(), headers=TEXT)  # no Content-Length
    assert streamed.status_code == 413
    assert _spool_is_empty(stack)


def test_a_form_upload_is_refused_with_a_hint(client: TestClient) -> None:
    answer = client.post("/corpora", files={"file": ("a.txt", b"some text\n")})
    assert answer.status_code == 422
    assert "not a form" in str(json_dict(answer.json())["message"])


def test_a_bad_name_is_422(client: TestClient) -> None:
    answer = _upload(client, b"text\n", name="../etc/passwd")
    assert answer.status_code == 422
    assert json_dict(answer.json())["code"] == "VALIDATION_ERROR"


def test_data_bank_down_is_503_and_nothing_is_listed(stack: Stack, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    app = create_app(build_context(_settings(stack, data_bank_api_url=nowhere)))
    with TestClient(app) as client:
        before = _items(client)
        answer = _upload(client, b"a corpus nobody will see\n")
        assert answer.status_code == 503, answer.text
        assert "Data Bank" in str(json_dict(answer.json())["message"])
        assert _items(client) == before
    assert _spool_is_empty(stack)
