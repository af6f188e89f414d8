"""A Data Bank that hangs never starves the API: submits get a fast 503, reads stay served.

The remote is simulated by a fault-injecting server (a TCP listener that accepts and never
answers), the one kind of fake the project allows; everything else is real (Redis, the app).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from model_trainer.api.deps import ApiContext
from model_trainer.api.main import build_context, create_app
from model_trainer.settings import LimitsSettings, Settings
from model_trainer.store.records import RecordMeta, Status
from tests.processes import BlackHole, wait_until

CORPUS = "ab" * 32


@pytest.fixture
def hole() -> Iterator[BlackHole]:
    server = BlackHole()
    yield server
    server.close()


def _context(settings: Settings, hole: BlackHole, limits: LimitsSettings) -> ApiContext:
    s = settings.model_copy(
        update={
            "app": settings.app.model_copy(update={"data_bank_api_url": hole.url}),
            "limits": limits,
        }
    )
    return build_context(s)


def _body() -> dict[str, object]:
    return {"method": "bpe", "vocab_size": 300, "corpus_file_id": CORPUS, "seed": 1}


def test_a_hanging_data_bank_costs_one_timeout_then_fails_fast(
    settings: Settings, hole: BlackHole
) -> None:
    ctx = _context(settings, hole, LimitsSettings(remote_timeout_sec=0.5, remote_cooldown_sec=60))
    with TestClient(create_app(ctx)) as client:
        first = client.post("/tokenizers/train", json=_body())
        assert first.status_code == 503, first.text
        assert first.json()["code"] == "SERVICE_UNAVAILABLE"
        assert "Data Bank is unavailable" in first.json()["message"]
        assert hole.accepted == 1  # one try: no retries on the request path
        for _ in range(5):
            again = client.post("/tokenizers/train", json=_body())
            assert again.status_code == 503
            assert "moments ago" in again.json()["message"]
        assert hole.accepted == 1  # the cooldown answered without calling Data Bank


def test_reads_are_served_while_submits_wait_on_a_hanging_data_bank(
    settings: Settings, hole: BlackHole
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    # A long timeout: the two checks that get a slot hang until the test hangs up.
    limits = LimitsSettings(remote_timeout_sec=60, remote_cooldown_sec=0, remote_max_concurrent=2)
    ctx = _context(settings, hole, limits)
    ctx.runs.create(run_id, RecordMeta(created_at=time.time(), request={}))
    ctx.runs.set_status(run_id, Status.RUNNING, "training")
    with TestClient(create_app(ctx)) as client, ThreadPoolExecutor(max_workers=12) as pool:
        submits = [pool.submit(client.post, "/tokenizers/train", json=_body()) for _ in range(12)]
        # Two checks hold the two slots; every other submit is refused at once.
        wait_until(lambda: sum(f.done() for f in submits) >= 10, 60, "ten submits refused")
        refused = [f.result() for f in submits if f.done()]
        assert len(refused) == 10
        assert all(r.status_code == 503 for r in refused)
        assert all("in flight" in r.json()["message"] for r in refused)
        wait_until(lambda: hole.accepted == 2, 30, "two checks connected to Data Bank")
        # Reads are served while those two still wait on Data Bank.
        read = client.get(f"/runs/{run_id}")
        assert read.status_code == 200 and read.json()["status"] == "running"
        waiting = [f for f in submits if not f.done()]
        assert len(waiting) == 2
        hole.hang_up()
        for future in waiting:
            assert future.result(timeout=60).status_code == 503
    assert hole.accepted == 2
