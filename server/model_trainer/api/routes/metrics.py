"""`GET /metrics` for Prometheus (api/metrics.py): an admin key, as `X-API-Key` or as
`Authorization: Bearer` (what Prometheus's `authorization` scrape setting sends)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from model_trainer.api.auth import Me
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import error_responses
from model_trainer.api.metrics import scrape
from model_trainer.errors import AppError, ErrorCode

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={**error_responses(403), 200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(ctx: Ctx, who: Me) -> Response:
    """Jobs, queues, workers, running runs' tokens/s, checkpoint upload failures and HTTP
    requests of the whole system, read from Redis (any replica answers the same)."""
    if not who.admin:
        raise AppError(ErrorCode.FORBIDDEN, "the metrics are the operator's: use an admin key")
    body = await run_in_threadpool(scrape, ctx.settings, ctx.redis)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
