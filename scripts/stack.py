#!/usr/bin/env python3
"""The local stack: `make start`, `make stop`, `make logs`.

With a working Docker engine (and STACK unset or `compose`): `docker compose up --wait` of
docker-compose.yml (Redis, Data Bank, API, worker, each with its own volume). `start` says
first which mode it chose and why (its `mode` line).

Otherwise (or STACK=processes) the same stack as local processes: Redis, then the local Data
Bank, the API (Hypercorn) and one worker, each with its own data folder under `.stack/` (API
and worker do not share a disk, as in production), pid files and per-process logs in
`.stack/logs/`.

Redis: the one REDIS_URL names when it is set (environment or `.env`; it must answer), else
(and always with STACK_OWN_REDIS=1) a `redis-server` of the stack's own. Never a Redis that
merely answers at some default address: that may be somebody else's, and the stack would
read their records and run their queue's jobs. Its own keeps its data in `.stack/redis/`
(append-only file), so runs and tokenizers outlive `make stop`/`make start` as their
artifacts in Data Bank do; it listens on 127.0.0.1 and wants a password (generated, kept in
`.stack/keys.json`; its config file, which holds it, is mode 600).

`start` returns when the API's /readyz answers 200, or exits 1 with the reason. It prints
where everything listens and the keys to use, and writes them to `.stack/client.env`, which
the `modeltrainer` CLI reads (run from this folder) and a shell can source. The keys are the
environment's or `.env`'s when set (SECURITY__API_KEY, APP__DATA_BANK_API_KEY), otherwise
random ones kept in `.stack/keys.json`, so they stay the same across `make stop`/`make start`
(the dashboard remembers the API key; Data Bank's files outlive a restart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# STACK_DIR: another state folder (the tests start a stack of their own beside yours).
STATE = Path(os.environ.get("STACK_DIR") or ROOT / ".stack")
LOGS = STATE / "logs"
STATE_FILE = STATE / "stack.json"
KEYS_FILE = STATE / "keys.json"
REDIS_DIR = STATE / "redis"
CLIENT_ENV = STATE / "client.env"
BIN = Path(sys.executable).parent


def write_private(path: Path, text: str) -> None:
    """Write a file that holds keys (stack.json, keys.json, client.env): mode 600 from its
    creation (write-then-chmod leaves a moment when others can read it), in a state folder
    of mode 700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been created with other bits
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def dotenv() -> dict[str, str]:
    """`.env` values, for the few this script itself needs (REDIS_URL, PORT...)."""
    values: dict[str, str] = {}
    path = ROOT / ".env"
    if path.exists():
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def _setting(name: str, default: str) -> str:
    return os.environ.get(name) or dotenv().get(name) or default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As servers do: a port with only TIME_WAIT connections left is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _redis_answers(url: str) -> bool:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        client = Redis.from_url(url, socket_connect_timeout=1)
        ok = bool(client.ping())
        client.close()
        return ok
    except (RedisError, OSError):
        return False


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _spawn(name: str, args: list[str], env: dict[str, str]) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=ROOT / "server",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # `make stop` signals the whole group
    )
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(name: str, lines: int = 30) -> str:
    path = LOGS / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _kept_keys() -> dict[str, str]:
    return json.loads(KEYS_FILE.read_text()) if KEYS_FILE.exists() else {}


def _keep_keys(keys: dict[str, str]) -> None:
    kept = _kept_keys()
    if kept | keys != kept:
        write_private(KEYS_FILE, json.dumps(kept | keys))


def stack_keys() -> tuple[str, str]:
    """(API key, Data Bank key): the environment's or `.env`'s, else the ones kept in
    `.stack/keys.json`, else new random ones (then kept)."""
    kept = _kept_keys()
    api_key = _setting("SECURITY__API_KEY", "") or kept.get("api_key") or secrets.token_hex(16)
    bank_key = (
        _setting("APP__DATA_BANK_API_KEY", "") or kept.get("databank_key") or secrets.token_hex(16)
    )
    _keep_keys({"api_key": api_key, "databank_key": bank_key})
    return api_key, bank_key


def redis_choice() -> str | None:
    """The Redis to join: REDIS_URL when set explicitly (environment or `.env`) and
    STACK_OWN_REDIS is not 1; None: start the stack's own. Nothing is probed: whatever
    answers at a default address is never joined."""
    if os.environ.get("STACK_OWN_REDIS") == "1":
        return None
    return _setting("REDIS_URL", "") or None


