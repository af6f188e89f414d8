"""Liveness and readiness. No API key: platforms probe these.

`/healthz` touches nothing (the process answers). `/readyz` is ready when Redis answers, at
least one worker of our queue said it was alive within `recovery.worker_presence_ttl_sec`
(workers keep `trainer:workers:{queue}` current; RQ's own registry still lists workers that
died without cleaning up) and Data Bank is ready.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from model_trainer.api.deps import Ctx
from model_trainer.store.keys import workers_key

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
    queue = ctx.settings.rq.queue_name
    ttl = ctx.settings.recovery.worker_presence_ttl_sec
    try:
        live = int(ctx.redis.zcount(workers_key(queue), time.time() - ttl, "+inf"))
    except (RedisError, OSError) as exc:
        return f"redis unreachable: {type(exc).__name__}"
    if live == 0:
        return f"no live worker for queue {queue!r} (none seen in the last {ttl:g} s)"
    # Every job reads its input from and writes its output to Data Bank.
    return ctx.databank.not_ready_reason()
