"""Data Bank for tests: the real `databank_server` process and a fault-injecting proxy.

Use it from a test module with `pytest_plugins = ("tests.databank_fixtures",)` (pytest then
registers these fixtures once for the session, so every module shares one server process).

- `databank_server` (session): one server with per-permission keys and an 8 MiB cap.
- `databank_client`: a `DataBankClient` allowed everything on that server, fast backoff.
- `fault_proxy`: a `FaultProxy` in front of that server. It counts requests and, on demand,
  answers chosen statuses, drops connections mid-body, corrupts bodies or slows them down:
  the failures of a remote service, while the bytes still come from the real server.

Test modules also import helpers from here before pytest loads it as a plugin, so pytest
must not try to rewrite its asserts (it has none that matter): PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.synchronize import Barrier
from pathlib import Path

import httpx
import pytest

from model_trainer.databank.client import DataBankClient
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.disk_cache import DiskCache
from tests.processes import Proc, child_env, free_port, wait_until

UPLOAD_KEY = "upload-key-for-tests"
READ_KEY = "read-key-for-tests"
DELETE_KEY = "delete-key-for-tests"
MAX_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class DataBankServer:
    url: str
    data_root: Path
    proc: Proc


def start_databank(root: Path, port: int | None = None, **env: str) -> DataBankServer:
    """Start `python -m databank_server` on a free port with DATA_ROOT under `root`.

    The module, not the `modeltrainer-databank` script: the script in the venv runs whatever
    the last install pointed it at, the module is this checkout's (PYTHONPATH, see child_env).
    `port`: the port of a server started before on the same `root` (a restart).
    """
    root.mkdir(parents=True, exist_ok=True)
    data_root = root / "files"
    port = port or free_port()
    proc = Proc.command(
        [sys.executable, "-m", "databank_server", "--host", "127.0.0.1", "--port", str(port)],
        child_env({"DATA_ROOT": str(data_root), **env}),
        root / "databank.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: _answers(f"{url}/healthz"),
        30,
        "the data bank's /healthz",
        proc,
        progress=proc.cpu_ticks,
    )
    return DataBankServer(url, data_root, proc)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def make_client(url: str, api_key: str | None = UPLOAD_KEY, max_retries: int = 3) -> DataBankClient:
    return DataBankClient(url, api_key, max_retries=max_retries, backoff_base_sec=0.01)


@pytest.fixture(scope="session")
def databank_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataBankServer]:
    server = start_databank(
        tmp_path_factory.mktemp("databank"),
        API_UPLOAD_KEYS=UPLOAD_KEY,
        API_READ_KEYS=f"{READ_KEY},{UPLOAD_KEY}",
        API_DELETE_KEYS=f"{DELETE_KEY},{UPLOAD_KEY}",
        MAX_FILE_BYTES=str(MAX_FILE_BYTES),
        MIN_FREE_GB="0",
    )
    yield server
    server.proc.stop(timeout=10)


@pytest.fixture
def databank_client(databank_server: DataBankServer) -> Iterator[DataBankClient]:
    with make_client(databank_server.url) as client:
        yield client


@pytest.fixture
def fault_proxy(databank_server: DataBankServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(databank_server.url)
    yield proxy
    proxy.close()


# -- the fault-injecting proxy -------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None


class FaultProxy:
    """Forwards to `upstream`; set the fields below to make the next requests fail."""

    def __init__(self, upstream: str) -> None:
        # Answer these statuses (one per request, in order) instead of forwarding.
        self.fail_with: list[int] = []
        # Drop the connection after this many bytes of a body, one entry per GET of a file.
        self.cut_bodies_after: list[int] = []
        # Flip one byte in the middle of every file body (length unchanged).
        self.corrupt_bodies = False
        # Sleep between 64 KiB chunks of a file body, to make downloads overlap.
        self.chunk_delay_sec = 0.0
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.method == method and s.path == path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.upstream.close()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], proxy: FaultProxy
    ) -> None:
        super().__init__(address, handler)
        self.proxy = proxy


_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def _forward(self) -> None:
        assert isinstance(self.server, _ProxyServer)
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        is_file_get = self.command == "GET" and self.path.count("/") == 2
        with proxy.lock:
            proxy.seen.append(Seen(self.command, self.path, self.headers.get("Range")))
            status = proxy.fail_with.pop(0) if proxy.fail_with else None
            cut = proxy.cut_bodies_after.pop(0) if is_file_get and proxy.cut_bodies_after else None
        if status is not None:
            self._answer_error(status)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        with proxy.upstream.stream(self.command, self.path, headers=headers, content=body) as up:
            self.send_response(up.status_code)
            for key, value in up.headers.items():
                if key.lower() not in _HOP_HEADERS | {"date", "server"}:
                    self.send_header(key, value)
            if "content-length" in up.headers:
                self.send_header("Content-Length", up.headers["content-length"])
            self.end_headers()
            if self.command != "HEAD":
                self._copy_body(up, proxy, cut if is_file_get else None, is_file_get)

    def _copy_body(
        self, up: httpx.Response, proxy: FaultProxy, cut: int | None, is_file: bool
    ) -> None:
        sent = 0
        for chunk in up.iter_raw(64 * 1024):
            data = chunk
            if is_file and proxy.corrupt_bodies and sent == 0:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            if cut is not None and sent + len(data) >= cut:
                self.wfile.write(data[: cut - sent])
                self.wfile.flush()
                # A dropped connection: the client has fewer bytes than Content-Length.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data)
            sent += len(data)
            if is_file and proxy.chunk_delay_sec:
                time.sleep(proxy.chunk_delay_sec)

    def _answer_error(self, status: int) -> None:
        payload = json.dumps(
            {"code": "INJECTED", "message": f"injected {status}", "request_id": None}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


# -- run in another process ----------------------------------------------------------------


def fetch_corpus_in_process(
    base_url: str, cache_dir: str, file_id: str, start_together: Barrier
) -> None:
    """A `multiprocessing` target: fetch one corpus id once all peers are ready."""
    start_together.wait(timeout=60)
    with (
        make_client(base_url) as client,
        CorpusFetcher(client, DiskCache(Path(cache_dir), 1024**3)).fetch(file_id) as path,
    ):
        if not path.is_file():
            raise SystemExit(f"fetch returned {path}, which is not a file")
