"""`GET /runs/compare`: curves on three axes, the settings that differ, final figures, and
404 for a run the caller cannot see. The records, curves and evaluations are written as the
worker writes them (no worker needed); samples from real models are the dashboard's and
the CLI's e2e tests'."""

from __future__ import annotations

import time
import uuid

from fastapi.testclient import TestClient
from pydantic import JsonValue
from redis import Redis

from model_trainer.api.main import build_context, create_app
from model_trainer.settings import Settings
from model_trainer.store.fencing import DirectWriter
from model_trainer.store.keys import EVAL_KEYS, RUN_KEYS, JobField, metrics_key
from model_trainer.store.records import (
    EvalResult,
    RecordMeta,
    RunProgress,
    Status,
    StatusStore,
    hset,
)
from model_trainer.store.runlog import MetricPoint


def _run(redis: Redis, lr: float, *, evaluated: bool, name: str) -> str:
    runs = StatusStore(redis, RUN_KEYS, RunProgress)
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    request: dict[str, JsonValue] = {
        "name": name,
        "tags": ["cmp"],
        "learning_rate": lr,
        "batch_size": 4,
        "max_seq_len": 8,
        "max_steps": 20,
        "user_id": 7,
        "webhook_url": None,
    }
    runs.create(run_id, RecordMeta(created_at=time.time(), request=request))
    points = [
        MetricPoint(
            step=s,
            train_loss=5.0 - s * lr,
            val_loss=4.9 if s == 20 else None,
            tokens_per_sec=100.0 * (1 + s / 10),
            elapsed_sec=s / 10,
        )
        for s in (0, 10, 20)
    ]
    redis.rpush(metrics_key(run_id), *(p.model_dump_json() for p in points))
    runs.set_progress(run_id, RunProgress(step=20, total_steps=20, val_loss=4.9))
    runs.set_status(run_id, Status.COMPLETED if evaluated else Status.RUNNING)
    if evaluated:
        evals = StatusStore(redis, EVAL_KEYS, EvalResult)
        eval_id = f"eval-{uuid.uuid4().hex[:16]}"
        evals.create(eval_id, RecordMeta(created_at=time.time(), request={"split": "validation"}))
        evals.set_progress(
            eval_id, EvalResult(split="validation", loss=4.5, perplexity=90.0, bits_per_char=2.25)
        )
        evals.set_status(eval_id, Status.COMPLETED)
        DirectWriter(redis).write(hset(run_id, (JobField.EVAL, eval_id)))
    return run_id


def test_compare_sets_runs_side_by_side(settings: Settings, redis_client: Redis) -> None:
    a = _run(redis_client, 0.01, evaluated=True, name="low")
    b = _run(redis_client, 0.03, evaluated=False, name="high")
    with TestClient(create_app(build_context(settings))) as client:
        answer = client.get("/runs/compare", params={"run_id": [b, a]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [r["run_id"] for r in body["runs"]] == [b, a]  # the order asked
        high, low = body["runs"]
        assert (low["name"], low["tags"], low["status"]) == ("low", ["cmp"], "completed")
        # Three axes: step, tokens seen (step x batch x context), seconds of training.
        assert [(p["step"], p["tokens"], p["seconds"]) for p in low["curve"]] == [
            (0, 0, 0.0),
            (10, 320, 1.0),
            (20, 640, 2.0),
        ]
        assert [p["val_loss"] for p in low["curve"]] == [None, None, 4.9]
        assert low["final"] == {
            "steps": 20,
            "val_loss": 4.5,
            "bits_per_char": 2.25,
            "perplexity": 90.0,
            "tokens_per_sec": 200.0,
            "train_seconds": 2.0,
        }
        # Not evaluated yet: its last validation loss, and the perplexity it means.
        assert high["final"]["bits_per_char"] is None
        assert round(high["final"]["perplexity"], 3) == round(2.718281828**4.9, 3)
        # Only what differs, and only settings: not labels, webhooks or the Discord user.
        assert body["differing"] == [{"field": "learning_rate", "values": {b: 0.03, a: 0.01}}]
        assert "user_id" not in low["settings"] and "name" not in low["settings"]
        assert high["sample"] is None

        unknown = f"run-{uuid.uuid4().hex[:16]}"
        missing = client.get("/runs/compare", params={"run_id": [a, unknown]})
        assert missing.status_code == 404 and unknown in missing.json()["message"]
        malformed = client.get("/runs/compare", params={"run_id": [a, "run-nope"]})
        assert malformed.status_code == 404
        assert client.get("/runs/compare", params={"run_id": [a]}).status_code == 422
        # A prompt asks a sample of each model: the one still running has none yet, and says so.
        sampled = client.get("/runs/compare", params={"run_id": [b, a], "prompt": "To be"}).json()
        note = sampled["runs"][0]["sample"]
        assert note["text"] is None and "no model until it completes" in note["note"]
