"""Every Redis key the API and the worker share, behind one typed module.

Runs and tokenizers have the same life (queued -> running -> completed | failed |
cancelled), so one `StatusStore` serves both, parameterised by a `KeySchema` that spells
the key names of the design (`runs:status:<id>`, `tokenizer:<id>:status`, ...).
DESIGN.md lists every key with its type and TTL; keep the two in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from redis import Redis

# Terminal records and their satellites live this long after the last write (30 days).
RECORD_TTL_SEC = 30 * 24 * 3600


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class KeySchema(BaseModel):
    """Key names for one kind of record; `{id}` is replaced by the record's id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str
    message: str
    heartbeat: str
    cancelled: str
    file_id: str
    meta: str
    progress: str
    eval: str
    index: str

    def key(self, template: str, record_id: str) -> str:
        return template.replace("{id}", record_id)


RUN_KEYS = KeySchema(
    status="runs:status:{id}",
    message="runs:msg:{id}",
    heartbeat="runs:hb:{id}",
    cancelled="runs:{id}:cancelled",
    file_id="runs:artifact:{id}:file_id",
    meta="runs:meta:{id}",
    progress="runs:progress:{id}",
    eval="runs:eval:{id}",
    index="runs:index",
)

TOKENIZER_KEYS = KeySchema(
    status="tokenizer:{id}:status",
    message="tokenizer:{id}:msg",
    heartbeat="tokenizer:{id}:hb",
    cancelled="tokenizer:{id}:cancelled",
    file_id="tokenizer:{id}:file_id",
    meta="tokenizer:{id}:meta",
    progress="tokenizer:{id}:progress",
    eval="tokenizer:{id}:eval",
    index="tokenizers:index",
)


def as_str(value: object) -> str | None:
    """Narrow a Redis reply (bytes, str or None) to `str | None`."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected Redis reply type {type(value).__name__}")


class StatusStore:
    def __init__(
        self,
        redis: Redis,
        keys: KeySchema,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = redis
        self._keys = keys
        self._clock = clock

    def _k(self, template: str, record_id: str) -> str:
        return self._keys.key(template, record_id)

    # --- creation and listing -------------------------------------------------------
    def create(self, record_id: str, meta_json: str) -> bool:
        """Register a new record as queued. False if the id already exists (idempotent submit)."""
        k = self._keys
        created = self._r.set(self._k(k.meta, record_id), meta_json, nx=True, ex=RECORD_TTL_SEC)
        if not created:
            return False
        pipe = self._r.pipeline()
        pipe.set(self._k(k.status, record_id), Status.QUEUED.value, ex=RECORD_TTL_SEC)
        pipe.delete(self._k(k.message, record_id), self._k(k.cancelled, record_id))
        pipe.zadd(k.index, {record_id: self._clock()})
        pipe.execute()
        return True

    def reset(self, record_id: str, meta_json: str) -> None:
        """Queue a failed or cancelled record again (a re-submitted request)."""
        k = self._keys
        pipe = self._r.pipeline()
        pipe.set(self._k(k.meta, record_id), meta_json, ex=RECORD_TTL_SEC)
        pipe.set(self._k(k.status, record_id), Status.QUEUED.value, ex=RECORD_TTL_SEC)
        for template in (k.message, k.cancelled, k.file_id, k.progress, k.heartbeat):
            pipe.delete(self._k(template, record_id))
        pipe.zadd(k.index, {record_id: self._clock()})
        pipe.execute()

    def meta(self, record_id: str) -> str | None:
        return as_str(self._r.get(self._k(self._keys.meta, record_id)))

    def list_ids(self, offset: int, limit: int) -> tuple[list[str], int]:
        """Ids newest first, and the total count."""
        index = self._keys.index
        total = int(self._r.zcard(index))
        raw = self._r.zrevrange(index, offset, offset + limit - 1)
        ids = [s for s in (as_str(v) for v in raw) if s is not None]
        return ids, total

    def all_ids(self) -> list[str]:
        raw = self._r.zrevrange(self._keys.index, 0, -1)
        return [s for s in (as_str(v) for v in raw) if s is not None]

    # --- status and message ---------------------------------------------------------
    def set_status(self, record_id: str, status: Status, message: str | None = None) -> None:
        k = self._keys
        pipe = self._r.pipeline()
        pipe.set(self._k(k.status, record_id), status.value, ex=RECORD_TTL_SEC)
        if message is not None:
            pipe.set(self._k(k.message, record_id), message, ex=RECORD_TTL_SEC)
        if status.terminal:
            pipe.delete(self._k(k.heartbeat, record_id))
        pipe.execute()

    def status(self, record_id: str) -> Status | None:
        raw = as_str(self._r.get(self._k(self._keys.status, record_id)))
        return Status(raw) if raw is not None else None

    def message(self, record_id: str) -> str | None:
        return as_str(self._r.get(self._k(self._keys.message, record_id)))

    # --- liveness -------------------------------------------------------------------
    def heartbeat(self, record_id: str, ttl_sec: int) -> float:
        now = self._clock()
        self._r.set(self._k(self._keys.heartbeat, record_id), repr(now), ex=ttl_sec)
        return now

    def last_heartbeat(self, record_id: str) -> float | None:
        raw = as_str(self._r.get(self._k(self._keys.heartbeat, record_id)))
        return float(raw) if raw is not None else None

    # --- cancellation ---------------------------------------------------------------
    def request_cancel(self, record_id: str) -> None:
        self._r.set(self._k(self._keys.cancelled, record_id), "1", ex=RECORD_TTL_SEC)

    def is_cancelled(self, record_id: str) -> bool:
        return bool(self._r.exists(self._k(self._keys.cancelled, record_id)))

    # --- progress and artifact pointer ----------------------------------------------
    def set_progress(self, record_id: str, progress_json: str) -> None:
        self._r.set(self._k(self._keys.progress, record_id), progress_json, ex=RECORD_TTL_SEC)

    def progress(self, record_id: str) -> str | None:
        return as_str(self._r.get(self._k(self._keys.progress, record_id)))

    def set_eval(self, record_id: str, eval_json: str) -> None:
        self._r.set(self._k(self._keys.eval, record_id), eval_json, ex=RECORD_TTL_SEC)

    def eval(self, record_id: str) -> str | None:
        return as_str(self._r.get(self._k(self._keys.eval, record_id)))

    def set_file_id(self, record_id: str, file_id: str) -> None:
        self._r.set(self._k(self._keys.file_id, record_id), file_id, ex=RECORD_TTL_SEC)

    def file_id(self, record_id: str) -> str | None:
        return as_str(self._r.get(self._k(self._keys.file_id, record_id)))

    def clear_file_id(self, record_id: str) -> None:
        self._r.delete(self._k(self._keys.file_id, record_id))
