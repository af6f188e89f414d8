"""Liveness and readiness. No API key: platforms probe these, and neither does any I/O.

`/healthz` touches nothing (the process answers). `/readyz` answers the last result of the
background probe (api/readiness.py, every `health.probe_interval_sec`): ready when Redis
answered, at least one worker of our queue said it was alive within
`recovery.worker_presence_ttl_sec` (workers keep `trainer:workers:{queue}` current; RQ's own
registry still lists workers that died without cleaning up) and Data Bank was ready. GPU
workers are optional: the answer counts those of the GPU queue (`gpu_workers`), and `cuda`
runs wait while there are none.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from model_trainer.api.deps import ApiContext, Ctx, live_workers

router = APIRouter(tags=["health"])


class HealthBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = "ok"


class ReadyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ready", "degraded"]
    reason: str | None = None
    # Live workers of the GPU queue (rq.gpu_queue_name); None when Redis did not answer.
    gpu_workers: int | None = None


# `async`: no thread-pool hop, so anonymous probes never queue behind (or ahead of) routes.
@router.get("/healthz", response_model=HealthBody)
async def healthz() -> HealthBody:
    return HealthBody()


@router.get("/readyz", response_model=ReadyBody, responses={503: {"model": ReadyBody}})
async def readyz(ctx: Ctx) -> JSONResponse:
    reason, gpu_workers = ctx.readiness.current()
    if reason is None:
        body = ReadyBody(status="ready", gpu_workers=gpu_workers)
        return JSONResponse(body.model_dump(exclude_none=True))
    body = ReadyBody(status="degraded", reason=reason, gpu_workers=gpu_workers)
    return JSONResponse(body.model_dump(), status_code=503)


def not_ready_reason(ctx: ApiContext) -> tuple[str | None, int | None]:
    """Why the API is not ready (None when it is), and the live GPU workers: what the
    background probe runs (blocking I/O, in its thread)."""
    queue = ctx.settings.rq.queue_name
    ttl = ctx.settings.recovery.worker_presence_ttl_sec
    try:
        live = live_workers(ctx, queue)
        gpu_workers = live_workers(ctx, ctx.settings.rq.gpu_queue_name)
    except (RedisError, OSError) as exc:
        return f"redis unreachable: {type(exc).__name__}", None
    if live == 0:
        return f"no live worker for queue {queue!r} (none seen in the last {ttl:g} s)", gpu_workers
    # Every job reads its input from and writes its output to Data Bank.
    return ctx.databank.not_ready_reason(), gpu_workers
