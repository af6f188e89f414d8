"""Response bodies of the tokenizer and run routes."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from model_trainer.payloads import EvalInfo, RunProgress
from model_trainer.status_store import Status

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


def json_object(raw: str | None) -> dict[str, JsonValue]:
    """A JSON object stored in Redis, or {} when absent or not an object."""
    if not raw:
        return {}
    value: JsonValue = json.loads(raw)
    return value if isinstance(value, dict) else {}
