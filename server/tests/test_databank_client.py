"""DataBankClient against the real server process, through a fault-injecting proxy, and
(for answers no honest server gives) against httpx.MockTransport."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from model_trainer.databank.archive import safe_extract
from model_trainer.databank.client import DataBankClient
from model_trainer.databank.errors import (
    BadRequest,
    Forbidden,
    InsufficientStorage,
    IntegrityError,
    InvalidFileId,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from service_common.jsonlog import bound, request_id_var
from tests.databank_fixtures import (
    MAX_FILE_BYTES,
    READ_KEY,
    UPLOAD_KEY,
    DataBankServer,
    FaultProxy,
    make_client,
)
from tests.processes import free_port


def _random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- against the real server ---------------------------------------------------------------


def test_round_trip(databank_client: DataBankClient, tmp_path: Path) -> None:
    data = _random_file(tmp_path / "weights.bin", 5 * 1024 * 1024 + 3)
    sha = hashlib.sha256(data).hexdigest()

    info = databank_client.upload_file(tmp_path / "weights.bin", content_type="application/x-w")
    assert (info.file_id, info.sha256, info.size) == (sha, sha, len(data))
    assert databank_client.info(sha) == info
    assert info.content_type == "application/x-w"
    head = databank_client.head(sha)
    # Bytes are served as bytes, whatever the uploader said (its type is in the info).
    assert (head.size, head.etag) == (len(data), sha)
    assert head.content_type == "application/octet-stream"
    assert databank_client.exists(sha)

    dest = tmp_path / "out" / "weights.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old content, replaced atomically")
    assert databank_client.download(sha, dest) == dest
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == ["weights.bin"]

    databank_client.delete(sha)
    databank_client.delete(sha)  # already gone is fine
    assert not databank_client.exists(sha)
    with pytest.raises(NotFound):
        databank_client.download(sha, tmp_path / "gone.bin")
    assert not (tmp_path / "gone.bin").exists()


def test_directory_round_trip(databank_client: DataBankClient, tmp_path: Path) -> None:
    model = tmp_path / "run" / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "weights.safetensors").write_bytes(os.urandom(300_000))
    (model / "tokenizer" / "vocab.json").write_text('{"a": 1}')

    info = databank_client.upload_directory(model, "model-r42")
    assert databank_client.upload_directory(model, "model-r42").file_id == info.file_id
    assert _leftovers(model.parent) == ["model"]  # the spooled tar is gone

    tar = databank_client.download(info.file_id, tmp_path / "model.tar")
    out = safe_extract(tar, tmp_path / "unpacked", max_members=100, max_total_bytes=10**7)
    assert _leftovers(out) == ["model-r42"]
    top = out / "model-r42"
    assert (top / "weights.safetensors").read_bytes() == (
        model / "weights.safetensors"
    ).read_bytes()
    assert (top / "tokenizer" / "vocab.json").read_text() == '{"a": 1}'


def test_documented_errors_are_typed(databank_server: DataBankServer, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    _random_file(small, 100)
    with make_client(databank_server.url, api_key=None) as anonymous:
        with pytest.raises(Unauthorized) as caught:
            anonymous.upload_file(small)
        assert caught.value.status == 401 and caught.value.service_code == "UNAUTHORIZED"
    with make_client(databank_server.url, api_key=READ_KEY) as reader:
        with pytest.raises(Forbidden):
            reader.upload_file(small)
        with pytest.raises(NotFound):
            reader.info("0" * 64)
        with pytest.raises(NotFound):
            reader.head("0" * 64)
    with make_client(databank_server.url) as client:
        big = tmp_path / "big.bin"
        _random_file(big, MAX_FILE_BYTES + 1)
        with pytest.raises(PayloadTooLarge):
            client.upload_file(big)


# -- through the fault-injecting proxy -------------------------------------------------------


@pytest.fixture
def stored(databank_client: DataBankClient, tmp_path: Path) -> tuple[str, bytes]:
    data = _random_file(tmp_path / "stored.bin", 4 * 1024 * 1024)
    return databank_client.upload_file(tmp_path / "stored.bin").file_id, data


@pytest.fixture
def via_proxy(fault_proxy: FaultProxy) -> Iterator[DataBankClient]:
    with make_client(fault_proxy.url) as client:
        yield client


def test_dropped_connections_resume(
    via_proxy: DataBankClient, fault_proxy: FaultProxy, stored: tuple[str, bytes], tmp_path: Path
) -> None:
    file_id, data = stored
    fault_proxy.cut_bodies_after = [1_000_000, 1_500_000]  # per response
    dest = via_proxy.download(file_id, tmp_path / "dl" / "corpus.txt")
    assert dest.read_bytes() == data
    gets = [s.range for s in fault_proxy.seen if s.method == "GET"]
    assert gets == [None, "bytes=1000000-", "bytes=2500000-"]
    assert _leftovers(dest.parent) == ["corpus.txt"]


def test_body_not_matching_its_etag_is_rejected(
    via_proxy: DataBankClient, fault_proxy: FaultProxy, stored: tuple[str, bytes], tmp_path: Path
) -> None:
    file_id, _ = stored
    fault_proxy.corrupt_bodies = True
    dest_dir = tmp_path / "dl"
    with pytest.raises(IntegrityError, match="does not match ETag"):
        via_proxy.download(file_id, dest_dir / "corpus.txt")
    assert _leftovers(dest_dir) == []
    assert fault_proxy.count("GET", f"/files/{file_id}") == 1  # not retried


def test_5xx_then_success_is_retried(
    via_proxy: DataBankClient, fault_proxy: FaultProxy, stored: tuple[str, bytes], tmp_path: Path
) -> None:
    file_id, data = stored
    fault_proxy.fail_with = [503, 502]
    assert via_proxy.info(file_id).size == len(data)
    assert fault_proxy.count("GET", f"/files/{file_id}/info") == 3

    fault_proxy.fail_with = [500, 429]
    assert via_proxy.download(file_id, tmp_path / "dl.bin").read_bytes() == data
    assert fault_proxy.count("GET", f"/files/{file_id}") == 3

    (tmp_path / "up.bin").write_bytes(b"retried upload")
    fault_proxy.fail_with = [503]
    via_proxy.upload_file(tmp_path / "up.bin")
    assert fault_proxy.count("POST", "/files") == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadRequest), (403, Forbidden), (404, NotFound), (507, InsufficientStorage)],
)
def test_4xx_and_507_are_not_retried(
    via_proxy: DataBankClient,
    fault_proxy: FaultProxy,
    stored: tuple[str, bytes],
    status: int,
    error: type[Exception],
) -> None:
    file_id, _ = stored
    fault_proxy.fail_with = [status]
    with pytest.raises(error):
        via_proxy.info(file_id)
    assert len(fault_proxy.seen) == 1


def test_real_4xx_answers_are_not_retried(
    fault_proxy: FaultProxy, stored: tuple[str, bytes]
) -> None:
    with make_client(fault_proxy.url, api_key="wrong") as client, pytest.raises(Forbidden):
        client.head(stored[0])
    with make_client(fault_proxy.url) as client, pytest.raises(NotFound):
        client.info("f" * 64)
    assert len(fault_proxy.seen) == 2


def test_retries_are_bounded(fault_proxy: FaultProxy, stored: tuple[str, bytes]) -> None:
    fault_proxy.fail_with = [503] * 10
    with make_client(fault_proxy.url, max_retries=2) as client, pytest.raises(Unavailable):
        client.info(stored[0])
    assert len(fault_proxy.seen) == 3
    nowhere = make_client(f"http://127.0.0.1:{free_port()}", max_retries=1)
    with nowhere, pytest.raises(Unavailable, match="ConnectError"):
        nowhere.exists(stored[0])


# -- answers no honest server gives (httpx.MockTransport) ------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _mock_client(handler: Handler, api_key: str | None = "mock-secret-key") -> DataBankClient:
    return DataBankClient(
        "http://databank.test",
        api_key,
        transport=httpx.MockTransport(handler),
        max_retries=2,
        backoff_base_sec=0.001,
    )


def test_invalid_ids_are_refused_before_any_request(tmp_path: Path) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    with _mock_client(handler) as client:
        for bad in ("abc", "A" * 64, "../" + "0" * 61):
            with pytest.raises(InvalidFileId):
                client.head(bad)
            with pytest.raises(InvalidFileId):
                client.download(bad, tmp_path / "x")
            with pytest.raises(InvalidFileId):
                client.delete(bad)
    assert calls == []


def test_upload_answer_with_another_hash_is_an_integrity_error(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()  # consume the streamed body, as a server would
        wrong = "0" * 64
        body = {
            "file_id": wrong,
            "size": 5,
            "sha256": wrong,
            "content_type": "application/octet-stream",
            "created_at": "2025-01-01T00:00:00Z",
        }
        return httpx.Response(201, json=body)

    (tmp_path / "f.bin").write_bytes(b"hello")
    with _mock_client(handler) as client, pytest.raises(IntegrityError):
        client.upload_file(tmp_path / "f.bin")


class _BrokenStream(httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


def test_a_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    headers = {"Content-Length": str(len(data)), "ETag": f'"{sha}"'}
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("range"))
        if len(ranges) == 1:
            return httpx.Response(200, headers=headers, stream=_BrokenStream(data[:4000]))
        return httpx.Response(200, headers=headers, content=data)  # Range ignored

    with _mock_client(handler) as client:
        assert client.download(sha, tmp_path / "f.bin").read_bytes() == data
    assert ranges == [None, "bytes=4000-"]


def test_key_is_never_logged_and_request_id_is_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"code": "X", "message": "busy", "request_id": None})

    caplog.set_level(logging.DEBUG)
    client = _mock_client(handler)
    with client, bound(request_id_var, "req-7"), pytest.raises(Unavailable) as caught:
        client.info("0" * 64)
    assert len(seen) == 3
    assert all(r.headers["x-api-key"] == "mock-secret-key" for r in seen)
    assert all(r.headers["x-request-id"] == "req-7" for r in seen)
    assert "mock-secret-key" not in str(caught.value)
    assert "databank_retry" in {getattr(r, "event", "") for r in caplog.records}
    assert "mock-secret-key" not in caplog.text
    assert UPLOAD_KEY not in caplog.text
