"""One error body for every failure of every service: `{code, message, request_id}`.

`request_id` echoes the caller's X-Request-ID (or the one the middleware made); `details` is
added only where a service has per-field errors to give. Each service describes its errors
in an `ErrorVocabulary` (its codes, its exception class, its answer to an invalid request)
and calls `install_error_bodies`, which adds the request-id middleware and the handlers that
turn those exceptions, Starlette's HTTP errors and validation errors into this body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, JsonValue
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service_common.jsonlog import log_fields, request_id_var
from service_common.request_id import RequestIdMiddleware
from service_common.service_error import CodeT, ServiceError

# Starlette's HTTP errors (unknown route, wrong method...) by status, named alike in every
# service. A service whose codes lack the name answers that status with its fallback code.
_CODE_NAME_BY_STATUS = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def error_response(
    status: int,
    code: StrEnum,
    message: str,
    *,
    details: Sequence[BaseModel] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    # request_id is always present, null when no request id is known.
    body: dict[str, JsonValue] = {
        "code": code.value,
        "message": message,
        "request_id": request_id_var.get(),
    }
    if details is not None:
        body["details"] = [detail.model_dump(mode="json") for detail in details]
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass(frozen=True, kw_only=True)
class ErrorVocabulary(Generic[CodeT]):
    """How one service names its failures."""

    log: logging.Logger
    codes: type[CodeT]
    # For a Starlette HTTP error whose status has no code of the same name in `codes`.
    fallback_code: CodeT
    # The 500 for an unhandled exception.
    internal_error: CodeT
    internal_message: str
    # The whole answer to a request FastAPI could not validate (its status differs by service).
    validation_response: Callable[[RequestValidationError], Response]
    # The service's own refusals, answered with their status, code and headers (None: the
    # service installs its own handler for its errors).
    error_type: type[ServiceError[CodeT]] | None = None

    def code_for_status(self, status: int) -> CodeT:
        name = _CODE_NAME_BY_STATUS.get(status, "")
        return self.codes.__members__.get(name, self.fallback_code)

    def internal_response(self) -> Response:
        return error_response(500, self.internal_error, self.internal_message)


def install_error_bodies(app: FastAPI, vocabulary: ErrorVocabulary[CodeT]) -> None:
    """The request-id middleware and the error handlers, with one service's vocabulary."""
    app.add_middleware(
        RequestIdMiddleware,
        log=vocabulary.log,
        internal_error=vocabulary.internal_error,
        internal_response=vocabulary.internal_response,
    )
    log = vocabulary.log

    error_type = vocabulary.error_type

    async def service_error(request: Request, exc: Exception) -> Response:
        if error_type is None or not isinstance(exc, error_type):
            raise exc
        log.info(
            "%s %s -> %s: %s",
            request.method,
            request.url.path,
            exc.status,
            exc.message,
            extra=log_fields("request_rejected", error_code=exc.code.value),
        )
        return error_response(
            exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        code = vocabulary.code_for_status(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else code.value
        return error_response(exc.status_code, code, message, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):
            raise exc
        return vocabulary.validation_response(exc)

    if error_type is not None:
        app.add_exception_handler(error_type, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
