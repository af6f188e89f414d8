"""Pause and resume: a paused run holds no worker and uses no attempt, survives a restart of
the API, its worker and Redis (AOF), and continues from where it paused, its curve and events
continuous, with a larger budget when asked. Real workers, a real API process, a real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_trainer.store.keys import JobField, lease_key, workers_key
from tests.event_contracts import EventCollector
from tests.processes import wait_until
from tests.redis_server import RedisServer
from tests.stack import Api, Stack, job_field
from tests.test_durable_runs import _train_tokenizer
from tests.test_training_runs import _run_body, _text

pytestmark = pytest.mark.e2e

API_KEY = "pause-resume-key-0123456789abcdef"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("pause"), redis.url)
    yield s
    s.close()


def _client(api: Api) -> httpx.Client:
    return httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )


def _run(client: httpx.Client, run_id: str) -> dict[str, object]:
    answer = client.get(f"/runs/{run_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def _step(answer: dict[str, object]) -> int:
    progress = answer["progress"]
    assert isinstance(progress, dict)
    return int(progress["step"])


def _moving(client: httpx.Client, run_id: str) -> tuple[object, int]:
    """What changes while a run makes progress (waits fail only when it stands still)."""
    answer = _run(client, run_id)
    return answer["status"], _step(answer)


def _status_is(client: httpx.Client, run_id: str, status: str) -> bool:
    return _run(client, run_id)["status"] == status


def _reaper_passes(stack: Stack, count: int) -> None:
    """Wait for `count` more presence marks of the stack's workers: each is written at the
    start of a reaper pass, so by the second one the first pass (which takes back and
    re-enqueues what it finds) has run."""
    seen: list[float] = []

    def marked() -> bool:
        newest = stack.redis.zrevrange(workers_key(stack.queue_name), 0, 0, withscores=True)
        scores = [float(pair[1]) for pair in newest if isinstance(pair, tuple)]
        if scores and (not seen or max(scores) > seen[-1]):
            seen.append(max(scores))
        return len(seen) > count

    wait_until(marked, 60, f"{count} reaper passes")


def test_a_paused_run_survives_restarts_and_resumes_where_it_paused(
    stack: Stack, redis: RedisServer, tmp_path: Path
) -> None:
    corpus = stack.upload_text(_text())
    tokenizer = _train_tokenizer(stack, corpus)
    events = EventCollector(stack.redis_url)
    worker = stack.start_worker(f"disk-{uuid.uuid4().hex[:6]}")
    (tmp_path / "api-1").mkdir()
    api = Api(stack, tmp_path / "api-1", API_KEY)
    try:
        with _client(api) as client:
            # More steps than it trains before the pause lands (a few dozen past step 30).
            body = _run_body(
                corpus, tokenizer, max_steps=400, eval_interval=100, checkpoint_interval=1000
            )
            accepted = client.post("/runs/train", json=body)
            assert accepted.status_code == 202, accepted.text
            run_id = str(accepted.json()["run_id"])
            wait_until(
                lambda: _step(_run(client, run_id)) >= 30,
                180,
                "the run to train",
                worker,
                progress=lambda: _moving(client, run_id),
            )

            paused = client.post(f"/runs/{run_id}/pause")
            assert paused.status_code == 202, paused.text
            wait_until(
                lambda: _status_is(client, run_id, "paused"),
                120,
                "the run to pause",
                worker,
                progress=lambda: _moving(client, run_id),
            )
            at_pause = _run(client, run_id)
            paused_step = _step(at_pause)
            assert "resume" in str(at_pause["message"])
            assert at_pause["attempts"] == 0 and at_pause["error"] is None
            # No worker holds it; the checkpoint it paused at is in Data Bank.
            assert stack.redis.get(lease_key(run_id)) is None
            checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()["checkpoints"]
            assert max(c["step"] for c in checkpoints if c["kind"] == "last") == paused_step
            # Resuming needs a paused run, and a larger budget of the run's own kind.
            smaller = client.post(f"/runs/{run_id}/resume", json={"max_steps": 10})
            assert smaller.status_code == 422, smaller.text
            other_kind = client.post(f"/runs/{run_id}/resume", json={"max_train_seconds": 9e5})
            assert other_kind.status_code == 422, other_kind.text
        started = [e for e in events.for_run(run_id) if e["type"] == "trainer.train.started.v1"]
        assert len(started) == 1
        events.close()

        # Everything restarts: the API, the worker (a fresh disk) and Redis (from its AOF).
        api.stop()
        stack.retire(worker)
        redis.stop()
        redis.start()
        worker = stack.start_worker(f"disk-{uuid.uuid4().hex[:6]}")
        (tmp_path / "api-2").mkdir()
        api = Api(stack, tmp_path / "api-2", API_KEY)
        events = EventCollector(stack.redis_url)
        _reaper_passes(stack, 2)
        with _client(api) as client:
            still = _run(client, run_id)
            assert (still["status"], _step(still)) == ("paused", paused_step), still
            again = client.post(f"/runs/{run_id}/pause")
            assert again.status_code == 202 and again.json()["status"] == "paused"

            budget = 460
            resumed = client.post(f"/runs/{run_id}/resume", json={"max_steps": budget})
            assert resumed.status_code == 202, resumed.text
            assert resumed.json()["status"] in ("queued", "running")
            twice = client.post(f"/runs/{run_id}/resume")
            assert twice.status_code == 409, twice.text  # queued now, not paused

            def ended() -> bool:
                return _run(client, run_id)["status"] in ("completed", "failed", "cancelled")

            wait_until(
                ended,
                120,
                "the resumed run to end",
                worker,
                progress=lambda: _moving(client, run_id),
            )
            done = _run(client, run_id)
            assert done["status"] == "completed", done
            assert _step(done) == budget
            progress = done["progress"]
            assert isinstance(progress, dict) and progress["resumed_from_step"] == paused_step
            request = done["request"]
            assert isinstance(request, dict) and request["max_steps"] == budget
            points = client.get(f"/runs/{run_id}/metrics").json()["points"]
            steps = [int(p["step"]) for p in points]
            assert steps == sorted(set(steps)) and steps[-1] == budget, steps
            assert any(s > paused_step for s in steps)
        # One `started` for the whole run (the one before the pause; none on resuming).
        assert job_field(stack.redis, run_id, JobField.ATTEMPTS) is None
        started = [e for e in events.for_run(run_id) if e["type"] == "trainer.train.started.v1"]
        assert started == []
        completed = [e for e in events.for_run(run_id) if e["type"] == "trainer.train.completed.v1"]
        assert len(completed) == 1
    finally:
        events.close()
        api.stop()
