"""A job's log lines and metric points, kept where the API can read them without our disk.

Each log line goes to the run folder's `logs.jsonl` and to a capped Redis stream
(`job:{<id>}:logs`), whose entry ids serve as SSE event ids. Metric points (the loss curve) go
to a capped Redis list (`job:{<id>}:metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from redis import Redis
from redis.exceptions import RedisError

from model_trainer.store.fencing import DirectWriter, Writer
from model_trainer.store.keys import METRICS_MAX_POINTS, RECORD_TTL_SEC, logs_key, metrics_key
from model_trainer.store.records import as_str
from service_common.jsonlog import JsonFormatter, run_id_var, tokenizer_id_var


class LogLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str  # the Redis stream id, usable as Last-Event-ID
    line: str  # one JSON object


class MetricPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_sec: float | None = None
    elapsed_sec: float | None = None


class RunLogHandler(logging.Handler):
    """Copies the records of one job (matched by run/tokenizer id) to its file and stream."""

    def __init__(
        self, redis: Redis, record_id: str, folder: Path, maxlen: int, service: str
    ) -> None:
        super().__init__()
        self._redis = redis
        self._id = record_id
        self._maxlen = maxlen
        folder.mkdir(parents=True, exist_ok=True)
        self._file = (folder / "logs.jsonl").open("a", encoding="utf-8")
        self._formatter = JsonFormatter(service)
        self._stream_broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._id not in (run_id_var.get(), tokenizer_id_var.get()):
            return
        line = self._formatter.format(record)
        self._file.write(line + "\n")
        self._file.flush()
        if self._stream_broken:
            return
        try:
            self._redis.xadd(
                logs_key(self._id), {"line": line}, maxlen=self._maxlen, approximate=True
            )
        except RedisError:
            # Logging must never fail the job; the file still has the line.
            self._stream_broken = True

    def close(self) -> None:
        self._file.close()
        try:
            self._redis.expire(logs_key(self._id), RECORD_TTL_SEC)
        except RedisError:
            self._stream_broken = True
        super().close()


@contextmanager
def capture_job_logs(
    redis: Redis, record_id: str, folder: Path, maxlen: int, service: str = "worker"
) -> Iterator[None]:
    handler = RunLogHandler(redis, record_id, folder, maxlen, service)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class RunLogReader:
    """The API's side: read lines and metric points back from Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def tail(self, record_id: str, count: int) -> list[LogLine]:
        raw = self._redis.xrevrange(logs_key(record_id), count=count) or []
        return list(reversed([_line(entry) for entry in raw]))

    def after(self, record_id: str, last_id: str, count: int = 500) -> list[LogLine]:
        """Lines strictly after stream id `last_id` ("0" for all)."""
        start = f"({last_id}" if last_id != "0" else "-"
        raw = self._redis.xrange(logs_key(record_id), min=start, count=count) or []
        return [_line(entry) for entry in raw]

    def metrics(self, record_id: str) -> list[MetricPoint]:
        raw = self._redis.lrange(metrics_key(record_id), 0, -1)
        return [MetricPoint.model_validate_json(s) for s in (as_str(v) for v in raw) if s]

    def last_metric(self, record_id: str) -> MetricPoint | None:
        """The newest point of the curve (one element read, however long the curve)."""
        raw = as_str(self._redis.lindex(metrics_key(record_id), -1))
        return MetricPoint.model_validate_json(raw) if raw else None


class MetricsWriter:
    """Loss-curve points to Redis (the training loop writes `metrics.jsonl` itself).

    Points that could not be written (Redis unreachable) wait and go out, in order, with the
    next write, so an outage leaves no hole in the curve. `after_step` drops points the
    curve already has: a run resumed from an older checkpoint replays steps it had reported.
    """

    def __init__(self, redis: Redis, record_id: str, writer: Writer | None = None) -> None:
        self._redis = redis
        self._id = record_id
        self._writer: Writer = writer or DirectWriter(redis)
        self._pending: list[str] = []
        self.after_step = -1

    def last_step(self) -> int | None:
        """The step of the newest point in Redis (None for an empty curve)."""
        last = RunLogReader(self._redis).last_metric(self._id)
        return last.step if last else None

    def add(self, point: MetricPoint) -> None:
        """Queue the point and write everything pending; raises RedisError if Redis is down."""
        if point.step <= self.after_step:
            return
        self.after_step = point.step
        self._pending.append(point.model_dump_json(exclude_none=True))
        key = metrics_key(self._id)
        self._writer.write(
            [
                ("RPUSH", key, *self._pending),
                ("LTRIM", key, str(-METRICS_MAX_POINTS), "-1"),
                ("EXPIRE", key, str(RECORD_TTL_SEC)),
            ]
        )
        self._pending = []


def _line(entry: object) -> LogLine:
    # redis-py returns (id, {field: value}) pairs for XRANGE.
    if not isinstance(entry, tuple | list) or len(entry) != 2:
        raise TypeError("unexpected XRANGE entry")
    entry_id, fields = entry
    if not isinstance(fields, dict):
        raise TypeError("unexpected XRANGE fields")
    line = as_str(fields.get(b"line", fields.get("line")))
    return LogLine(id=as_str(entry_id) or "0", line=line or "{}")
