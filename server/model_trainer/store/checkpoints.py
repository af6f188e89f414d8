"""A run's checkpoints in Data Bank: the index in Redis (its record's `checkpoints` field).

The owner of a run uploads each checkpoint file to Data Bank and then rewrites this index
(a fenced write), so the index only ever names blobs that are fully uploaded. `last`
checkpoints are complete training states (resume from them); a `best` one holds the
weights with the lowest validation loss so far. Superseded blobs are deleted from Data Bank
after the index stops naming them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from redis import Redis

from model_trainer.store.fencing import Command
from model_trainer.store.keys import JobField, job_key
from model_trainer.store.records import as_str, hset

CheckpointKind = Literal["last", "best"]


class CheckpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    kind: CheckpointKind
    file_id: str  # the Data Bank id: the SHA-256 of the file's bytes
    sha256: str
    size: int
    val_loss: float | None
    created_at: float
    worker: str  # who wrote it (the lease token's worker part)


class CheckpointIndex(BaseModel):
    """Newest last; at most one `best` entry."""

    model_config = ConfigDict(extra="forbid")

    entries: list[CheckpointEntry] = Field(default_factory=list)

    def latest(self) -> CheckpointEntry | None:
        lasts = [e for e in self.entries if e.kind == "last"]
        return max(lasts, key=lambda e: e.step) if lasts else None

    def best(self) -> CheckpointEntry | None:
        bests = [e for e in self.entries if e.kind == "best"]
        return bests[-1] if bests else None

    def find(self, which: str) -> CheckpointEntry | None:
        """`last`, `best`, or a step number (a `last` checkpoint at that step)."""
        if which == "last":
            return self.latest()
        if which == "best":
            return self.best()
        step = int(which)
        return next((e for e in self.entries if e.kind == "last" and e.step == step), None)

    def with_entry(
        self, entry: CheckpointEntry, keep_last: int
    ) -> tuple[CheckpointIndex, list[str]]:
        """The index with `entry` added, and the file ids it no longer names (to delete)."""
        if entry.kind == "best":
            kept = [e for e in self.entries if e.kind != "best"] + [entry]
        else:
            lasts = [e for e in self.entries if e.kind == "last" and e.step < entry.step]
            lasts = [*lasts, entry][-keep_last:]
            kept = lasts + [e for e in self.entries if e.kind == "best"]
        kept.sort(key=lambda e: (e.step, e.kind))
        named = {e.file_id for e in kept}
        dropped = sorted({e.file_id for e in self.entries} - named)
        return CheckpointIndex(entries=kept), dropped


def read_checkpoints(redis: Redis, run_id: str) -> CheckpointIndex:
    raw = as_str(redis.hget(job_key(run_id), JobField.CHECKPOINTS.value))
    return CheckpointIndex.model_validate_json(raw) if raw else CheckpointIndex()


def index_commands(run_id: str, index: CheckpointIndex) -> tuple[Command, ...]:
    return hset(run_id, (JobField.CHECKPOINTS, index.model_dump_json()))
