"""Durable runs through outages: a paused owner, Data Bank down mid-run, Redis restarted
mid-run (test_durable_runs.py: dead and redeployed workers, failure classes). Its own module,
so that the two halves run side by side (make check runs a module to a process).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from model_trainer.store.keys import JobField
from tests.processes import Proc, wait_until
from tests.redis_server import RedisServer
from tests.stack import Stack, job_field, poll
from tests.test_durable_runs import (
    _attempts,
    _checkpoints,
    _disk,
    _finish,
    _moving,
    _no_worker_outlives_its_test,
    _owner,
    _run,
    _signal_all,
    _step,
    _train_tokenizer,
    corpus_id,
    stack,
    tokenizer_id,
)
from tests.test_training_runs import _run_body, _submit, _text

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

# The module's own stack, corpus and tokenizer (module-scoped fixtures, defined there).
__all__ = ["_no_worker_outlives_its_test", "corpus_id", "stack", "tokenizer_id"]


def test_paused_owner_loses_the_run_and_writes_nothing(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    workers = [stack.start_worker(_disk()), stack.start_worker(_disk())]
    paused: Proc | None = None
    try:
        with stack.client() as client:
            body = _run_body(corpus_id, tokenizer_id, max_train_seconds=20, checkpoint_interval=20)
            body.pop("max_steps")
            run_id = _submit(client, body)
            wait_until(
                lambda: _checkpoints(stack, run_id).latest() is not None,
                120,
                "a checkpoint",
                progress=lambda: _moving(client, run_id),
            )
            owner_name = _owner(stack, run_id)
            paused = next(w for w in workers if stack.worker_name(w) == owner_name)
            other = next(w for w in workers if w is not paused)
            _signal_all(paused, signal.SIGSTOP)
            wait_until(
                lambda: (
                    _owner(stack, run_id) == stack.worker_name(other)
                    and _run(client, run_id)["status"] == "running"
                ),
                60,
                "the other worker to take the run over",
                other,
            )
            taken_at_epoch = int(job_field(stack.redis, run_id, JobField.EPOCH) or 0)
            _signal_all(paused, signal.SIGCONT)
            wait_until(
                lambda: "job_lost" in paused.output() or "lease_lost" in paused.output(),
                60,
                "the paused worker to notice it lost the run",
                paused,
            )
            done = _finish(client, run_id)
            assert done["status"] == "completed", done
            # Nothing the paused worker wrote after the takeover survived: every checkpoint
            # since is the new owner's, and the epoch moved on only by the takeover itself.
            later = [c for c in _checkpoints(stack, run_id).entries if c.step > 20]
            assert later and all(c.worker == stack.worker_name(other) for c in later), later
            assert int(job_field(stack.redis, run_id, JobField.EPOCH) or 0) == taken_at_epoch
            points = client.get(f"/runs/{run_id}/metrics").json()["points"]
            steps = [int(p["step"]) for p in points]
            assert steps == sorted(set(steps))
    finally:
        if paused is not None:
            _signal_all(paused, signal.SIGCONT)
        for worker in workers:
            stack.retire(worker)


def test_data_bank_outage_mid_run(stack: Stack, corpus_id: str, tokenizer_id: str) -> None:
    """Checkpoint uploads fail while Data Bank is down; training goes on; the run completes
    once it is back."""
    worker = stack.start_worker(_disk())
    try:
        with stack.client() as client:
            body = _run_body(corpus_id, tokenizer_id, max_train_seconds=30, checkpoint_interval=20)
            body.pop("max_steps")
            run_id = _submit(client, body)
            wait_until(
                lambda: _checkpoints(stack, run_id).latest() is not None,
                120,
                "a checkpoint",
                progress=lambda: _moving(client, run_id),
            )
            stack.stop_databank()
            try:
                wait_until(
                    lambda: "checkpoint_upload_failed" in worker.output(),
                    120,
                    "a checkpoint upload to fail",
                    worker,
                )
                # Training goes on past the failed upload (any step after it: on a loaded
                # machine the budget may have few left).
                step = _step(_run(client, run_id))
                wait_until(
                    lambda: _step(_run(client, run_id)) > step,
                    120,
                    "training to go on",
                    worker,
                    progress=lambda: _moving(client, run_id),
                )
            finally:
                stack.restart_databank()
            done = _finish(client, run_id)
            assert done["status"] == "completed", done
            assert _attempts(stack, run_id) == 0
    finally:
        stack.retire(worker)


def test_redis_restart_mid_run(tmp_path: Path) -> None:
    """Redis (with AOF) stopped and started again mid-run: the API answers 503 meanwhile, the
    worker trains on, and the run completes."""
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    own = Stack(tmp_path / "stack", redis.url)
    try:
        corpus = own.upload_text(_text())
        tokenizer = _train_tokenizer(own, corpus)
        worker = own.start_worker(_disk())
        with own.client() as client:
            body = _run_body(corpus, tokenizer, max_train_seconds=25, checkpoint_interval=30)
            body.pop("max_steps")
            run_id = _submit(client, body)
            poll(lambda: _run(client, run_id), lambda a: _step(a) > 20, 120)
            redis.stop()
            response = client.get(f"/runs/{run_id}")
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "SERVICE_UNAVAILABLE"
            wait_until(
                lambda: "lease_renew_failed" in worker.output(),
                60,
                "the worker to notice Redis is gone",
                worker,
            )
            redis.start()
            done = _finish(client, run_id)
            assert done["status"] == "completed", done
            assert worker.alive()
    finally:
        own.close()
        redis.stop()
