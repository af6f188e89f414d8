"""The test run's own Redis: a real `redis-server` on a free port, started and stopped by us.

The suite never connects to the Redis in `REDIS_URL`: that is somebody's data (a local stack,
other projects). `conftest.py` starts one server per test run in `pytest_configure`, points
`REDIS_URL` at it for everything the run starts, and stops it in `pytest_unconfigure`, which
pytest calls also when tests fail or the run is interrupted. If pytest itself is killed, the
server goes with it: on Linux it is started with a parent-death signal.

It keeps nothing on disk (`--save "" --appendonly no`); tests that need persistence (a Redis
restarted mid-run) start their own `RedisServer` with `appendonly=True`.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from tests.processes import free_port, wait_until

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when our parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def redis_answers(url: str) -> bool:
    """Whether a Redis at `url` answers PING now (short timeouts: it may be gone)."""
    client = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except RedisError:
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "the tests start their own redis-server and none is installed: "
            "apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"
        )
    return found


class RedisServer:
    """One `redis-server` process of ours on 127.0.0.1; `url` is database 0 of it."""

    def __init__(
        self, directory: Path, *, appendonly: bool = False, port: int | None = None
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Only a prctl call between fork and exec: safe even though pytest has threads.
            preexec_fn=_die_with_parent,
        )
        wait_until(self.answers, 20, f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log()}")
        return redis_answers(self.url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM and wait (redis writes its AOF and exits); SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed beyond what AOF already has."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
