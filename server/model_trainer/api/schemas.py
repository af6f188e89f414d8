"""Response bodies of the tokenizer and run routes, built from the store's typed records."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from model_trainer.store.records import EvalInfo, Record, RunProgress, Status, TokenizerSummary

__all__ = ["EvalInfo", "RunProgress"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerAccepted(_Body):
    tokenizer_id: str
    job_id: str
    status: Status


class TokenizerInfo(_Body):
    tokenizer_id: str
    status: Status
    message: str | None = None
    created_at: float | None = None
    last_heartbeat_ts: float | None = None
    request: dict[str, JsonValue] | None = None
    # Filled when the job is done: holdout stats and timings as the worker reported them.
    stats: dict[str, JsonValue] | None = None
    timings: dict[str, float] | None = None
    file_id: str | None = None

    @classmethod
    def from_record(cls, record: Record[TokenizerSummary]) -> TokenizerInfo:
        summary = record.progress
        return cls(
            tokenizer_id=record.id,
            status=record.status,
            message=record.message,
            created_at=record.meta.created_at if record.meta else None,
            last_heartbeat_ts=record.last_heartbeat_ts,
            request=record.meta.request if record.meta else None,
            stats=summary.stats if summary else None,
            timings=summary.timings if summary else None,
            file_id=record.file_id,
        )


class Page(_Body):
    offset: int
    limit: int
    total: int


class TokenizerList(_Body):
    items: list[TokenizerInfo]
    page: Page


class RunAccepted(_Body):
    run_id: str
    job_id: str
    status: Status


class RunInfo(_Body):
    run_id: str
    status: Status
    message: str | None = None
    created_at: float | None = None
    last_heartbeat_ts: float | None = None
    progress: RunProgress = Field(default_factory=RunProgress)
    request: dict[str, JsonValue] | None = None
    file_id: str | None = None

    @classmethod
    def from_record(cls, record: Record[RunProgress]) -> RunInfo:
        return cls(
            run_id=record.id,
            status=record.status,
            message=record.message,
            created_at=record.meta.created_at if record.meta else None,
            last_heartbeat_ts=record.last_heartbeat_ts,
            progress=record.progress or RunProgress(),
            request=record.meta.request if record.meta else None,
            file_id=record.file_id,
        )


class RunList(_Body):
    items: list[RunInfo]
    page: Page


class LogLines(_Body):
    run_id: str
    lines: list[dict[str, JsonValue]]


class MetricsBody(_Body):
    run_id: str
    points: list[dict[str, float | int | None]]


class EvalAccepted(_Body):
    run_id: str
    eval_id: str
    job_id: str
    status: Status


class ArtifactPointer(_Body):
    """Where in Data Bank a run's or tokenizer's tarball lives (clients download it there)."""

    storage: Literal["data-bank"] = "data-bank"
    file_id: str


def json_object(raw: str | None) -> dict[str, JsonValue]:
    """A JSON object stored in Redis, or {} when absent or not an object."""
    if not raw:
        return {}
    value: JsonValue = json.loads(raw)
    return value if isinstance(value, dict) else {}
