"""The API's error vocabulary on the shared error body: `{code, message, request_id}`.

The body, the handlers and the request-id middleware (X-Request-ID, access log, the
last-resort 500) are `service_common`'s; this module gives them the API's vocabulary: its
ErrorCode, and validation errors answered 422 with `details` (one FieldError per field). It
adds the API's own answers on top: every `AppError` (errors.py) is answered with the HTTP
status of its code, from `STATUS` below (the one place that maps codes to statuses); Redis
unreachable is a 503 (`SERVICE_UNAVAILABLE`), never a 500; and `FieldsInvalid` is a 422 with
`details` raised by services, not by request parsing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
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
        super().__init__(ErrorCode.VALIDATION_ERROR, message, details=list(details))


# The HTTP status of each code. A job's failure codes reach HTTP where the API checks the
# same thing a job would (a corpus uploaded through the API): the request was unusable, 422.
STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.VALIDATION_ERROR: 422,
    # Nobody reads it (the client left); the access log does.
    ErrorCode.CLIENT_CLOSED_REQUEST: 499,
    ErrorCode.DATA_INVALID: 422,
    ErrorCode.CONFIG_INVALID: 422,
    ErrorCode.CORPUS_UNREADABLE: 422,
    ErrorCode.CORPUS_FIELD_NOT_FOUND: 422,
    ErrorCode.CORPUS_FIELD_NOT_TEXT: 422,
    ErrorCode.CORPUS_TEXT_TOO_LARGE: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.TOKENIZER_TRAIN_FAILED: 500,
    ErrorCode.MODEL_TRAIN_FAILED: 500,
    ErrorCode.CHECKPOINT_INVALID: 500,
    ErrorCode.OUT_OF_MEMORY: 500,
    ErrorCode.WORKER_LOST: 500,
    ErrorCode.ARTIFACT_UPLOAD_FAILED: 503,
    ErrorCode.UPSTREAM_ERROR: 503,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.DATABANK_UNAVAILABLE: 503,
    ErrorCode.REDIS_UNAVAILABLE: 503,
}


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
    fallback_code=ErrorCode.BAD_REQUEST,
    internal_error=ErrorCode.INTERNAL_ERROR,
    internal_message="internal error; see the server logs",
    validation_response=_validation_response,
)


def install_api_error_handlers(app: FastAPI) -> None:
    """The API's answers beyond the shared vocabulary; call after `install_error_bodies`."""

    async def app_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, AppError):
            raise exc
        status = STATUS[exc.code]
        log.info(
            "%s %s -> %s: %s",
            request.method,
            request.url.path,
            status,
            exc.message,
            extra=log_fields("request_rejected", error_code=exc.code.value),
        )
        return error_response(
            status, exc.code, exc.message, details=exc.details, headers=exc.headers
        )

    async def redis_unavailable(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
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

    # Handlers are found by the exception's class, most specific first: Redis unreachable or
    # not answering (ConnectionError and its BusyLoadingError, TimeoutError) lands here; any
    # other Redis error (a ResponseError) is our bug, answered 500 and logged with its stack.
    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RedisConnectionError, redis_unavailable)
    app.add_exception_handler(RedisTimeoutError, redis_unavailable)


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """`responses=` for a route or router: these statuses answer the shared error body."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS.get(status, "error")}
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "malformed request header, or a Host not in security.trusted_hosts (the message says)",
    401: "missing or invalid X-API-Key",
    404: "unknown id (one not shaped like an id included)",
    409: "conflicts with the current state",
    413: "request body over limits.max_body_bytes (refused before it is read)",
    422: "invalid request (details name the fields)",
    429: "a rate limit or quota of this key, or wrong keys from this address; see Retry-After",
    503: "Redis or Data Bank is unavailable; try again shortly",
}


def document_validation_errors(schema: dict[str, object]) -> None:
    """Make the OpenAPI document's 422s the answers this API gives, in place.

    FastAPI lists a 422 with its own `HTTPValidationError` schema on every operation that has
    any parameter; this API answers 422 with `ErrorBody` (and `details`), and only where
    FastAPI can refuse a request: a body or query parameters. Its path and header parameters
    are plain strings that validation cannot refuse; their own checks answer 404
    (`ids.RunId`, `ids.TokenizerId`) and 400 (`ids.LastEventId`). So FastAPI's 422 becomes
    ours where the operation has a body or a query parameter, and is dropped elsewhere.
    """
    paths = schema.get("paths")
    if not isinstance(paths, dict):
        return
    for operations in paths.values():
        if not isinstance(operations, dict):
            continue
        for operation in operations.values():
            if isinstance(operation, dict):
                _document_422(operation)
    components = schema.get("components")
    schemas = components.get("schemas") if isinstance(components, dict) else None
    if isinstance(schemas, dict):
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _document_422(operation: dict[str, object]) -> None:
    responses = operation.get("responses")
    if not isinstance(responses, dict):
        return
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    if "requestBody" in operation:
        # A body that is not JSON at all is refused before validation, with 400.
        description = "the body is not valid JSON"
        responses.setdefault("400", {"description": description, "content": error_body})
    if _schema_ref(responses.get("422")) != _FASTAPI_422:
        return
    parameters = operation.get("parameters")
    has_query = isinstance(parameters, list) and any(
        isinstance(p, dict) and p.get("in") == "query" for p in parameters
    )
    if "requestBody" not in operation and not has_query:
        del responses["422"]
        return
    responses["422"] = {"description": _DESCRIPTIONS[422], "content": error_body}


def _schema_ref(answer: object) -> object:
    """`content.application/json.schema.$ref` of a documented answer, if it has one."""
    for key in ("content", "application/json", "schema", "$ref"):
        if not isinstance(answer, dict):
            return None
        answer = answer.get(key)
    return answer
