"""Runs as the API shows them: the record and its attempt count, read with ONE MGET.

`StatusStore.records` reads a record's keys in one MGET; a run's `runs:attempts:{id}`
(store/keys.py) is not among them, and a second GET per request (per page item in a list)
would double the round trips. So the API reads runs here: the same record keys, spelled by
`RUN_KEYS`, plus the attempts key, in one MGET, parsed with the store's own models.

Keep `_FIELDS` and `_record` in step with `StatusStore._FIELDS` and `StatusStore._record`
(test_api_durable.py checks that both read the same record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from model_trainer.store.keys import RUN_KEYS, RunKeys
from model_trainer.store.records import (
    ErrorInfo,
    Record,
    RecordMeta,
    RunProgress,
    Status,
    as_str,
)

_FIELDS = ("status", "message", "meta", "heartbeat", "progress", "file_id", "error")


@dataclass(frozen=True)
class RunView:
    record: Record[RunProgress]
    # Failed attempts so far (0 until one fails); the worker and the reaper count them.
    attempts: int


def run_keys(run_id: str) -> list[str]:
    """The keys one run is read from, in the order `_parse` expects."""
    return [RUN_KEYS.key(getattr(RUN_KEYS, f), run_id) for f in _FIELDS] + [
        RunKeys.attempts(run_id)
    ]


def read_runs(redis: Redis, ids: Sequence[str]) -> list[RunView | None]:
    """The runs of `ids` in order (None for an unknown id), with one MGET."""
    if not ids:
        return []
    keys = [key for run_id in ids for key in run_keys(run_id)]
    raw = [as_str(v) for v in redis.mget(keys)]
    n = len(_FIELDS) + 1
    return [_parse(run_id, raw[j * n : (j + 1) * n]) for j, run_id in enumerate(ids)]


def read_run(redis: Redis, run_id: str) -> RunView | None:
    return read_runs(redis, [run_id])[0]


def _parse(run_id: str, values: list[str | None]) -> RunView | None:
    status, message, meta, heartbeat, progress, file_id, error, attempts = values
    if status is None:
        return None
    record = Record[RunProgress](
        id=run_id,
        status=Status(status),
        message=message,
        meta=RecordMeta.model_validate_json(meta) if meta else None,
        last_heartbeat_ts=float(heartbeat) if heartbeat else None,
        progress=RunProgress.model_validate_json(progress) if progress else None,
        file_id=file_id,
        error=ErrorInfo.model_validate_json(error) if error else None,
    )
    return RunView(record=record, attempts=int(attempts) if attempts else 0)
