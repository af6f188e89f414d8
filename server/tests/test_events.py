"""Each fact in each dialect, checked by the consumers' decoders (tests/event_contracts.py).

The end-to-end tests (test_training_runs, test_tokenizer_jobs) check real jobs' messages the
same way; these cover what a short run does not reach: a 64-bit Discord id, a long message,
a cancellation of each kind, nobody to notify, losses past exp's range, the dialect switch.
"""

from __future__ import annotations

import json
import math
import uuid

import pytest
from redis import Redis

from model_trainer.store.events import (
    MAX_MESSAGE_CHARS,
    Dialect,
    EventPublisher,
    Fact,
    JobCompleted,
    JobStarted,
    RunConfigured,
    RunProgressed,
    RunResult,
    job_failed,
    messages,
)
from model_trainer.store.keys import JobKind
from tests.event_contracts import decode_platform, decode_v1

SNOWFLAKE = 112233445566778899  # past 2**53: a double would not hold its digits

CONFIGURED = RunConfigured(
    job_id="run-1",
    user_id=SNOWFLAKE,
    model_family="qwen3",
    model_size="tiny",
    total_epochs=3,
    queue="training",
    optimizer="muon",
    cpu_cores=2,
    optimal_threads=2,
    batch_size=12,
    learning_rate=2e-3,
    total_steps=900,
)
PROGRESSED = RunProgressed(
    job_id="run-1",
    user_id=SNOWFLAKE,
    epoch=1,
    total_epochs=3,
    step=400,
    total_steps=900,
    loss=2.5,
    grad_norm=0.75,
    tokens_per_sec=12_000.0,
    samples_per_sec=187.5,
    eta_seconds=40.0,
    val_loss=2.75,
    lr=1e-3,
)
COMPLETED = JobCompleted(
    kind=JobKind.RUN,
    job_id="run-1",
    user_id=SNOWFLAKE,
    file_id="f" * 64,
    file_bytes=3_235_840,
    run=RunResult(loss=2.25, evaluated=True, artifact_path="/data/runs/run-1/artifact"),
)


BOTH = frozenset(Dialect)


def _platform(fact: Fact) -> list[dict[str, object]]:
    """The fact's platform messages, each as the bot decodes it (none may be dropped)."""
    raw = messages(fact, frozenset({Dialect.PLATFORM}))
    decoded = [decode_platform(m) for m in raw]
    assert None not in decoded, raw
    return [d for d in decoded if d is not None]


def _v1(fact: Fact) -> list[dict[str, object]]:
    raw = messages(fact, frozenset({Dialect.V1}))
    decoded = [decode_v1(m) for m in raw]
    assert None not in decoded, raw
    return [d for d in decoded if d is not None]


@pytest.mark.parametrize("fact", [CONFIGURED, PROGRESSED, COMPLETED])
def test_each_consumer_decodes_its_dialect_and_drops_the_other(fact: Fact) -> None:
    both = messages(fact, BOTH)
    v1 = messages(fact, frozenset({Dialect.V1}))
    platform = messages(fact, frozenset({Dialect.PLATFORM}))
    assert both == v1 + platform and v1 and platform
    assert all(decode_v1(m) is not None and decode_platform(m) is None for m in v1)
    assert all(decode_platform(m) is not None and decode_v1(m) is None for m in platform)
    for message in both:
        assert str(SNOWFLAKE) in message, "the id's exact digits"
        assert ", " not in message and ": " not in message, "compact JSON"
    assert messages(fact, frozenset()) == []


def test_a_run_in_the_platform_dialect_reads_as_their_producer_writes_it() -> None:
    config = _platform(CONFIGURED)
    assert [e["type"] for e in config] == ["trainer.metrics.config.v1"]
    assert config[0]["total_epochs"] == 3 and config[0]["kept"] is True
    progress = _platform(PROGRESSED)
    assert [e["type"] for e in progress] == [
        "trainer.job.progress.v1",
        "trainer.metrics.progress.v1",
    ]
    assert progress[0]["progress"] == 44 and progress[0]["kept"] is False
    metrics = progress[1]
    assert metrics["train_loss"] == 2.5 and metrics["train_ppl"] == pytest.approx(math.exp(2.5))
    assert metrics["val_ppl"] == pytest.approx(math.exp(2.75))
    assert metrics["grad_norm"] == 0.75 and metrics["samples_per_sec"] == 187.5
    completed = _platform(COMPLETED)
    assert [e["type"] for e in completed] == [
        "trainer.job.completed.v1",
        "trainer.metrics.completed.v1",
    ]
    assert completed[0]["result_bytes"] == 3_235_840
    assert completed[1]["test_loss"] == 2.25
    started = _platform(JobStarted(kind=JobKind.RUN, job_id="run-1", user_id=1, queue="q"))
    assert started == [
        {
            "type": "trainer.job.started.v1",
            "domain": "trainer",
            "job_id": "run-1",
            "user_id": 1,
            "queue": "q",
            "kept": False,
        }
    ]


