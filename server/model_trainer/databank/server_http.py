"""The local Data Bank's error bodies and request ids.

One body for every failure, `{code, message, request_id}`, with `request_id` echoing the
caller's X-Request-ID (or one we made), as the contract says.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_trainer.databank.wire import REQUEST_ID_HEADER, ErrorBody, ErrorCode
from model_trainer.jsonlog import log_fields, request_id_var

log = logging.getLogger("model_trainer.databank")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiError(Exception):
    def __init__(
        self, status: int, code: ErrorCode, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: ErrorCode, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(code=code.value, message=message, request_id=request_id_var.get())
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


_CODE_BY_STATUS = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ApiError):
            raise exc
        log.info(
            "%s %s -> %d %s",
            request.method,
            request.url.path,
            exc.status,
            exc.message,
            extra=log_fields("request_rejected", error_code=exc.code.value),
        )
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        code = _CODE_BY_STATUS.get(exc.status_code, ErrorCode.BAD_REQUEST)
        message = exc.detail if isinstance(exc.detail, str) else code.value
        return error_response(exc.status_code, code, message, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):
            raise exc
        return error_response(400, ErrorCode.BAD_REQUEST, f"invalid request: {exc.errors()}")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class RequestIdMiddleware:
    """Echo X-Request-ID (or make one) into logs, error bodies and the response; log access.

    Plain ASGI rather than BaseHTTPMiddleware, which would buffer streamed bodies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _valid_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error(
                "unhandled error on %s %s",
                scope.get("method", ""),
                scope.get("path", ""),
                exc_info=exc,
                extra=log_fields("unhandled_exception", error_code=ErrorCode.INTERNAL_ERROR.value),
            )
            if status:
                raise
            response = error_response(500, ErrorCode.INTERNAL_ERROR, "internal error; see logs")
            await response(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %d",
                scope.get("method", ""),
                scope.get("path", ""),
                status,
                extra=log_fields(
                    "http_request",
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                ),
            )
            request_id_var.reset(token)


def _valid_request_id(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            text = bytes(value).decode("latin-1")
            # Short and printable only: it lands in logs and headers.
            return text if _VALID_REQUEST_ID.fullmatch(text) else None
    return None
