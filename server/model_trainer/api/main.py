"""The API app factory, served by `hypercorn 'model_trainer.api.main:create_app()'`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI
from hypercorn.middleware import ProxyFixMiddleware

from model_trainer.api.auth import check_can_start, current_principal
from model_trainer.api.dashboard import dashboard_router
from model_trainer.api.deps import ApiContext
from model_trainer.api.errors import (
    VOCABULARY,
    document_validation_errors,
    error_responses,
    install_api_error_handlers,
)
from model_trainer.api.hosts import TrustedHosts
from model_trainer.api.limits import BodyCap, BodySizeLimit
from model_trainer.api.metrics import CountRequests, RequestCounts
from model_trainer.api.routes import (
    completions,
    corpora,
    health,
    me,
    metrics,
    models,
    runs,
    sweeps,
    tokenizers,
)
from model_trainer.connections import DataBankUse, RedisUse, databank_client, redis_client
from model_trainer.jobs.queue import RQJobQueue
from model_trainer.settings import Settings, load_settings
from model_trainer.webhooks.records import WebhookStore
from model_trainer.webhooks.sender import WebhookSender
from service_common.docs_page import docs_router
from service_common.error_bodies import install_error_bodies
from service_common.jsonlog import setup_logging


def build_context(settings: Settings) -> ApiContext:
    redis = redis_client(settings.redis_url, RedisUse.API)
    databank = databank_client(
        settings.app.data_bank_api_url,
        settings.app.data_bank_api_key,
        DataBankUse.API,
        request_timeout_sec=settings.limits.remote_timeout_sec,
    )
    return ApiContext(settings, redis, RQJobQueue(redis, settings.rq), databank)


class TrainerApi(FastAPI):
    """FastAPI, with an OpenAPI document whose 422s are this API's (see
    `errors.document_validation_errors`)."""

    def openapi(self) -> dict[str, object]:
        if self.openapi_schema:
            return self.openapi_schema
        # FastAPI keeps the document it makes (openapi_schema): amended once, in place.
        schema = super().openapi()
        document_validation_errors(schema)
        return schema


def create_app(ctx: ApiContext | None = None) -> FastAPI:
    if ctx is None:
        settings = load_settings()
        setup_logging(settings.logging.level, service="api")
        ctx = build_context(settings)
    context = ctx
    security = context.settings.security
    # Refuses to build an app without a key, unless anonymous use was asked for.
    auth = check_can_start(security)

    http_metrics = RequestCounts()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # /readyz answers what this task last found (api/readiness.py).
        probe = asyncio.create_task(context.readiness.run(lambda: health.not_ready_reason(context)))
        # Webhooks go out from every API process (webhooks/sender.py); redirects are not
        # followed (a 3xx is a failed attempt: a redirect could lead past the address check).
        http = httpx.Client(follow_redirects=False)
        sender = WebhookSender(
            WebhookStore(context.redis), context.store, context.settings.webhooks, http
        )
        sender.start()
        flusher = asyncio.create_task(http_metrics.flush_every(context.redis))
        yield
        flusher.cancel()
        http_metrics.flush(context.redis)
        sender.stop()
        http.close()
        probe.cancel()
        context.generation.close()
        context.redis.close()
        context.databank.close()

    # `/docs` is our own page (docs_page.py): FastAPI's loads Swagger UI from a CDN.
    app = TrainerApi(
        title="Model Trainer", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.ctx = context
    app.state.auth = auth
    # Innermost (added first): it sees the matched route's template.
    app.add_middleware(CountRequests, counts=http_metrics)
    # Inside the request-id middleware (added by install_error_bodies, outermost): a 413
    # carries the request id and is in the access log.
    limits = context.settings.limits
    # The corpus upload streams its body to disk: it has its own, larger cap.
    upload_cap = BodyCap(limits.corpus_upload_max_bytes, "limits.corpus_upload_max_bytes")
    model_cap = BodyCap(limits.model_upload_max_bytes, "limits.model_upload_max_bytes")
    app.add_middleware(
        BodySizeLimit,
        max_bytes=limits.max_body_bytes,
        per_path={corpora.UPLOAD_PATH: upload_cap, models.UPLOAD_PATH: model_cap},
    )
    # Outside the body cap: a request for a Host we do not answer gets nothing else.
    app.add_middleware(TrustedHosts, patterns=security.trusted_hosts)
    install_error_bodies(app, VOCABULARY)
    install_api_error_handlers(app)
    if security.proxy_hops:
        # Outermost: the request-id middleware's access log and the wrong-key throttle see
        # the client's address, not the proxy's.
        app.add_middleware(ProxyFixMiddleware, mode="legacy", trusted_hops=security.proxy_hops)
    # The host check (400) and the body cap (413) answer on any route, before routing.
    app.include_router(health.router, responses=error_responses(400, 413))
    app.include_router(docs_router(app.title, app.openapi_url or "/openapi.json"))
    # Public, like /docs: the pages hold no data; their script sends the key with each call.
    app.include_router(dashboard_router())
    protected = [Depends(current_principal)]
    routers = (
        me.router,
        corpora.router,
        models.router,
        tokenizers.router,
        runs.router,
        sweeps.router,
        metrics.router,
        completions.router,
    )
    for router in routers:
        # Every protected route may also answer 401 (no key, or a wrong one), 429 (too many
        # wrong keys from this address; submissions: the key's quotas) and 503 (Redis is
        # down). 401 comes before anything but the host check and the body cap; 422 is
        # documented where a body or query parameter can be refused
        # (`document_validation_errors`).
        app.include_router(
            router, dependencies=protected, responses=error_responses(400, 401, 413, 429, 503)
        )
    return app
