"""A fork server for the suite's worker processes.

A worker process spends 3-4 s of CPU importing torch and transformers before it serves
(`jobs/worker.py` preloads them so that its forked jobs do not), and the end-to-end tests
start a fresh worker for every crash, hand-back and outage they provoke: on a 2-core machine
those imports were a third of `make check`. This server imports them once per test process
and forks each worker from there, as `python -m module` would run it: its own environment,
working folder and log file, stdin from /dev/null. The child is a real, separate worker
process (RQ forks its jobs from it as in production); tests signal, kill and wait on it by
pid like any other.

Run as `python -m tests.forkserver EXITS_DIR`: it reads one JSON request a line on stdin
(`{"module", "env", "log", "cwd"}`), answers the child's pid on stdout, and writes each
child's exit code (as `subprocess` gives it: -N for a signal) to `EXITS_DIR/<pid>` when it
ends. It stops when stdin closes.
"""

from __future__ import annotations

import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import NoReturn

from pydantic import BaseModel, ConfigDict


class SpawnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    module: str
    env: dict[str, str]
    log: str
    cwd: str


# What the server imports before it forks anything: the worker's own preload list, and the
# two worker entry points (the shipped one and tests/worker_for_tests.py).
def _preload() -> None:
    from model_trainer.jobs.worker import preload_heavy_modules

    preload_heavy_modules()
    import tests.worker_for_tests  # noqa: F401


def _run_child(request: SpawnRequest) -> NoReturn:
    """In the forked child: become `python -m request.module` and exit with its code."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(request.env)
        os.chdir(request.cwd)
        sys.argv = [request.module]
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        # As the interpreter does: None is 0, an int is the code, anything else is printed.
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except Exception:
        logging.getLogger("tests.forkserver").exception("%s raised", request.module)
    finally:
        # os._exit skips the interpreter's shutdown: flush what it would have.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(exits: Path) -> None:
    def reap(signum: int, frame: FrameType | None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            partial = exits / f".{pid}"
            partial.write_text(str(os.waitstatus_to_exitcode(status)))
            partial.rename(exits / str(pid))

    _preload()
    signal.signal(signal.SIGCHLD, reap)
    # Ctrl-C reaches the whole process group: the test process decides what stops, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        request = SpawnRequest.model_validate_json(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _run_child(request)
        print(pid, flush=True)


class ForkedProcess:
    """A child of the fork server, with the part of `subprocess.Popen`'s interface tests use."""

    def __init__(self, pid: int, exits: Path, server_alive: Callable[[], bool]) -> None:
        self.pid = pid
        self._exit_file = exits / str(pid)
        self._server_alive = server_alive
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._exit_file.exists():
                self.returncode = int(self._exit_file.read_text())
            elif not Path(f"/proc/{self.pid}").exists() and not self._server_alive():
                # Gone, and no server to write its code (init reaped it): unknown. While the
                # server lives, a pid gone from /proc is one it reaped and is writing down.
                self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The test process's handle on its fork server (started on first use, one per test
    process; it stops when the test process exits)."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self._exits = Path(tempfile.mkdtemp(prefix="modeltrainer-forkserver-"))
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", str(self._exits)],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def spawn(self, module: str, env: Mapping[str, str], log: Path, cwd: Path) -> ForkedProcess:
        request = SpawnRequest(module=module, env=dict(env), log=str(log), cwd=str(cwd))
        with self._lock:
            stdin, stdout = self._proc.stdin, self._proc.stdout
            assert stdin is not None and stdout is not None
            stdin.write(request.model_dump_json() + "\n")
            stdin.flush()
            answer = stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server exited with {self._proc.wait(10)}")
        return ForkedProcess(int(answer), self._exits, lambda: self._proc.poll() is None)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._exits, ignore_errors=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