def _start_own_redis(pids: dict[str, int]) -> str | None:
    """The stack's own redis-server (the module's docstring): its URL, None if none is
    installed."""
    server = shutil.which("redis-server")
    if server is None:
        return None
    password = _kept_keys().get("redis_password") or secrets.token_hex(16)
    _keep_keys({"redis_password": password})
    port = _free_port()
    conf = REDIS_DIR / "redis.conf"
    write_private(
        conf,
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"requirepass {password}\n"
        f"dir {REDIS_DIR}\n"
        # Every write in the append-only file, flushed each second and at SIGTERM (`stop`);
        # no snapshots besides.
        "appendonly yes\n"
        "appendfsync everysec\n"
        'save ""\n'
        # The queue must never lose a job to memory pressure (as docker-compose.yml says).
        "maxmemory-policy noeviction\n",
    )
    pids["redis"] = _spawn("redis", [server, str(conf)], dict(os.environ))
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    _wait(lambda: _redis_answers(url), 20, "redis", pids)
    return url


def _announce(api: str, databank: str, api_key: str, bank_key: str) -> None:
    """Where everything is and the keys to use; the same, for the CLI, in .stack/client.env."""
    write_private(
        CLIENT_ENV,
        "# Written by `make start`: the project's CLI reads this file (from any folder);\n"
        "# a shell can `. .stack/client.env`.\n"
        f"export MODEL_TRAINER_URL={api}\n"
        f"export MODEL_TRAINER_API_KEY={api_key}\n"
        f"export DATA_BANK_URL={databank}\n"
        f"export DATA_BANK_API_KEY={bank_key}\n",
    )
    _say("")
    _say(f"dashboard  {api}/  (paste the API key once)")
    _say(f"api        {api}  (docs at {api}/docs)")
    _say(f"databank   {databank}")
    _say(f"api key    {api_key}")
    _say(f"bank key   {bank_key}")
    _say("cli        .venv/bin/modeltrainer run list  (it reads .stack/client.env)")
    _say('shell      . .stack/client.env  (then curl -H "X-API-Key: $MODEL_TRAINER_API_KEY" ...)')


def read_state() -> dict[str, str]:
    """Where the running stack listens and its keys: {"api", "databank", "api_key",
    "databank_key"}, and "redis" (its URL, password included) for a stack of processes."""
    raw = json.loads(STATE_FILE.read_text())
    return {k: v for k, v in raw.items() if isinstance(v, str)}


def _docker_engine() -> bool:
    if os.environ.get("STACK", "") == "processes" or shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


def _compose(*args: str) -> int:
    return subprocess.run(["docker", "compose", *args], cwd=ROOT, check=False).returncode


def start() -> int:
    if STATE_FILE.exists():
        _say("stack already started (make stop first); state in .stack/stack.json")
        return 1
    STATE.mkdir(exist_ok=True)
    # Said first, whichever it is: the two modes differ in where logs, data and ports live.
    choice = os.environ.get("STACK", "")
    if choice not in ("", "compose", "processes"):
        _say(f"STACK must be compose or processes (got {choice!r})")
        return 1
    if choice != "processes" and _docker_engine():
        why = "STACK=compose" if choice else "a Docker engine answers; STACK=processes to avoid it"
        _say(f"mode       docker compose ({why})")
        return _start_compose()
    if choice == "compose":
        _say("STACK=compose, but no Docker engine answers (`docker info` fails)")
        return 1
    why = "STACK=processes" if choice else "no Docker engine answers"
    _say(f"mode       local processes ({why})")
    return _start_processes()


def _start_compose() -> int:
    api = f"http://127.0.0.1:{_setting('PORT', '8000')}"
    api_key, bank_key = stack_keys()
    # docker-compose.yml reads these two names from the environment.
    os.environ["DATA_BANK_API_KEY"] = bank_key
    os.environ["SECURITY__API_KEY"] = api_key
    if _compose("up", "-d", "--build", "--wait") != 0:
        _compose("logs", "--tail", "30")
        _compose("down")
        return 1
    databank = "http://127.0.0.1:8001"
    state = {
        "mode": "compose",
        "api": api,
        "databank": databank,
        "api_key": api_key,
        "databank_key": bank_key,
    }
    write_private(STATE_FILE, json.dumps(state))
    _announce(api, databank, api_key, bank_key)
    _say("logs       make logs; stop with make stop")
    return 0


