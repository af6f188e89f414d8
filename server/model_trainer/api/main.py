"""The API app factory, served by `hypercorn 'model_trainer.api.main:create_app()'`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from redis import Redis

from model_trainer.api.deps import ApiContext, require_api_key
from model_trainer.api.errors import VOCABULARY
from model_trainer.api.routes import health, runs, tokenizers
from model_trainer.databank.client import DataBankClient
from model_trainer.jobs.queue import RQJobQueue
from model_trainer.settings import Settings, load_settings
from service_common.error_bodies import install_error_bodies
from service_common.jsonlog import setup_logging


def build_context(settings: Settings) -> ApiContext:
    # Short timeouts: a readiness probe must answer "degraded", not hang, when Redis is gone.
    redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
    )
    key = settings.app.data_bank_api_key
    databank = DataBankClient(
        settings.app.data_bank_api_url, key.get_secret_value() if key else None
    )
    return ApiContext(settings, redis, RQJobQueue(redis, settings.rq), databank)


def create_app(ctx: ApiContext | None = None) -> FastAPI:
    if ctx is None:
        settings = load_settings()
        setup_logging(settings.logging.level, service="api")
        ctx = build_context(settings)
    context = ctx

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        context.redis.close()
        context.databank.close()

    app = FastAPI(title="Model Trainer", version="0.1.0", lifespan=lifespan)
    app.state.ctx = context
    install_error_bodies(app, VOCABULARY)
    app.include_router(health.router)
    protected = [Depends(require_api_key)]
    for router in (tokenizers.router, runs.router):
        app.include_router(router, dependencies=protected)
    return app
