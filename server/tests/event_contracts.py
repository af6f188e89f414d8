"""The two `trainer:events` consumers, as their contracts describe them, for the tests;
and `EventCollector`, a real subscriber that decodes what it hears as each of them does.

Written from the contracts' field tables (../shared/contracts/trainer-events-v1.md and
trainer-events-platform.md), not from our models: a message our code renders is checked by
what its consumer accepts. `decode_*` returns the decoded object, or None where the
consumer drops the message (for the platform bot: silently, §1).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping

from redis import Redis

from tests.processes import wait_until

# The JSON types of the tables: "str", "int" (a JSON integer literal, never a boolean or
# 3.0), "number" (an integer or float literal, never a boolean).
FieldTypes = Mapping[str, str]

V1_COMMON: FieldTypes = {"type": "str", "request_id": "str", "run_id": "str", "user_id": "int"}
V1_TYPES: dict[str, tuple[FieldTypes, FieldTypes]] = {
    "trainer.train.started.v1": (
        {"model_family": "str", "model_size": "str", "total_epochs": "int", "queue": "str"},
        {
            "cpu_cores": "int",
            "memory_mb": "int",
            "optimal_threads": "int",
            "optimal_workers": "int",
            "batch_size": "int",
            "learning_rate": "number",
        },
    ),
    "trainer.train.progress.v1": (
        {"epoch": "int", "total_epochs": "int", "step": "int", "loss": "number"},
        {
            "samples_per_sec": "number",
            "main_rss_mb": "int",
            "workers_rss_mb": "int",
            "worker_count": "int",
            "cgroup_usage_mb": "int",
            "cgroup_limit_mb": "int",
            "cgroup_pct": "number",
        },
    ),
    "trainer.train.completed.v1": (
        {"loss": "number", "perplexity": "number", "artifact_path": "str"},
        {},
    ),
    "trainer.train.failed.v1": ({"error_kind": "str", "message": "str", "status": "str"}, {}),
}

PLATFORM_COMMON: FieldTypes = {"type": "str", "job_id": "str", "user_id": "int"}
PLATFORM_METRICS: dict[str, tuple[FieldTypes, FieldTypes]] = {
    "trainer.metrics.config.v1": (
        {"model_family": "str", "model_size": "str", "total_epochs": "int", "queue": "str"},
        {
            "cpu_cores": "int",
            "memory_mb": "int",
            "optimal_threads": "int",
            "optimal_workers": "int",
            "batch_size": "int",
            "learning_rate": "number",
        },
    ),
    "trainer.metrics.progress.v1": (
        {
            "epoch": "int",
            "total_epochs": "int",
            "step": "int",
            "train_loss": "number",
            "train_ppl": "number",
            "grad_norm": "number",
            "samples_per_sec": "number",
        },
        {"val_loss": "number", "val_ppl": "number"},
    ),
    "trainer.metrics.completed.v1": (
        {"test_loss": "number", "test_ppl": "number", "artifact_path": "str"},
        {},
    ),
}
PLATFORM_DOMAINS = {
    "covenant",
    "databank",
    "digits",
    "music_wrapped",
    "qr",
    "trainer",
    "transcript",
    "turkic",
}
PLATFORM_JOB: dict[str, tuple[FieldTypes, FieldTypes]] = {
    "started": ({"queue": "str"}, {}),
    "progress": ({"progress": "int"}, {"message": "str"}),
    "completed": ({"result_id": "str", "result_bytes": "int"}, {}),
    "failed": ({"error_kind": "str", "message": "str"}, {}),
}


def _is(value: object, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, int | float)


def _check(event: dict[str, object], required: FieldTypes, optional: FieldTypes) -> bool:
    """Required: present, not null, of its type. Optional: a wrong type drops the field."""
    for name, kind in required.items():
        if event.get(name) is None or not _is(event[name], kind):
            return False
    for name, kind in optional.items():
        if name in event and not _is(event[name], kind):
            del event[name]
    return True


def _object(raw: str) -> dict[str, object] | None:
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def decode_v1(raw: str) -> dict[str, object] | None:
    """What a v1 consumer keeps: one of the four types, its fields typed; finite numbers
    (the v1 contract: NaN or infinity is not valid JSON for consumers)."""
    event = _object(raw)
    if event is None or not _check(event, V1_COMMON, {}):
        return None
    fields = V1_TYPES.get(str(event["type"]))
    if fields is None or not _check(event, *fields):
        return None
    if any(isinstance(v, float) and not math.isfinite(v) for v in event.values()):
        return None
    if event["type"] == "trainer.train.failed.v1" and (
        event["error_kind"] not in ("user", "system")
        or event["status"] not in ("failed", "canceled")
    ):
        return None
    return event


def decode_platform(raw: str) -> dict[str, object] | None:
    """The bot's two decoders in order (§1): metrics, then job; of the job events it keeps
    `trainer.job.failed.v1` only (returned here with the others, marked `kept: False`)."""
    event = _object(raw)
    if event is None:
        return None
    metrics = PLATFORM_METRICS.get(str(event.get("type")))
    if metrics is not None:
        if _check(event, PLATFORM_COMMON, {}) and _check(event, *metrics):
            return {**event, "kept": True}
        return None
    parts = str(event.get("type")).split(".")
    if len(parts) != 4 or parts[1] != "job" or parts[3] != "v1":
        return None
    domain, suffix = parts[0], parts[2]
    if domain not in PLATFORM_DOMAINS or suffix not in PLATFORM_JOB:
        return None
    if event.get("domain") != domain or not _check(event, PLATFORM_COMMON, {}):
        return None
    if not _check(event, *PLATFORM_JOB[suffix]):
        return None
    if suffix == "failed" and event["error_kind"] not in ("user", "system"):
        return None
    return {**event, "kept": suffix == "failed" and domain == "trainer"}


class EventCollector:
    """Subscribes to trainer:events in a thread, as both consumers do: `for_run` is what the
    v1 consumer keeps of a run, `platform` what the platform bot decodes of a job."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        self._pubsub.subscribe("trainer:events")
        self.raw: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                data = message["data"]
                self.raw.append(data.decode() if isinstance(data, bytes) else str(data))

    def for_run(self, run_id: str) -> list[dict[str, object]]:
        events = [decode_v1(r) for r in list(self.raw)]
        return [e for e in events if e is not None and e["run_id"] == run_id]

    def platform(self, job_id: str) -> list[dict[str, object]]:
        events = [decode_platform(r) for r in list(self.raw)]
        return [e for e in events if e is not None and e["job_id"] == job_id]

    def wait_platform(self, job_id: str, event_type: str, timeout: float = 30) -> None:
        wait_until(
            lambda: any(e["type"] == event_type for e in self.platform(job_id)),
            timeout,
            f"a platform {event_type} for {job_id}",
        )

    def wait_for(self, run_id: str, event_type: str, timeout: float = 30) -> dict[str, object]:
        """The run's last event of `event_type`, once it has arrived."""
        wait_until(
            lambda: any(e["type"] == event_type for e in self.for_run(run_id)),
            timeout,
            f"a {event_type} event for {run_id}",
        )
        return [e for e in self.for_run(run_id) if e["type"] == event_type][-1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._redis.close()
