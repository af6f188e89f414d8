"""Training runs: submit, status, list, cancel, logs (tail and SSE), metrics, evaluation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from model_trainer.api.deps import Ctx, artifact_available, require_corpus
from model_trainer.api.schemas import (
    EvalAccepted,
    EvalInfo,
    LogLines,
    MetricsBody,
    Page,
    RunAccepted,
    RunInfo,
    RunList,
    RunProgress,
    json_object,
)
from model_trainer.errors import ConflictError, NotFoundError
from model_trainer.job_queue import JobName
from model_trainer.payloads import EvaluateJob, EvaluateRequest, TrainJob
from model_trainer.runlog import RunLogReader
from model_trainer.status_store import Status
from model_trainer.training.config import ModelTrainConfig

router = APIRouter(tags=["runs"])

SSE_POLL_SEC = 0.5
SSE_KEEPALIVE_SEC = 15.0


@router.post("/runs/train", status_code=status.HTTP_202_ACCEPTED)
def train_run(config: ModelTrainConfig, ctx: Ctx) -> RunAccepted:
    tokenizer_status = ctx.tokenizers.status(config.tokenizer_id)
    if tokenizer_status is None:
        raise NotFoundError(f"unknown tokenizer_id {config.tokenizer_id!r}")
    if tokenizer_status is not Status.COMPLETED:
        raise ConflictError(
            f"tokenizer {config.tokenizer_id!r} is {tokenizer_status.value}, not completed: "
            "wait for it to finish (GET /tokenizers/{id})"
        )
    if not artifact_available(ctx, ctx.tokenizers.file_id(config.tokenizer_id)):
        raise ConflictError(
            f"the artifact of tokenizer {config.tokenizer_id!r} is not in Data Bank any more: "
            "train the tokenizer again (POST /tokenizers/train with the same request)"
        )
    require_corpus(ctx, config.corpus_file_id)
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    meta = json.dumps({"created_at": time.time(), "request": config.model_dump(mode="json")})
    ctx.runs.create(run_id, meta)
    job_id = ctx.queue.enqueue(
        JobName.TRAIN_MODEL, TrainJob(run_id=run_id, config=config), job_id=run_id
    )
    return RunAccepted(run_id=run_id, job_id=job_id, status=Status.QUEUED)


@router.get("/runs")
def list_runs(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
) -> RunList:
    if status_filter is None:
        ids, total = ctx.runs.list_ids(offset, limit)
        items = [r for r in (_run_info(ctx, i) for i in ids) if r is not None]
    else:
        matching = [i for i in ctx.runs.all_ids() if ctx.runs.status(i) is status_filter]
        total = len(matching)
        page_ids = matching[offset : offset + limit]
        items = [r for r in (_run_info(ctx, i) for i in page_ids) if r is not None]
    return RunList(items=items, page=Page(offset=offset, limit=limit, total=total))


@router.get("/runs/{run_id}")
def get_run(run_id: str, ctx: Ctx) -> RunInfo:
    return _require_run(ctx, run_id)


@router.post("/runs/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
def cancel_run(run_id: str, ctx: Ctx) -> RunInfo:
    run = _require_run(ctx, run_id)
    if run.status.terminal:
        raise ConflictError(f"run {run_id!r} is already {run.status.value}")
    ctx.runs.request_cancel(run_id)
    if run.status is Status.QUEUED:
        # Nobody is running it: cancel now; a worker that picks the job up skips it.
        ctx.runs.set_status(run_id, Status.CANCELLED, "cancelled before it started")
    return _require_run(ctx, run_id)


@router.get("/runs/{run_id}/logs")
def run_logs(run_id: str, ctx: Ctx, tail: Annotated[int, Query(ge=1, le=10_000)] = 100) -> LogLines:
    _require_run(ctx, run_id)
    lines = RunLogReader(ctx.redis).tail(run_id, tail)
    return LogLines(run_id=run_id, lines=[json_object(line.line) for line in lines])


@router.get("/runs/{run_id}/logs/stream", response_class=StreamingResponse)
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


@router.get("/runs/{run_id}/metrics")
def run_metrics(run_id: str, ctx: Ctx) -> MetricsBody:
    _require_run(ctx, run_id)
    points = RunLogReader(ctx.redis).metrics(run_id)
    return MetricsBody(run_id=run_id, points=[p.model_dump(exclude_none=True) for p in points])


@router.post("/runs/{run_id}/evaluate", status_code=status.HTTP_202_ACCEPTED)
def evaluate_run(run_id: str, request: EvaluateRequest, ctx: Ctx) -> EvalAccepted:
    run = _require_run(ctx, run_id)
    if run.status is not Status.COMPLETED or run.file_id is None:
        raise ConflictError(
            f"run {run_id!r} is {run.status.value}: only a completed run is evaluated"
        )
    if request.corpus_file_id is not None:
        require_corpus(ctx, request.corpus_file_id)
    current = _eval_info(ctx, run_id)
    if current is not None and not current.status.terminal:
        raise ConflictError(
            f"evaluation {current.eval_id} of run {run_id!r} is still {current.status}"
        )
    eval_id = f"eval-{uuid.uuid4().hex[:12]}"
    info = EvalInfo(
        run_id=run_id,
        eval_id=eval_id,
        status=Status.QUEUED,
        split=request.split,
        corpus_file_id=request.corpus_file_id,
    )
    ctx.runs.set_eval(run_id, info.model_dump_json())
    job = EvaluateJob(run_id=run_id, eval_id=eval_id, request=request)
    job_id = ctx.queue.enqueue(JobName.EVALUATE_MODEL, job, job_id=f"{run_id}-{eval_id}")
    return EvalAccepted(run_id=run_id, eval_id=eval_id, job_id=job_id, status=Status.QUEUED)


@router.get("/runs/{run_id}/eval")
def get_run_eval(run_id: str, ctx: Ctx) -> EvalInfo:
    _require_run(ctx, run_id)
    info = _eval_info(ctx, run_id)
    if info is None:
        raise NotFoundError(f"run {run_id!r} has no evaluation yet")
    return info


def _eval_info(ctx: Ctx, run_id: str) -> EvalInfo | None:
    raw = ctx.runs.eval(run_id)
    return EvalInfo.model_validate_json(raw) if raw else None


def _require_run(ctx: Ctx, run_id: str) -> RunInfo:
    info = _run_info(ctx, run_id)
    if info is None:
        raise NotFoundError(f"unknown run {run_id!r}")
    return info


def _run_info(ctx: Ctx, run_id: str) -> RunInfo | None:
    current = ctx.runs.status(run_id)
    if current is None:
        return None
    meta = json_object(ctx.runs.meta(run_id))
    raw_progress = ctx.runs.progress(run_id)
    created = meta.get("created_at")
    request = meta.get("request")
    return RunInfo(
        run_id=run_id,
        status=current,
        message=ctx.runs.message(run_id),
        created_at=float(created) if isinstance(created, int | float) else None,
        last_heartbeat_ts=ctx.runs.last_heartbeat(run_id),
        progress=RunProgress.model_validate_json(raw_progress) if raw_progress else RunProgress(),
        request=request if isinstance(request, dict) else None,
        file_id=ctx.runs.file_id(run_id),
    )
