"""The Host header check (`security.trusted_hosts`), before anything else of the app runs.

A web page on another site can make a browser send requests to an API on localhost by
pointing its own name at 127.0.0.1 (DNS rebinding); those requests carry the page's name as
`Host`. Answering only the names the operator trusts closes that door. Starlette's
`TrustedHostMiddleware` does the same check but answers in plain text: this one answers the
usual error body (400 `BAD_REQUEST`), with the request id (it sits inside the request-id
middleware).

Patterns: an exact name, `*.example.com` (any subdomain of it), or `*` (any). The port is
ignored; `[::1]` is how a Host header writes an IPv6 address.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from model_trainer.errors import ErrorCode
from service_common.error_bodies import error_response


def host_name(host: str) -> str:
    """`Host` without its port, lower-case (`[::1]:8000` -> `[::1]`)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def trusted(host: str, patterns: Sequence[str]) -> bool:
    name = host_name(host)
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class TrustedHosts:
    def __init__(self, app: ASGIApp, *, patterns: Sequence[str]) -> None:
        self.app = app
        self.patterns = list(patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        if trusted(host, self.patterns):
            await self.app(scope, receive, send)
            return
        refusal = error_response(
            400,
            ErrorCode.BAD_REQUEST,
            "this Host is not one the API answers (security.trusted_hosts)",
        )
        await refusal(scope, receive, send)
