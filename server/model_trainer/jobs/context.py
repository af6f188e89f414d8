"""The worker's services, built once per worker process and inherited by every job."""

from __future__ import annotations

import os
import socket
import threading

from redis import Redis

from model_trainer.connections import DataBankUse, RedisUse, databank_client, redis_client
from model_trainer.databank.client import DataBankClient
from model_trainer.disk_cache import DiskCache
from model_trainer.jobs.queue import RQJobQueue
from model_trainer.settings import Settings, load_settings
from model_trainer.store.events import Dialect, EventPublisher
from model_trainer.store.records import JobStores


class WorkerContext(JobStores):
    """Settings, connections and stores; `stop_requested` is set when the worker stops."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        databank: DataBankClient,
        worker_name: str | None = None,
    ) -> None:
        super().__init__(redis)
        self.settings = settings
        self.redis = redis
        self.databank = databank
        self.worker_name = worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.queue = RQJobQueue(redis, settings.rq)
        self.events = EventPublisher(
            redis,
            settings.app.events_channel,
            frozenset(Dialect(d) for d in settings.app.events_dialects),
        )
        # Corpora, their text and token files, shared by this worker's jobs (disk_cache.py).
        self.cache = DiskCache(settings.app.data_root / "cache", settings.app.cache_bytes)
        # Set by the job process's signal handler (worker.py): jobs hand back at a safe point.
        self.stop_requested = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings, worker_name: str | None = None) -> WorkerContext:
        redis = redis_client(settings.redis_url, RedisUse.JOBS)
        bank = databank_client(
            settings.app.data_bank_api_url, settings.app.data_bank_api_key, DataBankUse.JOB
        )
        return cls(settings, redis, bank, worker_name)

    def checkpoint_bank(self) -> DataBankClient:
        """Checkpoints use a client that gives up fast (the next checkpoint tries again)."""
        app = self.settings.app
        return databank_client(app.data_bank_api_url, app.data_bank_api_key, DataBankUse.CHECKPOINT)


_context: WorkerContext | None = None


def worker_context() -> WorkerContext:
    """The process's context; the worker builds it before forking so jobs inherit it."""
    global _context
    if _context is None:
        _context = WorkerContext.from_settings(load_settings())
    return _context


def set_worker_context(ctx: WorkerContext) -> None:
    global _context
    _context = ctx
