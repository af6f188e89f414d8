"""`/runs`: submit, status, list, cancel, logs (tail and SSE), metrics, evaluation, artifact,
checkpoints, text generation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import Response, StreamingResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from model_trainer.api import services
from model_trainer.api.auth import Me, Principal
from model_trainer.api.callers import LeasedStream, disconnected
from model_trainer.api.comparison import compare_runs as comparison_of
from model_trainer.api.deps import Ctx, live_workers
from model_trainer.api.errors import REDIS_UNAVAILABLE_MESSAGE, error_responses, log
from model_trainer.api.generation import GenerateRequest, GenerateResponse
from model_trainer.api.ids import LastEventId, RunId, check_run_id
from model_trainer.api.schemas import (
    MAX_COMPARED,
    ArtifactPointer,
    CheckpointList,
    EvalAccepted,
    EvaluateBody,
    ListQuery,
    LogLines,
    MetricsBody,
    ResumeBody,
    RunAccepted,
    RunComparison,
    RunInfo,
    RunList,
    Sample,
    TrainRequest,
    WebhookDeliveries,
    json_object,
    model_response,
)
from model_trainer.errors import AppError, ErrorCode, NotFoundError
from model_trainer.jobs.queue import run_queue_name
from model_trainer.store.checkpoints import read_checkpoints
from model_trainer.store.records import EvalInfo, Record, RunProgress, Status
from model_trainer.store.runlog import RunLogReader
from model_trainer.training.config import Device
from service_common.jsonlog import request_id_var

router = APIRouter(prefix="/runs", tags=["runs"])

SSE_POLL_SEC = 0.5
SSE_KEEPALIVE_SEC = 15.0


@router.post(
    "/train", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409, 422)
)
def train_run(config: TrainRequest, ctx: Ctx, who: Me) -> RunAccepted:
    """A new run. With `from_run_id` it starts from that run's checkpoint `from_checkpoint`
    (`last` by default, `best`, or a step): 404 if the run is unknown, 409 if it has no such
    checkpoint, 422 if its model (family, architecture, max_seq_len, tokenizer) differs."""
    return services.submit_run(ctx, config, who)


@router.get("", response_model=RunList)
def list_runs(ctx: Ctx, who: Me, query: Annotated[ListQuery, Depends()]) -> Response:
    ids, total = query.ids(ctx.runs, who.scope)
    records = [r for r in ctx.runs.records(ids) if r is not None]
    seen = _LiveWorkers(ctx)
    return model_response(
        RunList(items=[_info(ctx, r, seen) for r in records], page=query.page(total))
    )


@router.get("/compare", responses=error_responses(404, 422))
async def compare_runs(
    ctx: Ctx,
    who: Me,
    http: Request,
    run_id: Annotated[
        list[str],
        Query(
            min_length=2,
            max_length=MAX_COMPARED,
            description="the runs, in the order to show them (repeat the parameter)",
        ),
    ],
    prompt: Annotated[
        str | None,
        Query(max_length=2000, description="one sample of each completed run's model"),
    ] = None,
    max_new_tokens: Annotated[int, Query(ge=1, le=256)] = 48,
) -> RunComparison:
    """Runs side by side: each one's loss curves (against step, tokens seen and seconds of
    training), the settings that differ, its final figures (validation loss, bits/char,
    perplexity, tokens/s, seconds of training) and, with `prompt`, one sample of each
    completed run's model (seed 0, so the same runs give the same text). 404 when any run
    is unknown (or not the caller's to see)."""
    for given in run_id:
        check_run_id(given)
    latest = {
        r: await run_in_threadpool(services.latest_evaluation, ctx, r)
        for r in dict.fromkeys(run_id)
    }
    comparison = await run_in_threadpool(comparison_of, ctx, run_id, who, latest)
    if prompt is None:
        return comparison
    for run in comparison.runs:
        run.sample = await _sample(ctx, run.run_id, prompt, max_new_tokens, who, http)
    return comparison


async def _sample(
    ctx: Ctx, run_id: str, prompt: str, max_new_tokens: int, who: Principal, http: Request
) -> Sample:
    request = GenerateRequest(prompt=prompt, max_new_tokens=max_new_tokens, seed=0)
    try:
        ref = await run_in_threadpool(services.resolve_generation_model, ctx, run_id, request, who)
        answer = await ctx.generation.generate(ref, request, disconnected(http))
    except AppError as exc:
        return Sample(prompt=prompt, note=exc.message)
    return Sample(prompt=prompt, text=answer.samples[0] if answer.samples else "")


@router.get("/{run_id}", response_model=RunInfo, responses=error_responses(404))
def get_run(run_id: RunId, ctx: Ctx, who: Me) -> Response:
    return model_response(_info(ctx, _require_run(ctx, run_id, who)))


@router.post(
    "/{run_id}/cancel", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409)
)
def cancel_run(run_id: RunId, ctx: Ctx, who: Me) -> RunInfo:
    services.cancel_run(ctx, _require_run(ctx, run_id, who))
    return _info(ctx, _require_run(ctx, run_id, who))