def _start_processes() -> int:
    pids: dict[str, int] = {}
    joined = redis_choice()
    if joined is not None:
        if not _redis_answers(joined):
            _say("REDIS_URL is set but no Redis answers there (unset it: the stack starts its own)")
            return 1
        redis_url = joined
        _say(f"redis      {_without_password(redis_url)} (REDIS_URL)")
    else:
        own = _start_own_redis(pids)
        if own is None:
            _say("redis-server is not installed (or set REDIS_URL to a Redis of yours)")
            return 1
        redis_url = own
        _say(f"redis      {_without_password(redis_url)} (started; data in {REDIS_DIR})")

    api_port = int(_setting("PORT", "8000"))
    if not _port_free(api_port):
        _say(f"port {api_port} is taken: set PORT to another one")
        return 1
    bank_port = int(_setting("DATABANK_PORT", "8001"))
    if not _port_free(bank_port):
        bank_port = _free_port()
    bank_url = f"http://127.0.0.1:{bank_port}"
    api_key, bank_key = stack_keys()

    base = dict(os.environ)
    base.update(dotenv())
    base.update({"REDIS_URL": redis_url, "APP__DATA_BANK_API_URL": bank_url})
    base["APP__DATA_BANK_API_KEY"] = bank_key
    base["SECURITY__API_KEY"] = api_key

    bank_env = base | {"DATA_ROOT": str(STATE / "databank"), "API_UPLOAD_KEYS": bank_key}
    # `-m` from server/ (the spawn's cwd): the module runs whatever the installed scripts say.
    pids["databank"] = _spawn(
        "databank",
        [sys.executable, "-m", "databank_server", "--host", "127.0.0.1", "--port", str(bank_port)],
        bank_env,
    )
    _wait(lambda: _http_status(f"{bank_url}/readyz") == 200, 30, "databank", pids)
    _say(f"databank   {bank_url}  (files in .stack/databank)")

    for name in ("api", "worker"):
        root = STATE / name
        base_for = base | {
            "APP__DATA_ROOT": str(root / "data"),
            "APP__ARTIFACTS_ROOT": str(root / "artifacts"),
            "APP__RUNS_ROOT": str(root / "runs"),
        }
        if name == "api":
            args = [
                str(BIN / "hypercorn"),
                "model_trainer.api.main:create_app()",
                "--bind",
                f"127.0.0.1:{api_port}",
            ]
        else:
            args = [str(BIN / "modeltrainer-rq-worker")]
        pids[name] = _spawn(name, args, base_for)

    api = f"http://127.0.0.1:{api_port}"
    state = {
        "pids": pids,
        "api": api,
        "databank": bank_url,
        "redis": redis_url,
        "api_key": api_key,
        "databank_key": bank_key,
    }
    write_private(STATE_FILE, json.dumps(state))
    _wait(lambda: _http_status(f"{api}/readyz") == 200, 120, "api /readyz", pids)
    _say(f"worker     pid {pids['worker']}")
    _announce(api, bank_url, api_key, bank_key)
    _say("logs       .stack/logs/*.log (make logs); stop with make stop")
    return 0


def _wait(predicate: Callable[[], bool], timeout: float, what: str, pids: dict[str, int]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for name, pid in pids.items():
            if not _alive(pid):
                _say(f"{name} exited while waiting for {what}; last log lines:\n{_tail(name)}")
                write_private(STATE_FILE, json.dumps({"pids": pids}))
                stop()
                sys.exit(1)
        time.sleep(0.2)
    _say(f"timed out after {timeout:.0f}s waiting for {what}")
    for name in pids:
        _say(f"--- {name} ---\n{_tail(name, 15)}")
    write_private(STATE_FILE, json.dumps({"pids": pids}))
    stop()
    sys.exit(1)


def stop() -> int:
    if not STATE_FILE.exists():
        _say("stack not running")
        return 0
    state = json.loads(STATE_FILE.read_text())
    if state.get("mode") == "compose":
        code = _compose("down")
        STATE_FILE.unlink()
        return code
    pids: dict[str, int] = state.get("pids", {})
    # Worker first (it may be mid-job and wants its grace period), Redis last.
    order = ["worker", "api", "databank", "redis"]
    for name in sorted(pids, key=lambda n: order.index(n) if n in order else 0):
        pid = pids[name]
        if not _alive(pid):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # not our child once start exited
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        _say(f"stopped {name} (pid {pid})")
    STATE_FILE.unlink()
    return 0


def logs() -> int:
    if STATE_FILE.exists() and json.loads(STATE_FILE.read_text()).get("mode") == "compose":
        return _compose("logs", "--tail", "100")
    names = sorted(p.stem for p in LOGS.glob("*.log")) if LOGS.exists() else []
    for name in names:
        _say(f"--- {name} ---\n{_tail(name, 40)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "logs"])
    command = parser.parse_args().command
    return {"start": start, "stop": stop, "logs": logs}[command]()


if __name__ == "__main__":
    sys.exit(main())
