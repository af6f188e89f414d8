from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker

from model_trainer.settings import AppSettings, RQSettings, Settings
from model_trainer.training.hardware import CpuInfo, cpu_info
from tests.processes import WORKER_MODULE, Proc, child_env, start_worker_process
from tests.redis_server import RedisServer
from tests.stack import TEST_QUOTAS, TEST_SECURITY

# One Data Bank server process for the whole session (see tests/databank_fixtures.py).
pytest_plugins = ("tests.databank_fixtures",)

_REDIS = pytest.StashKey[RedisServer]()


def pytest_configure(config: pytest.Config) -> None:
    """Start the run's own redis-server before anything else, and aim REDIS_URL at it.

    Everything the suite starts (workers, the API, settings read from the environment) then
    finds this server, never the one the developer's REDIS_URL named.
    """
    directory = Path(tempfile.mkdtemp(prefix="modeltrainer-test-redis-"))
    server = RedisServer(directory).start()
    config.stash[_REDIS] = server
    os.environ["REDIS_URL"] = server.url
    # Where xdist runs the tests in other processes, this one (the controller) sees them all.
    cache = _cache(config)
    if cache is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(ModuleSeconds(cache))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Runs when the session ends in any way: passed, failed or interrupted."""
    server = config.stash.get(_REDIS, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


# Each test module's seconds in its last run (setup, calls and teardown), in pytest's cache
# folder: the order below reads them.
_MODULE_SECONDS = "model_trainer/module_seconds"


def _cache(config: pytest.Config) -> pytest.Cache | None:
    """pytest's cache, unless its plugin is off (`-p no:cacheprovider`)."""
    return config.cache if config.pluginmanager.has_plugin("cacheprovider") else None


def _module(item_or_report: pytest.Item | pytest.TestReport) -> str:
    return item_or_report.nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first: `make check` hands whole modules to its processes in this
    order (xdist's --dist loadfile with --no-loadscope-reorder), so the modules that run for
    a minute start at once and the quick ones fill the gaps at the end, instead of a long
    one starting last and running alone. "Longest" is the last run's seconds where this
    checkout has run the suite before, else modules with end-to-end tests first (a stable
    sort: the order within a module is kept)."""
    cache = _cache(config)
    last: dict[str, float] = cache.get(_MODULE_SECONDS, {}) if cache is not None else {}
    slow = {_module(item) for item in items if item.get_closest_marker("e2e") is not None}
    items.sort(key=lambda item: (-last.get(_module(item), 0.0), _module(item) not in slow))


class ModuleSeconds:
    """Adds up each module's seconds in this run and keeps them for the next one's order."""

    def __init__(self, cache: pytest.Cache) -> None:
        self.cache = cache
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = _module(report)
        self.seconds[module] = self.seconds.get(module, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        kept: dict[str, float] = self.cache.get(_MODULE_SECONDS, {})
        self.cache.set(_MODULE_SECONDS, {**kept, **self.seconds})


@pytest.fixture(scope="session")
def cpu() -> CpuInfo:
    """This machine's CPU as the project sees it, passed to whatever depends on it.

    `APP__NATIVE_BF16=true|false` (the product's own setting) states the bf16 answer for the
    whole run, the worker processes it starts included: run the suite both ways to show that
    no test depends on the CPU it runs on.
    """
    forced = os.environ.get("APP__NATIVE_BF16") or None
    return cpu_info(AppSettings.model_validate({"native_bf16": forced}).native_bf16)


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> RedisServer:
    return pytestconfig.stash[_REDIS]


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, queue_name: str) -> Settings:
    return make_settings(tmp_path / "api", redis_url, queue_name)


def make_settings(
    root: Path, redis_url: str, queue_name: str, rq: RQSettings | None = None
) -> Settings:
    return Settings(
        redis_url=redis_url,
        app=AppSettings(
            data_root=root / "data",
            artifacts_root=root / "artifacts",
            runs_root=root / "runs",
            threads=1,
        ),
        rq=rq or RQSettings(queue_name=queue_name, gpu_queue_name=f"{queue_name}-gpu"),
        security=TEST_SECURITY,
        quotas=TEST_QUOTAS,
    )


def worker_env(redis_url: str, queue_name: str, root: Path, **extra: str) -> dict[str, str]:
    return child_env(
        {
            "REDIS_URL": redis_url,
            "RQ__QUEUE_NAME": queue_name,
            "RQ__GPU_QUEUE_NAME": f"{queue_name}-gpu",
            "APP__DATA_ROOT": str(root / "data"),
            "APP__ARTIFACTS_ROOT": str(root / "artifacts"),
            "APP__RUNS_ROOT": str(root / "runs"),
            "APP__THREADS": "1",
            # Runs here are about jobs, not speed: a long budget would make `auto` compile
            # (tens of seconds). test_execution.py tests compiling.
            "APP__COMPILE_STEPS": "false",
            "LOGGING__LEVEL": "INFO",
            **extra,
        }
    )


StartWorker = Callable[..., Proc]


@pytest.fixture
def start_worker(tmp_path: Path, redis_url: str, queue_name: str) -> Iterator[StartWorker]:
    """Start real `modeltrainer-rq-worker` processes; each waits until it is registered."""
    yield from _worker_starter(tmp_path, redis_url, queue_name)


@pytest.fixture(scope="module")
def module_worker(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, queue_name: str
) -> Iterator[StartWorker]:
    """As `start_worker`, for workers that serve a whole module (override `queue_name` there)."""
    yield from _worker_starter(tmp_path_factory.mktemp("workers"), redis_url, queue_name)


def _worker_starter(tmp_path: Path, redis_url: str, queue_name: str) -> Iterator[StartWorker]:
    procs: list[Proc] = []

    def start(
        queue: str = queue_name,
        root: Path | None = None,
        module: str = WORKER_MODULE,
        **extra: str,
    ) -> Proc:
        root = root or tmp_path / f"worker{len(procs)}"
        root.mkdir(parents=True, exist_ok=True)
        env = worker_env(redis_url, queue, root, **extra)
        conn = Redis.from_url(redis_url)
        before = Worker.count(connection=conn, queue=Queue(queue, connection=conn))
        try:
            proc = start_worker_process(
                env,
                root / "worker.log",
                lambda _: (
                    Worker.count(connection=conn, queue=Queue(queue, connection=conn)) > before
                ),
                module,
            )
        finally:
            conn.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop(timeout=20)
