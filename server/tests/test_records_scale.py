"""Records that scale: a reaper pass and a listing by status cost the same number of Redis
commands whatever the history holds (no worker process: the reaper runs here)."""

from __future__ import annotations

import time
from pathlib import Path

from redis import Redis

from model_trainer.databank.client import DataBankClient
from model_trainer.jobs.context import WorkerContext
from model_trainer.jobs.reaper import Reaper
from model_trainer.settings import Settings
from model_trainer.store.fencing import Command, DirectWriter
from model_trainer.store.keys import EVAL_KEYS, RUN_KEYS, TOKENIZER_KEYS, JobField, lease_key
from model_trainer.store.records import RecordMeta, RunProgress, Status, StatusStore, hset
from tests.redis_server import RedisServer


def _calls(redis: Redis) -> int:
    stats = redis.info("commandstats")
    assert isinstance(stats, dict)
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict) and name != "cmdstat_config|resetstat"
    )


def _fill(redis: Redis, finished: int) -> None:
    """`finished` completed runs, tokenizers and evaluations, written as the stores write
    them (a thousand jobs to a transaction)."""
    meta = RecordMeta(created_at=time.time(), request={}).model_dump_json()
    writer = DirectWriter(redis)
    for keys in (RUN_KEYS, TOKENIZER_KEYS, EVAL_KEYS):
        store = StatusStore(redis, keys, RunProgress)
        existing = int(redis.zcard(keys.status_index("completed")))
        batch: list[Command] = []
        for n in range(existing, finished):
            job = f"{keys.kind}-{n:06d}"
            batch += [
                *hset(job, (JobField.META, meta)),
                ("ZADD", keys.index, str(n), job),
                *store.status_commands(job, Status.COMPLETED, "done"),
            ]
            if len(batch) > 10_000:
                writer.write(batch)
                batch = []
        writer.write(batch)


def test_reaper_pass_and_listing_by_status_cost_the_same_with_10_or_10000_finished_jobs(
    settings: Settings, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        redis = Redis.from_url(server.url)
        unused_bank = DataBankClient("http://127.0.0.1:9")
        ctx = WorkerContext(
            settings.model_copy(update={"redis_url": server.url}), redis, unused_bank
        )
        reaper = Reaper(ctx, memory_bytes=1 << 30)
        runs = StatusStore(redis, RUN_KEYS, RunProgress)
        running = "run-live"
        runs.create(running, RecordMeta(created_at=time.time(), request={}))
        runs.set_status(running, Status.RUNNING)
        redis.set(lease_key(running), "someone#1", px=60_000)
        costs: list[tuple[int, int]] = []
        for finished in (10, 10_000):
            _fill(redis, finished)
            redis.config_resetstat()
            reaper.tick(force=True)
            pass_cost = _calls(redis)
            redis.config_resetstat()
            ids, total = runs.list_ids(0, 20, Status.RUNNING)
            records = runs.records(ids)
            list_cost = _calls(redis)
            assert ids == [running] and total == 1 and records[0] is not None
            costs.append((pass_cost, list_cost))
        print(f"\nRedis commands (reaper pass, list running) with 10 / 10,000 done: {costs}")
        assert costs[0] == costs[1], costs
        redis.close()
    finally:
        server.stop()