@router.post(
    "/{run_id}/pause", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409)
)
def pause_run(run_id: RunId, ctx: Ctx, who: Me) -> RunInfo:
    """The run checkpoints at its next step and waits `paused`, holding no worker and using
    no attempt (a queued run is paused at once); `POST /runs/{id}/resume` continues it.
    409 if it has ended."""
    services.pause_run(ctx, _require_run(ctx, run_id, who))
    return _info(ctx, _require_run(ctx, run_id, who))


@router.post(
    "/{run_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404, 409, 422),
)
def resume_run(run_id: RunId, ctx: Ctx, who: Me, body: ResumeBody | None = None) -> RunInfo:
    """Queue a paused run again: it continues from the checkpoint it paused at, its curve and
    events continuing. With a budget (`max_steps`, `num_epochs` or `max_train_seconds`, of
    the run's own kind and larger) it trains further than first asked. 409 if not paused."""
    services.resume_run(ctx, _require_run(ctx, run_id, who), body or ResumeBody(), who)
    return _info(ctx, _require_run(ctx, run_id, who))


@router.get("/{run_id}/checkpoints", responses=error_responses(404))
def run_checkpoints(run_id: RunId, ctx: Ctx, who: Me) -> CheckpointList:
    """The run's checkpoints in Data Bank, oldest first (empty until its first one)."""
    _require_run(ctx, run_id, who)
    return CheckpointList.from_index(run_id, read_checkpoints(ctx.redis, run_id))


