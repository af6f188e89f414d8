"""StatusStore against the real Redis: the key names of the design and their life cycle."""

from __future__ import annotations

import time
import uuid

from redis import Redis

from model_trainer.status_store import RUN_KEYS, TOKENIZER_KEYS, Status, StatusStore


def test_run_life_cycle_uses_the_documented_keys(redis_client: Redis) -> None:
    store = StatusStore(redis_client, RUN_KEYS)
    rid = uuid.uuid4().hex
    assert store.create(rid, '{"a": 1}')
    assert not store.create(rid, '{"a": 2}'), "a second create of the same id is refused"
    assert redis_client.get(f"runs:status:{rid}") == b"queued"
    assert store.meta(rid) == '{"a": 1}'
    store.set_status(rid, Status.RUNNING)
    store.heartbeat(rid, ttl_sec=30)
    assert 0 < redis_client.ttl(f"runs:hb:{rid}") <= 30
    assert store.last_heartbeat(rid) is not None
    store.request_cancel(rid)
    assert redis_client.get(f"runs:{rid}:cancelled") == b"1"
    assert store.is_cancelled(rid)
    store.set_file_id(rid, "ab" * 32)
    assert redis_client.get(f"runs:artifact:{rid}:file_id") == ("ab" * 32).encode()
    store.set_status(rid, Status.FAILED, "boom")
    assert redis_client.get(f"runs:msg:{rid}") == b"boom"
    assert store.last_heartbeat(rid) is None, "a terminal status clears the heartbeat"
    assert store.status(rid) is Status.FAILED


def test_listing_is_newest_first_and_paginated(redis_client: Redis) -> None:
    start = int(time.time()) + 10**6  # newer than anything other tests create
    clock = iter(range(start, start + 1000))
    store = StatusStore(redis_client, TOKENIZER_KEYS, clock=lambda: float(next(clock)))
    ids = [f"tok-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
    for tid in ids:
        store.create(tid, "{}")
    assert redis_client.get(f"tokenizer:{ids[0]}:status") == b"queued"
    page, total = store.list_ids(offset=0, limit=2)
    assert total >= 5
    assert page == [ids[4], ids[3]]
    page2, _ = store.list_ids(offset=2, limit=2)
    assert page2 == [ids[2], ids[1]]
