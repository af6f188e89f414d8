#!/usr/bin/env python3
"""Throughput of the local Data Bank with our client: upload and download one big file.

Starts the local Data Bank (`python -m databank_server`) on a free port with its files in a
temp folder, uploads a random file (200 MB by default) with `DataBankClient.upload_file`,
downloads it with `DataBankClient.download` (verified), and prints MB/s for each, plus the
peak memory of the server and of this process (both should stay far below the file size:
everything streams).

    .venv/bin/python scripts/bench_databank.py [--mb 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from model_trainer.connections import DataBankUse, databank_client

SERVER_DIR = Path(__file__).resolve().parent.parent / "server"


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            n = min(left, 8 << 20)
            out.write(os.urandom(n))
            left -= n


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the data bank exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the data bank did not answer /healthz within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=200, help="file size in MB (10^6 bytes)")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    key = secrets.token_hex(16)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    with tempfile.TemporaryDirectory(prefix="bench-databank-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ, DATA_ROOT=str(tmp / "files"), API_UPLOAD_KEYS=key, MIN_FREE_GB="0")
        log = (tmp / "databank.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "databank_server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=SERVER_DIR,  # where `-m databank_server` finds the package
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(url, server)
            source = tmp / "source.bin"
            _write_random(source, size)
            with databank_client(url, SecretStr(key), DataBankUse.JOB) as client:
                started = time.perf_counter()
                info = client.upload_file(source)
                upload_sec = time.perf_counter() - started

                started = time.perf_counter()
                client.download(info.file_id, tmp / "downloaded.bin")
                download_sec = time.perf_counter() - started
            server_peak = _peak_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(20)
            log.close()

    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mb = size / 1_000_000
    _say(f"file      {mb:.0f} MB, sha256 {info.file_id}")
    _say(f"upload    {mb / upload_sec:7.1f} MB/s  ({upload_sec:.2f} s)")
    _say(f"download  {mb / download_sec:7.1f} MB/s  ({download_sec:.2f} s, verified)")
    _say(f"peak RSS  server {server_peak:.0f} MB, client {own_peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
