"""The local Data Bank as a real process, spoken to over plain HTTP as the contract says."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from databank_server.errors import VOCABULARY
from databank_server.ranges import MalformedRange, UnsatisfiableRange, parse_range
from databank_server.server import DataBankSettings, Permission
from databank_server.storage import FileStore
from service_common.databank_contract import ErrorCode
from tests.databank_fixtures import (
    DELETE_KEY,
    MAX_FILE_BYTES,
    READ_KEY,
    UPLOAD_KEY,
    DataBankServer,
    start_databank,
)
from tests.processes import Proc, child_env, wait_until

ALL = {"X-API-Key": UPLOAD_KEY}
SERVER_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def http(databank_server: DataBankServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=databank_server.url, timeout=30) as client:
        yield client


def _upload(
    http: httpx.Client, data: bytes, key: str | None = UPLOAD_KEY, name: str = "blob.bin"
) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    files = {"file": (name, data, "application/x-test")}
    return http.post("/files", files=files, headers=headers)


def _stored(http: httpx.Client, size: int = 1000) -> tuple[str, bytes]:
    data = os.urandom(size)
    response = _upload(http, data)
    assert response.status_code == 201, response.text
    return str(response.json()["file_id"]), data


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["code"] == code
    assert body["message"]


def test_upload_download_round_trip_is_content_addressed(http: httpx.Client) -> None:
    data = os.urandom(6 * 1024 * 1024 + 17)
    sha = hashlib.sha256(data).hexdigest()

    first = _upload(http, data)
    assert first.status_code == 201, first.text
    info = first.json()
    assert set(info) == {"file_id", "size", "sha256", "content_type", "created_at"}
    assert info["file_id"] == info["sha256"] == sha
    assert info["size"] == len(data)
    assert info["content_type"] == "application/x-test"

    again = _upload(http, data, name="other-name.bin")
    assert again.status_code == 201
    assert again.json() == info  # same bytes, same id, first created_at kept

    got = http.get(f"/files/{sha}", headers=ALL)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == sha
    assert got.headers["content-length"] == str(len(data))
    assert http.get(f"/files/{sha}/info", headers=ALL).json() == info


def test_head_headers(http: httpx.Client) -> None:
    file_id, data = _stored(http, 12345)
    head = http.head(f"/files/{file_id}", headers=ALL)
    assert head.status_code == 200
    assert head.headers["accept-ranges"] == "bytes"
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["etag"] == file_id  # unquoted sha256
    assert head.content == b""
    # Served as bytes to save, never as the uploader's type (uploaded as application/x-test):
    # an uploaded HTML page must not render as this origin's page.
    got = http.get(f"/files/{file_id}", headers=ALL)
    for answer in (head, got):
        assert answer.headers["content-type"] == "application/octet-stream"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-disposition"] == f'attachment; filename="{file_id}"'


def test_single_ranges(http: httpx.Client) -> None:
    file_id, data = _stored(http, 1000)
    path = f"/files/{file_id}"

    part = http.get(path, headers=ALL | {"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == data[10:20]
    assert part.headers["content-range"] == "bytes 10-19/1000"
    assert part.headers["content-length"] == "10"
    assert part.headers["etag"] == file_id

    tail = http.get(path, headers=ALL | {"Range": "bytes=990-"})
    assert tail.status_code == 206
    assert tail.content == data[990:]
    assert tail.headers["content-range"] == "bytes 990-999/1000"

    clamped = http.get(path, headers=ALL | {"Range": "bytes=995-5000"})
    assert clamped.content == data[995:]
    assert clamped.headers["content-range"] == "bytes 995-999/1000"


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000"])
def test_range_past_the_end_is_not_satisfiable(http: httpx.Client, header: str) -> None:
    file_id, _ = _stored(http, 1000)
    response = http.get(f"/files/{file_id}", headers=ALL | {"Range": header})
    _assert_error(response, 416, "RANGE_NOT_SATISFIABLE")
    assert response.headers["content-range"] == "bytes */1000"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "bytes=abc-", "bytes=9-3", "items=0-1", "bytes=-5", "bytes"]
)
def test_malformed_or_multiple_ranges_are_invalid(http: httpx.Client, header: str) -> None:
    file_id, _ = _stored(http, 1000)
    response = http.get(f"/files/{file_id}", headers=ALL | {"Range": header})
    _assert_error(response, 416, "INVALID_RANGE")


def test_keys_per_permission(http: httpx.Client) -> None:
    file_id, data = _stored(http)
    path = f"/files/{file_id}"
    files = {"file": ("x.bin", data)}

    _assert_error(http.post("/files", files=files), 401, "UNAUTHORIZED")
    _assert_error(
        http.post("/files", files=files, headers={"X-API-Key": READ_KEY}), 403, "FORBIDDEN"
    )

    for method in ("GET", "HEAD"):
        assert http.request(method, path).status_code == 401
        assert http.request(method, path, headers={"X-API-Key": DELETE_KEY}).status_code == 403
        assert http.request(method, path, headers={"X-API-Key": READ_KEY}).status_code == 200
    _assert_error(http.get(f"{path}/info"), 401, "UNAUTHORIZED")
    _assert_error(http.get(f"{path}/info", headers={"X-API-Key": "nope"}), 403, "FORBIDDEN")

    _assert_error(http.delete(path), 401, "UNAUTHORIZED")
    _assert_error(http.delete(path, headers={"X-API-Key": READ_KEY}), 403, "FORBIDDEN")
    assert http.delete(path, headers={"X-API-Key": DELETE_KEY}).status_code == 204

    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready"}


def test_keys_default_to_the_upload_keys() -> None:
    only_upload = DataBankSettings(api_upload_keys="a, b", api_read_keys=" ")
    assert only_upload.keys_for(Permission.READ) == {"a", "b"}
    assert only_upload.keys_for(Permission.DELETE) == {"a", "b"}
    split = DataBankSettings(api_upload_keys="a", api_delete_keys="d")
    assert split.keys_for(Permission.DELETE) == {"d"}
    assert DataBankSettings().keys_for(Permission.UPLOAD) == frozenset()


@pytest.mark.parametrize("size", [MAX_FILE_BYTES + 1, 3 * MAX_FILE_BYTES])
def test_size_cap(http: httpx.Client, databank_server: DataBankServer, size: int) -> None:
    # Just over the cap is refused while streaming; far over it, from Content-Length alone.
    response = _upload(http, b"\0" * size)
    _assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert "MAX_FILE_BYTES" in response.json()["message"]
    assert list((databank_server.data_root / "tmp").iterdir()) == []
    # The answer came after the body was read: the connection is still usable.
    assert http.get("/healthz").status_code == 200


def test_exactly_the_cap_and_empty_files_are_accepted(http: httpx.Client) -> None:
    for data in (b"", os.urandom(MAX_FILE_BYTES)):
        response = _upload(http, data)
        assert response.status_code == 201, response.text
        file_id = response.json()["file_id"]
        assert http.get(f"/files/{file_id}", headers=ALL).content == data


def test_a_file_size_cap_by_default() -> None:
    # An artifact of the trainer's (app.artifact_max_bytes, 8 GiB, and its tar) fits.
    assert DataBankSettings().max_file_bytes == 10 * 1024**3


def _refused_upload(databank_server: DataBankServer, key: str | None) -> tuple[bytes, int]:
    """Declare a 1 GiB upload, send 4 MiB of it and stop: (the answer, bytes sent before it
    came). A server that read the whole body before refusing would never answer."""
    host, port = databank_server.url.removeprefix("http://").split(":")
    boundary = "b0und4ry"
    key_header = f"X-API-Key: {key}\r\n" if key else ""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /files HTTP/1.1\r\nHost: {host}\r\n{key_header}"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {1024**3}\r\n\r\n"
            ).encode()
        )
        sent = 0
        sock.setblocking(False)
        answer = b""
        chunk = b"\0" * 65536
        last_progress = time.monotonic()
        while b"\r\n\r\n" not in answer:
            # Fails only when nothing moves for 30 s: the server waits for the rest.
            assert time.monotonic() - last_progress < 30, f"no answer after {sent} bytes"
            try:
                answer += sock.recv(65536)
                last_progress = time.monotonic()
            except BlockingIOError:
                try:
                    if sent < 4 * 1024**2:
                        sent += sock.send(chunk)
                        last_progress = time.monotonic()
                        continue
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break  # it answered and closed: the answer waits in our receive buffer
                time.sleep(0.01)
            except ConnectionResetError:
                break
        sock.setblocking(True)
        try:
            while True:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, sent


@pytest.mark.parametrize(("key", "status"), [(None, 401), (READ_KEY, 403)])
def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(
    databank_server: DataBankServer, key: str | None, status: int
) -> None:
    answer, sent = _refused_upload(databank_server, key)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    assert b"connection: close" in head.lower()
    code = "UNAUTHORIZED" if status == 401 else "FORBIDDEN"
    assert json.loads(body)["code"] == code
    assert sent < 4 * 1024**2 + 65536  # answered long before the 1 GiB declared


def test_docs_are_served_without_external_urls(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        served = http.get(asset)
        assert served.status_code == 200, asset
        assert not re.search(r"https?://", served.text), asset
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/openapi.json").json()["info"]["title"] == "Data Bank (local)"
    assert http.get("/redoc").status_code == 404


def test_delete_then_gone(http: httpx.Client) -> None:
    file_id, _ = _stored(http)
    path = f"/files/{file_id}"
    assert http.delete(path, headers=ALL).status_code == 204
    _assert_error(http.get(path, headers=ALL), 404, "NOT_FOUND")
    _assert_error(http.get(f"{path}/info", headers=ALL), 404, "NOT_FOUND")
    assert http.head(path, headers=ALL).status_code == 404
    assert http.delete(path, headers=ALL).status_code == 204  # not strict: gone is fine


@pytest.mark.parametrize("bad_id", ["abc", "A" * 64, "g" * 64, "0" * 65])
def test_invalid_file_id_is_400(http: httpx.Client, bad_id: str) -> None:
    for method in ("GET", "DELETE"):
        _assert_error(http.request(method, f"/files/{bad_id}", headers=ALL), 400, "BAD_REQUEST")
    _assert_error(http.get(f"/files/{bad_id}/info", headers=ALL), 400, "BAD_REQUEST")


def test_request_id_is_echoed_in_errors(http: httpx.Client) -> None:
    response = http.get(f"/files/{'0' * 64}", headers=ALL | {"X-Request-ID": "trace-42"})
    _assert_error(response, 404, "NOT_FOUND")
    assert response.json()["request_id"] == "trace-42"
    assert response.headers["x-request-id"] == "trace-42"


def test_uploads_that_are_not_one_file_part_are_400(http: httpx.Client) -> None:
    raw = http.post("/files", content=b"abc", headers=ALL | {"Content-Type": "text/plain"})
    _assert_error(raw, 400, "BAD_REQUEST")
    other_field = http.post("/files", files={"data": ("a.bin", b"abc")}, headers=ALL)
    _assert_error(other_field, 400, "BAD_REQUEST")
    two = http.post("/files", files=[("file", ("a", b"1")), ("file", ("b", b"2"))], headers=ALL)
    _assert_error(two, 400, "BAD_REQUEST")


def test_logs_are_json_and_never_show_keys(
    http: httpx.Client, databank_server: DataBankServer
) -> None:
    _stored(http)
    lines = [line for line in databank_server.proc.output().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines)
    assert '"event":"http_request"' in "".join(lines)
    for key in (UPLOAD_KEY, READ_KEY, DELETE_KEY):
        assert key not in "".join(lines)


def test_without_a_key_it_refuses_to_start(tmp_path: Path) -> None:
    proc = Proc.command(
        [sys.executable, "-m", "databank_server", "--host", "127.0.0.1", "--port", "0"],
        child_env({"DATA_ROOT": str(tmp_path / "files")}),
        tmp_path / "databank.log",
    )
    assert proc.process.wait(60) == 2
    assert "API_UPLOAD_KEYS" in proc.output() and "ALLOW_ANONYMOUS" in proc.output()
    proc.stop()
    assert not (tmp_path / "files").exists()  # nothing was prepared, nothing served


def test_open_strict_low_disk_server(tmp_path: Path) -> None:
    """Open only when asked (ALLOW_ANONYMOUS), and then it warns as it starts."""
    server = start_databank(
        tmp_path / "lowdisk",
        MIN_FREE_GB="1000000",
        DELETE_STRICT_404="true",
        ALLOW_ANONYMOUS="true",
    )
    try:
        warnings = [
            json.loads(line)
            for line in server.proc.output().splitlines()
            if '"databank_anonymous"' in line
        ]
        assert [w["level"] for w in warnings] == ["WARNING"]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "degraded", "reason": "low disk"}
            _assert_error(_upload(http, b"x" * 1000, key=None), 507, "INSUFFICIENT_STORAGE")
            # No keys configured: open, so a missing file is 404 rather than 401.
            missing = f"/files/{'0' * 64}"
            _assert_error(http.get(missing), 404, "NOT_FOUND")
            _assert_error(http.delete(missing), 404, "NOT_FOUND")  # strict mode
    finally:
        server.proc.stop(timeout=10)


def test_readiness_says_when_storage_is_not_writable(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    store = FileStore(not_a_folder / "files", min_free_bytes=0)
    assert store.readiness_problem() == "storage not writable"
    assert FileStore(tmp_path / "ok", min_free_bytes=0).readiness_problem() is None


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10).content_range(10) == "bytes 0-0/10"
    assert parse_range("bytes=5-", 10).length == 5
    with pytest.raises(UnsatisfiableRange):
        parse_range("bytes=0-", 0)
    with pytest.raises(MalformedRange):
        parse_range("bytes=1-2, 3-4", 10)


def test_upload_cut_by_the_client_leaves_no_temp_file(databank_server: DataBankServer) -> None:
    host, port = databank_server.url.removeprefix("http://").split(":")
    boundary = "cutcutcut"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
    ).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            (
                "POST /files HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"X-API-Key: {UPLOAD_KEY}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + 3_000_000}\r\n\r\n"
            ).encode()
            + head
            + os.urandom(2_000_000)
        )
    tmp = databank_server.data_root / "tmp"
    wait_until(lambda: not any(tmp.iterdir()), 10, "the partial upload to be removed")
    time.sleep(0.2)
    assert "unhandled" not in databank_server.proc.output()


def _imported_top_packages(package: str) -> set[str]:
    found: set[str] = set()
    for path in (SERVER_DIR / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_the_server_and_the_common_package_never_import_the_trainer() -> None:
    # Two services: the Data Bank server shares only service_common with the trainer.
    assert "model_trainer" not in _imported_top_packages("databank_server")
    assert not {"model_trainer", "databank_server"} & _imported_top_packages("service_common")


def test_starlette_errors_get_the_contract_codes_by_status() -> None:
    expected = {
        400: ErrorCode.BAD_REQUEST,
        401: ErrorCode.UNAUTHORIZED,
        403: ErrorCode.FORBIDDEN,
        404: ErrorCode.NOT_FOUND,
        405: ErrorCode.METHOD_NOT_ALLOWED,
        413: ErrorCode.PAYLOAD_TOO_LARGE,
        # The contract has no code named for these: the fallback, as for any other status.
        409: ErrorCode.BAD_REQUEST,
        422: ErrorCode.BAD_REQUEST,
        503: ErrorCode.BAD_REQUEST,
    }
    assert {status: VOCABULARY.code_for_status(status) for status in expected} == expected


def test_unknown_routes_and_methods_answer_the_error_body(http: httpx.Client) -> None:
    response = http.get("/nowhere", headers={"X-Request-ID": "trace-7"})
    assert response.status_code == 404
    assert response.json() == {"code": "NOT_FOUND", "message": "Not Found", "request_id": "trace-7"}
    assert http.put("/files", headers=ALL).json()["code"] == "METHOD_NOT_ALLOWED"
