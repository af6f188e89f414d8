"""The store against the real Redis: the documented key names, their life cycle, and typed
records read in one round trip."""

from __future__ import annotations

import time
import uuid

from redis import Redis

from model_trainer.store.keys import RECORD_TTL_SEC, RUN_KEYS, TOKENIZER_KEYS
from model_trainer.store.records import (
    RecordMeta,
    RunProgress,
    Status,
    StatusStore,
    TokenizerSummary,
)

META = RecordMeta(created_at=1.5, request={"a": 1})


def reads(client: Redis) -> int:
    """How many read commands (HMGET, HGET) the suite's own Redis has served so far."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hmget", "hget"))


def test_run_life_cycle_uses_the_documented_keys(redis_client: Redis) -> None:
    store = StatusStore(redis_client, RUN_KEYS, RunProgress)
    rid = f"run-{uuid.uuid4().hex}"
    key = f"job:{{{rid}}}"  # one hash per job, its id the hash tag

    def field(name: str) -> bytes | None:
        value = redis_client.hget(key, name)
        assert value is None or isinstance(value, bytes)
        return value

    assert store.create(rid, META)
    assert not store.create(rid, META), "a second create of the same id is refused"
    assert field("status") == b"queued"
    assert RecordMeta.model_validate_json(field("meta") or b"") == META
    assert 0 < int(redis_client.ttl(key)) <= RECORD_TTL_SEC, "one TTL, the record's"
    store.set_status(rid, Status.RUNNING)
    assert redis_client.zscore("runs:by-status:running", rid) is not None
    assert redis_client.zscore("runs:by-status:queued", rid) is None
    beat = store.heartbeat(rid)
    assert field("heartbeat") == repr(beat).encode()
    store.request_cancel(rid)
    assert field("cancel") == b"1"
    assert store.is_cancelled(rid)
    store.set_status(rid, Status.RUNNING, also=store.file_id_commands(rid, "ab" * 32))
    assert field("file_id") == ("ab" * 32).encode()
    store.set_progress(rid, RunProgress(step=7, total_steps=10))
    assert field("progress") is not None
    store.set_status(rid, Status.FAILED, "boom")
    assert field("message") == b"boom"
    record = store.record(rid)
    assert record is not None and record.last_heartbeat_ts == beat, "kept after the end"
    assert store.status(rid) is Status.FAILED
    assert store.ids_with_status(Status.FAILED).count(rid) == 1
    assert rid not in store.ids_with_status(Status.RUNNING)
    assert redis_client.keys(f"*{rid}*") == [key.encode()], "nothing but the hash"


def test_records_are_typed_and_read_in_one_round_trip(redis_client: Redis) -> None:
    store = StatusStore(redis_client, RUN_KEYS, RunProgress)
    ids = [f"run-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    for rid in ids:
        store.create(rid, META)
        store.set_progress(rid, RunProgress(step=3))
    store.set_status(ids[1], Status.COMPLETED, "done")
    before = reads(redis_client)
    records = store.records([*ids, "run-unknown"])
    assert reads(redis_client) - before == 6, "one HMGET per id"
    assert records[-1] is None
    second = records[1]
    assert second is not None
    assert second.status is Status.COMPLETED and second.message == "done"
    assert second.meta == META
    assert isinstance(second.progress, RunProgress) and second.progress.step == 3
    before = reads(redis_client)
    completed = store.ids_with_status(Status.COMPLETED)
    assert reads(redis_client) == before, "the status index answers: no record is read"
    assert ids[1] in completed and ids[0] not in completed


def test_tokenizer_records_carry_their_summary(redis_client: Redis) -> None:
    store = StatusStore(redis_client, TOKENIZER_KEYS, TokenizerSummary)
    tid = f"tok-{uuid.uuid4().hex[:8]}"
    store.create(tid, META)
    store.set_progress(tid, TokenizerSummary(stats=None, timings={"train": 1.0}, vocab_size=9))
    record = store.record(tid)
    assert record is not None and record.progress is not None
    assert record.progress.vocab_size == 9 and record.progress.timings == {"train": 1.0}


def test_listing_is_newest_first_and_paginated(redis_client: Redis) -> None:
    start = int(time.time()) + 10**6  # newer than anything other tests create
    clock = iter(range(start, start + 1000))
    store = StatusStore(
        redis_client, TOKENIZER_KEYS, TokenizerSummary, clock=lambda: float(next(clock))
    )
    ids = [f"tok-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
    for tid in ids:
        store.create(tid, META)
    assert redis_client.hget(f"job:{{{ids[0]}}}", "status") == b"queued"
    page, total = store.list_ids(offset=0, limit=2)
    assert total >= 5
    assert page == [ids[4], ids[3]]
    page2, _ = store.list_ids(offset=2, limit=2)
    assert page2 == [ids[2], ids[1]]
