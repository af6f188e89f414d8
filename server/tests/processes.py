"""Start and stop the project's real processes (worker, servers) for tests."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from tests.forkserver import ForkServer

SERVER_DIR = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
# `modeltrainer-rq-worker`'s entry point (pyproject), run as a module so the tests use this
# tree's code whatever the virtualenv's generated scripts point at.
WORKER_MODULE = "model_trainer.jobs.worker"
# The same worker, allowed to run tests/jobs_for_tests.py's jobs too (tests/worker_for_tests.py).
TEST_JOBS_WORKER_MODULE = "tests.worker_for_tests"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Quotas are a person's; the suite submits as one principal from many modules at once.
TEST_QUOTA_LIMITS = {
    "active_runs": 100_000,
    "queued_jobs": 100_000,
    "submissions_per_minute": 100_000,
}

# Hardware facts the whole run states (see conftest's `cpu`): children get them too.
HARDWARE_ENV = ("APP__NATIVE_BF16",)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process: ours without the project's settings, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APP__", "RQ__", "SECURITY__", "QUOTAS__")) or k in HARDWARE_ENV
    }
    env["PYTHONPATH"] = str(SERVER_DIR)
    # As tests/stack.py TEST_QUOTAS, for APIs run as processes.
    env.update({f"QUOTAS__{k.upper()}": str(v) for k, v in TEST_QUOTA_LIMITS.items()})
    env.update(extra)
    return env


class Process(Protocol):
    """What tests use of a process: `subprocess.Popen`, or a child of the fork server."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


_fork_server: ForkServer | None = None


def _forked(module: str, env: Mapping[str, str], log_path: Path) -> Process:
    """`python -m module`, forked from this test process's fork server (tests/forkserver.py)."""
    global _fork_server
    if _fork_server is None:
        _fork_server = ForkServer(child_env({}), SERVER_DIR)
        atexit.register(_fork_server.close)
    return _fork_server.spawn(module, env, log_path, SERVER_DIR)


class Proc:
    """A child process with its output in a log file (read it when a test fails)."""

    def __init__(self, process: Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @classmethod
    def command(cls, args: list[str], env: Mapping[str, str], log_path: Path) -> Proc:
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                args, env=dict(env), cwd=SERVER_DIR, stdout=log, stderr=subprocess.STDOUT
            )
        return cls(popen, log_path)

    @classmethod
    def module(cls, module: str, env: Mapping[str, str], log_path: Path) -> Proc:
        """`python -m module` forked from the fork server (tests/forkserver.py): a worker
        whose torch is already imported."""
        return cls(_forked(module, env, log_path), log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_ticks(self) -> int:
        """CPU time the process (and its finished children) has used, in clock ticks: a
        sign of life while it starts (importing torch takes seconds, and minutes on a
        loaded machine) that says nothing through its output."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return -1
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), 11-14 after the name.
        return sum(int(value) for value in fields[11:15])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.poll()
        return code if code is not None else -1

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    proc: Proc | None = None,
    progress: Callable[[], object] | None = None,
) -> None:
    """Until `predicate()`. Without `progress`, at most `timeout` seconds (for what has no
    sign of life: a process starting). With it, no deadline while `progress()` keeps
    changing: fail only when it stood still for `timeout` seconds (a stuck job, not a slow
    machine). A `proc` that dies fails the wait at once, with its output.

    It looks every 20 ms at first, then less often up to every 0.25 s: what is quick is
    seen at once, and a wait of minutes does not spend a core asking (each look at a run is
    an HTTP request through the whole API)."""
    last_change = time.monotonic()
    seen = progress() if progress is not None else None
    delay = 0.02
    while time.monotonic() - last_change < timeout:
        if predicate():
            return
        if proc is not None and not proc.alive():
            raise AssertionError(f"process died while waiting for {what}:\n{proc.output()[-4000:]}")
        if progress is not None:
            now = progress()
            if now != seen:
                seen, last_change = now, time.monotonic()
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    detail = f"\n{proc.output()[-4000:]}" if proc is not None else ""
    still = " with no progress" if progress is not None else ""
    raise AssertionError(f"waited {timeout:.0f}s{still} for {what}{detail}")


def start_worker_process(
    env: Mapping[str, str],
    log_path: Path,
    registered: Callable[[Proc], bool],
    module: str = WORKER_MODULE,
) -> Proc:
    """A worker process, once `registered(proc)` says it came up (waiting while its CPU time
    moves: a busy machine imports torch slowly); one that never does is stopped, not left."""
    proc = Proc.module(module, env, log_path)
    try:
        wait_until(
            lambda: registered(proc), 60, "the worker to register", proc, progress=proc.cpu_ticks
        )
    except AssertionError:
        proc.stop(timeout=10)
        raise
    return proc


class BlackHole:
    """A remote that accepts connections and never answers, or with `close_at_once` closes each
    at once; counts them (a client that retries connects more than once)."""

    def __init__(self, *, close_at_once: bool = False) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._close_at_once = close_at_once
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self._close_at_once:
                conn.close()
            else:
                self._held.append(conn)

    def hang_up(self) -> None:
        """Close the connections it holds (their requests fail)."""
        for conn in self._held:
            conn.close()

    def close(self) -> None:
        self._sock.close()
        self.hang_up()
