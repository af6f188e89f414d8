"""One error shape everywhere: `{code, message, request_id}` (+ `details` for 422)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_trainer.errors import AppError, ErrorCode
from model_trainer.jsonlog import log_fields, request_id_var

log = logging.getLogger("model_trainer.api")


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    request_id: str | None
    details: list[FieldError] | None = None


_CODE_BY_STATUS = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.VALIDATION_ERROR,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}


def error_response(
    status: int,
    code: ErrorCode,
    message: str,
    details: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, message=message, request_id=request_id_var.get(), details=details)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True) | {"request_id": body.request_id},
        status_code=status,
        headers=headers,
    )


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, AppError):
        raise exc
    log.info(
        "%s %s -> %s: %s",
        request.method,
        request.url.path,
        exc.status_code,
        exc.message,
        extra=log_fields("request_rejected", error_code=exc.code.value),
    )
    return error_response(exc.status_code, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    code = _CODE_BY_STATUS.get(exc.status_code, ErrorCode.BAD_REQUEST)
    message = exc.detail if isinstance(exc.detail, str) else code.value
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
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
        422, ErrorCode.VALIDATION_ERROR, f"invalid request: check {fields}", details
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