def test_unknown_numbers_are_sent_as_the_platform_requires_them() -> None:
    """No validation yet, no speed yet: required fields still go out (0.0), val_* not."""
    early = PROGRESSED.model_copy(
        update={"grad_norm": None, "samples_per_sec": None, "val_loss": None}
    )
    (_, metrics) = _platform(early)
    assert metrics["grad_norm"] == 0.0 and metrics["samples_per_sec"] == 0.0
    assert "val_loss" not in metrics and "val_ppl" not in metrics
    huge = _platform(PROGRESSED.model_copy(update={"loss": 900.0, "val_loss": 800.0}))[1]
    assert math.isfinite(float(str(huge["train_ppl"]))) and math.isfinite(
        float(str(huge["val_ppl"]))
    )


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        (JobKind.RUN, "Training cancelled"),
        (JobKind.TOKENIZER, "Tokenizer training cancelled"),
        (JobKind.EVAL, "Evaluation cancelled"),
    ],
)
def test_a_cancellation_is_a_system_failure_for_the_bot(kind: JobKind, said: str) -> None:
    fact = job_failed(kind, "job-1", 5, "cancelled by request", "user", cancelled=True)
    (failed,) = _platform(fact)
    assert failed["type"] == "trainer.job.failed.v1" and failed["kept"] is True
    assert failed["error_kind"] == "system" and failed["message"] == said
    v1 = _v1(fact)
    if kind is JobKind.RUN:
        assert v1[0]["status"] == "canceled" and v1[0]["error_kind"] == "user"
    else:
        assert v1 == [], "v1 speaks of training runs only"


def test_a_long_failure_is_cut_to_what_a_dm_holds_and_kinds_map_to_user_or_system() -> None:
    long = job_failed(JobKind.RUN, "run-1", 5, "x" * 5000, "fatal", cancelled=False)
    (failed,) = _platform(long)
    assert failed["error_kind"] == "system" and len(str(failed["message"])) == MAX_MESSAGE_CHARS
    user = job_failed(JobKind.TOKENIZER, "tok-1", 5, "bad corpus", "user", cancelled=False)
    assert _platform(user)[0]["error_kind"] == "user"


def test_nobody_to_notify_is_no_platform_message() -> None:
    """The bot cannot DM user 0 and would stop listening on the error (the contract's §5)."""
    for fact in (CONFIGURED, PROGRESSED, COMPLETED):
        nobody = fact.model_copy(update={"user_id": 0})
        assert messages(nobody, frozenset({Dialect.PLATFORM})) == []
        assert [json.loads(m)["user_id"] for m in messages(nobody, BOTH)] == [0]


def test_a_run_without_a_final_evaluation_still_ends_its_dm() -> None:
    """v1 sends no completed without a finite evaluation (its contract); the platform falls
    back to the last training loss as their producer does, so the DM does not freeze."""
    unevaluated = COMPLETED.model_copy(
        update={"run": RunResult(loss=3.0, evaluated=False, artifact_path="/a")}
    )
    assert _v1(unevaluated) == []
    assert _platform(unevaluated)[-1]["test_loss"] == 3.0
    tokenizer = JobCompleted(
        kind=JobKind.TOKENIZER, job_id="tok-1", user_id=5, file_id="a" * 64, file_bytes=10
    )
    assert [e["type"] for e in _platform(tokenizer)] == ["trainer.job.completed.v1"]
    assert _v1(tokenizer) == []


def test_the_publisher_sends_the_enabled_dialects(redis_url: str) -> None:
    """A real subscriber on the suite's Redis hears v1 only when only v1 is enabled."""
    redis = Redis.from_url(redis_url)
    channel = f"events-{uuid.uuid4().hex[:8]}"
    pubsub = redis.pubsub()
    pubsub.subscribe(channel)
    try:
        assert pubsub.get_message(timeout=5) is not None  # the subscription's confirmation
        assert EventPublisher(redis, channel, frozenset({Dialect.V1})).publish(CONFIGURED)
        assert EventPublisher(redis, channel).publish(PROGRESSED)
        heard: list[str] = []
        while len(heard) < 4:
            message = pubsub.get_message(timeout=5)
            assert message is not None, heard
            if message["type"] == "message":
                heard.append(message["data"].decode())
    finally:
        pubsub.close()
        redis.close()
    assert [json.loads(m)["type"] for m in heard] == [
        "trainer.train.started.v1",
        "trainer.train.progress.v1",
        "trainer.job.progress.v1",
        "trainer.metrics.progress.v1",
    ]