@router.get("/{run_id}/logs", responses=error_responses(404))
def run_logs(
    run_id: RunId, ctx: Ctx, who: Me, tail: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> LogLines:
    _require_run(ctx, run_id, who)
    lines = RunLogReader(ctx.redis).tail(run_id, tail)
    return LogLines(run_id=run_id, lines=[json_object(line.line) for line in lines])


@router.get(
    "/{run_id}/logs/stream",
    response_class=StreamingResponse,
    responses=error_responses(400, 404, 429),
)
def stream_run_logs(
    run_id: RunId,
    ctx: Ctx,
    who: Me,
    last_event_id: LastEventId,
    request: Request,
) -> StreamingResponse:
    """Server-sent events: one `data:` per log line, `id:` = its stream id; ends with the run
    (`event: end`), with `event: unavailable` when Redis goes away mid-stream, or with
    `event: reconnect` after `limits.sse_max_lifetime_sec` (reconnect with Last-Event-ID).
    With `Last-Event-ID` it resumes after that event; one that is not a stream id is a 400.
    A key has at most `limits.sse_max_per_caller` streams open: 429 past that."""
    _require_run(ctx, run_id, who)
    reader = RunLogReader(ctx.redis)
    lifetime = ctx.settings.limits.sse_max_lifetime_sec

    async def lines_then_end(last: str) -> AsyncIterator[str]:
        quiet_since = started = time.monotonic()
        while True:
            if time.monotonic() - started >= lifetime:
                body = {
                    "message": f"this stream reached its maximum lifetime ({lifetime:g} s, "
                    "limits.sse_max_lifetime_sec): reconnect with Last-Event-ID",
                    "last_event_id": last,
                }
                yield f"event: reconnect\ndata: {json.dumps(body)}\n\n"
                return
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

    async def events() -> AsyncIterator[str]:
        try:
            async for event in lines_then_end(last_event_id):
                yield event
        except RedisError as exc:
            # Headers are sent: no 503 now. Say why the stream ends; the client reconnects
            # with Last-Event-ID and gets a 503 until Redis is back.
            log.warning("log stream of %s ended: redis unavailable: %s", run_id, exc)
            body = {
                "code": ErrorCode.SERVICE_UNAVAILABLE.value,
                "message": REDIS_UNAVAILABLE_MESSAGE,
                "request_id": request_id_var.get(),
            }
            yield f"event: unavailable\ndata: {json.dumps(body)}\n\n"

    # Taken last: from here on only the response gives the slot back.
    give_back = ctx.streams.take(who.name)
    return LeasedStream(
        events(),
        give_back,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{run_id}/metrics", responses=error_responses(404))
def run_metrics(
    run_id: RunId,
    ctx: Ctx,
    who: Me,
    after_step: Annotated[
        int | None, Query(ge=0, description="only points past this step (live charts)")
    ] = None,
) -> MetricsBody:
    _require_run(ctx, run_id, who)
    points = RunLogReader(ctx.redis).metrics(run_id)
    if after_step is not None:
        points = [p for p in points if p.step > after_step]
    # val_loss is each point's own: null where no validation ran at that step.
    return MetricsBody(
        run_id=run_id,
        points=[{**p.model_dump(exclude_none=True), "val_loss": p.val_loss} for p in points],
    )


@router.post(
    "/{run_id}/evaluate",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404, 409),
)
def evaluate_run(run_id: RunId, body: EvaluateBody, ctx: Ctx, who: Me) -> EvalAccepted:
    return services.submit_evaluation(ctx, _require_run(ctx, run_id, who), body, who)


@router.get("/{run_id}/webhooks", responses=error_responses(404))
def run_webhooks(run_id: RunId, ctx: Ctx, who: Me) -> WebhookDeliveries:
    """The webhook deliveries of the run's end and of its evaluations' ends, oldest first,
    each with its attempts (status code or error, when, how long)."""
    _require_run(ctx, run_id, who)
    return services.webhook_deliveries(ctx, run_id)


@router.get("/{run_id}/eval", responses=error_responses(404))
def get_run_eval(run_id: RunId, ctx: Ctx, who: Me) -> EvalInfo:
    _require_run(ctx, run_id, who)
    info = services.latest_evaluation(ctx, run_id)
    if info is None:
        raise NotFoundError(f"run {run_id!r} has no evaluation yet")
    return info


@router.get("/{run_id}/artifact", responses=error_responses(404))
def run_artifact(run_id: RunId, ctx: Ctx, who: Me) -> ArtifactPointer:
    run = ctx.runs.record(run_id, who.scope)
    file_id = run.file_id if run else None
    if file_id is None:
        raise NotFoundError(f"no artifact for run {run_id!r} (unknown, or not finished)")
    return ArtifactPointer(file_id=file_id)


@router.post("/{run_id}/generate", responses=error_responses(404, 409, 422))
async def generate_text(
    run_id: RunId, request: GenerateRequest, ctx: Ctx, who: Me, http: Request
) -> GenerateResponse:
    """Text from the run's model: its artifact once completed, or one of its checkpoints
    (`checkpoint`: `last`, `best` or a step), even while it runs. The model is fetched from
    Data Bank once and kept in memory (least recently used out). 404: unknown run; 409: no
    artifact (not completed) and no checkpoint asked, or no such checkpoint; 422: a bad
    body (`top_k` above the vocabulary included); 503: every generation thread busy and the
    queue full, or Data Bank unavailable. A client that disconnects stops its generation."""
    ref = await run_in_threadpool(services.resolve_generation_model, ctx, run_id, request, who)
    return await ctx.generation.generate(ref, request, disconnected(http))


def _require_run(ctx: Ctx, run_id: str, who: Principal) -> Record[RunProgress]:
    """The run, if `who` may see it; else 404, as for an unknown id."""
    record = ctx.runs.record(run_id, who.scope)
    if record is None:
        raise NotFoundError(f"unknown run {run_id!r}")
    return record


class _LiveWorkers:
    """Live workers per queue, counted once per answer (a list has many runs, few queues)."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._counts: dict[str, int] = {}

    def count(self, queue: str) -> int:
        if queue not in self._counts:
            self._counts[queue] = live_workers(self._ctx, queue)
        return self._counts[queue]


def _info(ctx: Ctx, record: Record[RunProgress], seen: _LiveWorkers | None = None) -> RunInfo:
    """The run, with its queue; a queued run that no live worker serves says so (a `cuda`
    run waits for a GPU worker: it is accepted and starts when one comes)."""
    request = record.meta.request if record.meta else None
    device = request.get("device") if request else None
    queue = run_queue_name(
        ctx.settings.rq, Device(device) if isinstance(device, str) else Device.AUTO
    )
    waiting_for = None
    if record.status is Status.QUEUED and (seen or _LiveWorkers(ctx)).count(queue) == 0:
        ttl = ctx.settings.recovery.worker_presence_ttl_sec
        waiting_for = f"no live worker serves queue {queue!r} (none seen in the last {ttl:g} s)"
    return RunInfo.from_record(record, queue=queue, waiting_for=waiting_for)
