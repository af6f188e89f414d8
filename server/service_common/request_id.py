"""Request correlation: echo `X-Request-ID` or make one, for every log line and error body.

Also the access log (one JSON line per request) and the last resort for an unhandled error:
it is caught here rather than in an exception handler so the request id is still known; the
stack is logged and, if nothing was sent yet, a sanitized 500 answered.

A plain ASGI middleware, not BaseHTTPMiddleware, which would buffer streamed bodies (SSE,
file downloads).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from enum import StrEnum

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_common.jsonlog import REQUEST_ID_HEADER, log_fields, request_id_var

_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# Accept the caller's id only if it is short and printable (it lands in logs and headers);
# otherwise make our own.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Installed by `error_bodies.install_error_bodies` with one service's vocabulary.

    `internal_error` is the service's code for the 500 (logged), `internal_response` the 500
    itself, made while the request id is still set.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        log: logging.Logger,
        internal_error: StrEnum,
        internal_response: Callable[[], Response],
    ) -> None:
        self.app = app
        self.log = log
        self.internal_error = internal_error
        self.internal_response = internal_response

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
                headers.append((_HEADER_KEY, request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            self.log.error(
                "unhandled error on %s %s",
                scope.get("method", ""),
                scope.get("path", ""),
                exc_info=exc,
                extra=log_fields("unhandled_exception", error_code=self.internal_error.value),
            )
            if status:
                raise
            await self.internal_response()(scope, receive, send_with_id)
        finally:
            self.log.info(
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
        if bytes(key).lower() == _HEADER_KEY:
            text = bytes(value).decode("latin-1")
            return text if _VALID_ID.fullmatch(text) else None
    return None
