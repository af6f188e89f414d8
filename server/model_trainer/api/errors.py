"""The API's error vocabulary on the shared error body: `{code, message, request_id}`.

The body, the handlers and the request-id middleware (X-Request-ID, access log, the
last-resort 500) are `service_common`'s; this module gives them the API's vocabulary: its
ErrorCode, AppError, and validation errors answered 422 with `details` (one FieldError per
field). It adds the API's own answers on top: Redis unreachable is a 503
(`SERVICE_UNAVAILABLE`), never a 500, and `FieldsInvalid` is a 422 with `details` raised by
services, not by request parsing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from starlette.responses import Response

from model_trainer.errors import AppError, ErrorCode
from service_common.error_bodies import ErrorVocabulary, error_response
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.api")


class FieldError(BaseModel):
    """One entry of a 422's `details`: which field, what is wrong with it."""

    model_config = ConfigDict(extra="forbid")

    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API (for the OpenAPI document; handlers build it)."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    request_id: str | None
    details: list[FieldError] | None = None


class FieldsInvalid(AppError):
    """A request that parsed but that a service refuses field by field: 422 with `details`."""

    def __init__(self, message: str, details: Sequence[FieldError]) -> None:
        super().__init__(ErrorCode.VALIDATION_ERROR, message, 422)
        self.details = list(details)


# The answer when Redis (records, queue) cannot be reached: clients retry, probes see 503.
REDIS_UNAVAILABLE_MESSAGE = "Redis is unavailable; try again shortly"
REDIS_RETRY_AFTER_SEC = 5


def _validation_response(exc: RequestValidationError) -> Response:
    details: list[FieldError] = []
    for err in exc.errors():
        loc = err.get("loc", ())
        # Drop the "body"/"query" prefix: clients want the field's own name.
        parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
        details.append(
            FieldError(
                field=".".join(parts) or "body",
                message=str(err.get("msg", "invalid")),
                type=str(err.get("type", "value_error")),
            )
        )
    fields = ", ".join(d.field for d in details)
    return error_response(
        422, ErrorCode.VALIDATION_ERROR, f"invalid request: check {fields}", details=details
    )


# Pass to `service_common.error_bodies.install_error_bodies`.
VOCABULARY = ErrorVocabulary(
    log=log,
    codes=ErrorCode,
    error_type=AppError,
    fallback_code=ErrorCode.BAD_REQUEST,
    internal_error=ErrorCode.INTERNAL_ERROR,
    internal_message="internal error; see the server logs",
    validation_response=_validation_response,
)


def install_api_error_handlers(app: FastAPI) -> None:
    """The API's answers beyond the shared vocabulary; call after `install_error_bodies`."""

    async def redis_unavailable(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RedisError):
            raise exc
        log.warning(
            "%s %s -> 503: redis unavailable: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            extra=log_fields("redis_unavailable", error_code=ErrorCode.SERVICE_UNAVAILABLE.value),
        )
        return error_response(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            REDIS_UNAVAILABLE_MESSAGE,
            headers={"Retry-After": str(REDIS_RETRY_AFTER_SEC)},
        )

    async def fields_invalid(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, FieldsInvalid):
            raise exc
        log.info(
            "%s %s -> %s: %s",
            request.method,
            request.url.path,
            exc.status,
            exc.message,
            extra=log_fields("request_rejected", error_code=exc.code.value),
        )
        return error_response(exc.status, exc.code, exc.message, details=exc.details)

    # Handlers are found by the exception's class, most specific first: a RedisError of any
    # kind (ConnectionError, TimeoutError, BusyLoadingError...) lands here, a FieldsInvalid
    # here rather than in the shared AppError handler.
    app.add_exception_handler(RedisError, redis_unavailable)
    app.add_exception_handler(FieldsInvalid, fields_invalid)


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """`responses=` for a route or router: these statuses answer the shared error body."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS.get(status, "error")}
        for status in statuses
    }


_DESCRIPTIONS = {
    401: "missing or invalid X-API-Key",
    404: "unknown id",
    409: "conflicts with the current state",
    422: "invalid request (details name the fields)",
    503: "Redis or Data Bank is unavailable; try again shortly",
}
