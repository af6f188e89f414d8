"""Request correlation: echo `X-Request-ID` or make one, for every log line and error body.

A plain ASGI middleware (not BaseHTTPMiddleware) so streamed responses (SSE) pass through
untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_trainer.api.errors import error_response
from model_trainer.errors import ErrorCode
from model_trainer.jsonlog import log_fields, request_id_var

log = logging.getLogger("model_trainer.api")

# Accept the caller's id only if it is short and printable; otherwise make our own.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # The last resort, here rather than in an exception handler so the request id is
            # still known: log the stack, answer a sanitized 500 (if nothing was sent yet).
            log.error(
                "unhandled error on %s %s",
                scope.get("method", ""),
                scope.get("path", ""),
                exc_info=exc,
                extra=log_fields("unhandled_exception", error_code=ErrorCode.INTERNAL_ERROR.value),
            )
            if status_code:
                raise
            response = error_response(
                500, ErrorCode.INTERNAL_ERROR, "internal error; see the server logs"
            )
            await response(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s",
                scope.get("method", ""),
                scope.get("path", ""),
                status_code,
                extra=log_fields(
                    "http_request",
                    status=status_code,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                ),
            )
            request_id_var.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
