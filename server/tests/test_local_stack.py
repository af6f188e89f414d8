"""`make start` (scripts/stack.py) as a new user meets it: it prints where everything is and
the keys to use, writes them where the CLI finds them, and the keys work.

The stack here is the script's own process stack, in a state folder of the test's
(STACK_DIR), with a private redis-server (STACK_OWN_REDIS=1) and free ports: it never meets a
stack the developer has running, nor the Redis at REDIS_URL.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import redis.exceptions
from redis import Redis

from tests.processes import child_env, free_port

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = ROOT / "scripts" / "stack.py"


def _stack_env(state: Path) -> dict[str, str]:
    return child_env(
        {
            "STACK": "processes",
            "STACK_OWN_REDIS": "1",
            "STACK_DIR": str(state),
            "PORT": str(free_port()),
            "DATABANK_PORT": str(free_port()),
        }
    )


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK_SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], str]]:
    state = tmp_path / ".stack"
    env = _stack_env(state)
    result = _stack("start", env)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield state, env, result.stdout
    finally:
        stopped = _stack("stop", env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _cli(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`modeltrainer --json <args>` run from `folder`, as a user in that folder would."""
    return subprocess.run(
        [sys.executable, "-m", "model_trainer.cli", "--json", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _printed(output: str, label: str) -> str:
    """The value `make start` printed after `label` (its lines are `label  value ...`)."""
    for line in output.splitlines():
        # Labels are padded to 11 columns: "api" and "api key" are different lines.
        if line[:11].rstrip() == label:
            return line[11:].split()[0]
    raise AssertionError(f"no {label!r} line in:\n{output}")


def test_start_prints_urls_and_keys_that_work_and_the_cli_reads_them(
    started: tuple[Path, dict[str, str], str],
) -> None:
    state, env, output = started
    api, api_key = _printed(output, "api"), _printed(output, "api key")
    databank, bank_key = _printed(output, "databank"), _printed(output, "bank key")
    assert _printed(output, "dashboard") == api + "/"
    # It says which of its two modes it chose, and why (STACK=processes here).
    assert output.splitlines()[0] == "mode       local processes (STACK=processes)"

    # The API is protected by the key it printed; Data Bank takes the key it printed.
    assert httpx.get(f"{api}/runs").status_code == 401
    assert httpx.get(f"{api}/runs", headers={"X-API-Key": api_key}).status_code == 200
    dashboard = httpx.get(f"{api}/", follow_redirects=True)
    assert dashboard.status_code == 200
    assert "text/html" in dashboard.headers["content-type"]
    uploaded = httpx.post(
        f"{databank}/files",
        headers={"X-API-Key": bank_key},
        files={"file": ("c.txt", b"hello stack\n" * 50)},
    )
    assert uploaded.status_code == 201, uploaded.text

    # The CLI, run from the folder that holds .stack/, needs no flags and no environment.
    client_env = (state / "client.env").read_text()
    assert f"MODEL_TRAINER_API_KEY={api_key}" in client_env
    assert f"DATA_BANK_API_KEY={bank_key}" in client_env
    cli_names = {"MODEL_TRAINER_URL", "MODEL_TRAINER_API_KEY", "DATA_BANK_URL", "DATA_BANK_API_KEY"}
    cli_env = {k: v for k, v in env.items() if k not in cli_names}
    listed = _cli(state.parent, cli_env, "run", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert json.loads(listed.stdout)["items"] == []
    corpus = state.parent / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 40)
    upload = _cli(state.parent, cli_env, "corpus", "upload", str(corpus))
    assert upload.returncode == 0, upload.stdout + upload.stderr
    file_id = json.loads(upload.stdout)["file_id"]
    assert len(file_id) == 64
    # The README's next step: `corpus list` shows it.
    listed = _cli(state.parent, cli_env, "corpus", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [c["file_id"] for c in json.loads(listed.stdout)["items"]] == [file_id]


def _load_stack_module(state: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("STACK_DIR", str(state))
    spec = importlib.util.spec_from_file_location("stack_script_under_test", STACK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keys_are_kept_across_restarts_and_settings_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SECURITY__API_KEY", "APP__DATA_BANK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    stack = _load_stack_module(tmp_path / ".stack", monkeypatch)
    # The project's .env may set keys; this test is about the random ones.
    monkeypatch.setattr(stack, "dotenv", dict)
    first = stack.stack_keys()
    assert first == stack.stack_keys()
    assert first[0] != first[1]
    assert (tmp_path / ".stack" / "keys.json").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("SECURITY__API_KEY", "chosen-api-key")
    assert stack.stack_keys() == ("chosen-api-key", first[1])


def test_the_stack_joins_only_the_redis_that_redis_url_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that merely answers at the default address may be somebody else's: the stack
    joins a Redis only when REDIS_URL names it, and one named that does not answer is an
    error, not a reason to start another."""
    stack = _load_stack_module(tmp_path / ".stack", monkeypatch)
    monkeypatch.setattr(stack, "dotenv", dict)  # the project's .env may name one
    for name in ("REDIS_URL", "STACK_OWN_REDIS"):
        monkeypatch.delenv(name, raising=False)
    assert stack.redis_choice() is None  # its own, whatever answers on 6379
    monkeypatch.setenv("REDIS_URL", "redis://:pw@redis.example:6380/0")
    assert stack.redis_choice() == "redis://:pw@redis.example:6380/0"
    monkeypatch.setenv("STACK_OWN_REDIS", "1")
    assert stack.redis_choice() is None

    state = tmp_path / "named"
    env = _stack_env(state) | {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    del env["STACK_OWN_REDIS"]
    result = _stack("start", env)
    assert result.returncode == 1
    assert "REDIS_URL is set but no Redis answers there" in result.stdout
    assert not (state / "redis").exists() and not (state / "stack.json").exists()


def test_records_survive_a_restart_of_the_stacks_own_redis(tmp_path: Path) -> None:
    """The stack's own Redis keeps its data in the stack's folder (append-only file) and wants
    a password: a corpus recorded before `make stop` is listed after the next `make start`."""
    state = tmp_path / ".stack"
    env = _stack_env(state)
    cli_names = {"MODEL_TRAINER_URL", "MODEL_TRAINER_API_KEY", "DATA_BANK_URL", "DATA_BANK_API_KEY"}
    cli_env = {k: v for k, v in env.items() if k not in cli_names}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("kept across restarts\n" * 40)
    listed: list[list[str]] = []
    for round_ in range(2):
        started = _stack("start", env)
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            printed = _printed(started.stdout, "redis")
            url = json.loads((state / "stack.json").read_text())["redis"]
            assert printed.startswith("redis://127.0.0.1:") and printed != url  # no password
            with pytest.raises(redis.exceptions.AuthenticationError):
                Redis.from_url(printed).ping()
            if round_ == 0:
                upload = _cli(tmp_path, cli_env, "corpus", "upload", str(corpus))
                assert upload.returncode == 0, upload.stdout + upload.stderr
            found = _cli(tmp_path, cli_env, "corpus", "list")
            assert found.returncode == 0, found.stdout + found.stderr
            listed.append([c["file_id"] for c in json.loads(found.stdout)["items"]])
        finally:
            stopped = _stack("stop", env)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert len(listed[0]) == 1 and listed[1] == listed[0]
    assert any((state / "redis" / "appendonlydir").iterdir())
    for secret in ("redis/redis.conf", "keys.json"):
        assert (state / secret).stat().st_mode & 0o077 == 0, secret


def test_files_holding_keys_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stack.json, keys.json and client.env hold both keys: mode 600 from their creation,
    in a state folder of mode 700, even where an older file was readable by others."""
    state = tmp_path / ".stack"
    stack = _load_stack_module(state, monkeypatch)
    monkeypatch.setattr(stack, "dotenv", dict)
    state.mkdir(mode=0o755)
    (state / "stack.json").write_text("{}")
    (state / "stack.json").chmod(0o644)  # as an older `make start` left it
    stack.write_private(stack.STATE_FILE, json.dumps({"api_key": "k", "databank_key": "b"}))
    api_key, bank_key = stack.stack_keys()
    stack._announce("http://127.0.0.1:1", "http://127.0.0.1:2", api_key, bank_key)
    for name in ("stack.json", "keys.json", "client.env"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    assert state.stat().st_mode & 0o777 == 0o700
    assert json.loads((state / "stack.json").read_text())["api_key"] == "k"
