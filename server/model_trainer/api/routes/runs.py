"""`/runs`: submit, status, list, cancel, logs (tail and SSE), metrics, evaluation, artifact."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from model_trainer.api import services
from model_trainer.api.deps import Ctx
from model_trainer.api.schemas import (
    ArtifactPointer,
    EvalAccepted,
    LogLines,
    MetricsBody,
    Page,
    RunAccepted,
    RunInfo,
    RunList,
    json_object,
)
from model_trainer.errors import NotFoundError
from model_trainer.jobs.payloads import EvaluateRequest
from model_trainer.store.records import EvalInfo, Record, RunProgress, Status
from model_trainer.store.runlog import RunLogReader
from model_trainer.training.config import ModelTrainConfig

router = APIRouter(prefix="/runs", tags=["runs"])

SSE_POLL_SEC = 0.5
SSE_KEEPALIVE_SEC = 15.0


@router.post("/train", status_code=status.HTTP_202_ACCEPTED)
def train_run(config: ModelTrainConfig, ctx: Ctx) -> RunAccepted:
    return services.submit_run(ctx, config)


@router.get("")
def list_runs(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
) -> RunList:
    if status_filter is None:
        ids, total = ctx.runs.list_ids(offset, limit)
    else:
        matching = ctx.runs.ids_with_status(status_filter)
        ids, total = matching[offset : offset + limit], len(matching)
    records = [r for r in ctx.runs.records(ids) if r is not None]
    return RunList(
        items=[RunInfo.from_record(r) for r in records],
        page=Page(offset=offset, limit=limit, total=total),
    )


@router.get("/{run_id}")
def get_run(run_id: str, ctx: Ctx) -> RunInfo:
    return RunInfo.from_record(_require_run(ctx, run_id))


@router.post("/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
def cancel_run(run_id: str, ctx: Ctx) -> RunInfo:
    services.cancel_run(ctx, _require_run(ctx, run_id))
    return RunInfo.from_record(_require_run(ctx, run_id))


@router.get("/{run_id}/logs")
def run_logs(run_id: str, ctx: Ctx, tail: Annotated[int, Query(ge=1, le=10_000)] = 100) -> LogLines:
    _require_run(ctx, run_id)
    lines = RunLogReader(ctx.redis).tail(run_id, tail)
    return LogLines(run_id=run_id, lines=[json_object(line.line) for line in lines])


@router.get("/{run_id}/logs/stream", response_class=StreamingResponse)
def stream_run_logs(
    run_id: str,
    ctx: Ctx,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-sent events: one `data:` per log line, `id:` = its stream id; ends with the run."""
    _require_run(ctx, run_id)
    reader = RunLogReader(ctx.redis)

    async def events() -> AsyncIterator[str]:
        last = last_event_id or "0"
        quiet_since = time.monotonic()
        while True:
            lines = await run_in_threadpool(reader.after, run_id, last)
            for line in lines:
                last = line.id
                yield f"id: {line.id}\ndata: {line.line}\n\n"
            if lines:
                quiet_since = time.monotonic()
                continue
            current = await run_in_threadpool(ctx.runs.status, run_id)
            if current is None or current.terminal:
                # Drain once more: the last lines may have landed after our read.
                for line in await run_in_threadpool(reader.after, run_id, last):
                    yield f"id: {line.id}\ndata: {line.line}\n\n"
                yield f"event: end\ndata: {json.dumps({'status': str(current)})}\n\n"
                return
            if time.monotonic() - quiet_since >= SSE_KEEPALIVE_SEC:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL_SEC)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{run_id}/metrics")
def run_metrics(run_id: str, ctx: Ctx) -> MetricsBody:
    _require_run(ctx, run_id)
    points = RunLogReader(ctx.redis).metrics(run_id)
    return MetricsBody(run_id=run_id, points=[p.model_dump(exclude_none=True) for p in points])


@router.post("/{run_id}/evaluate", status_code=status.HTTP_202_ACCEPTED)
def evaluate_run(run_id: str, request: EvaluateRequest, ctx: Ctx) -> EvalAccepted:
    return services.submit_evaluation(ctx, _require_run(ctx, run_id), request)


@router.get("/{run_id}/eval")
def get_run_eval(run_id: str, ctx: Ctx) -> EvalInfo:
    _require_run(ctx, run_id)
    info = ctx.runs.eval(run_id)
    if info is None:
        raise NotFoundError(f"run {run_id!r} has no evaluation yet")
    return info


@router.get("/{run_id}/artifact")
def run_artifact(run_id: str, ctx: Ctx) -> ArtifactPointer:
    file_id = ctx.runs.file_id(run_id)
    if file_id is None:
        raise NotFoundError(f"no artifact for run {run_id!r} (unknown, or not finished)")
    return ArtifactPointer(file_id=file_id)


def _require_run(ctx: Ctx, run_id: str) -> Record[RunProgress]:
    record = ctx.runs.record(run_id)
    if record is None:
        raise NotFoundError(f"unknown run {run_id!r}")
    return record
