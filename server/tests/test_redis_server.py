"""The suite's own Redis: a private, diskless server that never outlives the test run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from redis import Redis

from tests.processes import SERVER_DIR, child_env, wait_until
from tests.redis_server import RedisServer, redis_answers


def test_the_suite_runs_on_a_private_diskless_redis(redis_server: RedisServer) -> None:
    assert os.environ["REDIS_URL"] == redis_server.url  # what every child process inherits
    client = Redis.from_url(redis_server.url)
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("dir")["dir"] == str(redis_server.directory)
    finally:
        client.close()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A test run killed outright (SIGKILL: no teardown runs) leaves no redis-server behind."""
    script = (
        "import sys, time; from pathlib import Path; from tests.redis_server import RedisServer\n"
        "server = RedisServer(Path(sys.argv[1])).start()\n"
        "print(server.url, flush=True)\n"
        "time.sleep(600)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "redis")],
        cwd=SERVER_DIR,
        env=child_env({}),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        url = starter.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:") and redis_answers(url)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        wait_until(lambda: not redis_answers(url), 20, "the orphaned redis-server to exit")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(10)
