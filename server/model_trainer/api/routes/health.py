"""Liveness and readiness. No API key: platforms probe these."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from rq import Queue, Worker

from model_trainer.api.deps import Ctx

router = APIRouter(tags=["health"])


class HealthBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = "ok"


class ReadyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ready", "degraded"]
    reason: str | None = None


@router.get("/healthz", response_model=HealthBody)
def healthz() -> HealthBody:
    return HealthBody()


@router.get("/readyz", response_model=ReadyBody, responses={503: {"model": ReadyBody}})
def readyz(ctx: Ctx) -> JSONResponse:
    reason = _not_ready_reason(ctx)
    if reason is None:
        return JSONResponse(ReadyBody(status="ready").model_dump(exclude_none=True))
    return JSONResponse(ReadyBody(status="degraded", reason=reason).model_dump(), status_code=503)


def _not_ready_reason(ctx: Ctx) -> str | None:
    try:
        ctx.redis.ping()
        queue = Queue(ctx.settings.rq.queue_name, connection=ctx.redis)
        workers = Worker.count(connection=ctx.redis, queue=queue)
    except (RedisError, OSError) as exc:
        return f"redis unreachable: {type(exc).__name__}"
    if workers == 0:
        return f"no worker registered for queue {ctx.settings.rq.queue_name!r}"
    # Every job reads its input from and writes its output to Data Bank.
    return ctx.databank.not_ready_reason()
