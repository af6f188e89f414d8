"""The request body cap (`limits.max_body_bytes`), enforced before a body is read into memory.

A plain ASGI middleware between the request-id middleware (so a refusal carries the request
id and is in the access log) and the app:

- a `Content-Length` over the cap is answered 413 at once: nothing of the app runs (no auth,
  no Redis), nothing of the body is read;
- a body without one (`Transfer-Encoding: chunked`) is counted as the app reads it. The read
  that goes over the cap is the last: the app gets `http.disconnect` instead of those bytes
  (and for any later read), so it holds at most the cap plus one chunk. Whatever the app
  then answers (FastAPI: a 400, "error parsing the body") is dropped, and the 413 sent once
  the app is done. Only a response that had started already (a log stream reads the
  request just to notice a disconnect) is left alone: it ends as if the client had gone.

The 413 is the usual error body (`PAYLOAD_TOO_LARGE`) with `Connection: close`: the rest of
the body is never read, so the connection cannot carry another request.

FastAPI's own `max_body_size` is not used: with a `Content-Length` over the cap it still runs
the route until the route reads the body or answers, and it may answer in plain text.

A route that takes files (`POST /corpora`, which streams its body to disk) has a cap of its
own (`BodyCap` per path), enforced the same way: one mechanism, one 413, each cap naming its
own setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_trainer.errors import ErrorCode
from service_common.error_bodies import error_response

_DISCONNECT: Message = {"type": "http.disconnect"}


@dataclass(frozen=True)
class BodyCap:
    """A body size limit and the setting that sets it (named in the 413's message)."""

    max_bytes: int
    setting: str = "limits.max_body_bytes"


def too_large(cap: BodyCap) -> Response:
    return error_response(
        413,
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"request body is over the {cap.max_bytes}-byte limit ({cap.setting})",
        headers={"Connection": "close"},
    )


class BodySizeLimit:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, per_path: Mapping[str, BodyCap] | None = None
    ) -> None:
        self.app = app
        self.default = BodyCap(max_bytes)
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.per_path.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and declared > cap.max_bytes:
            await too_large(cap)(scope, receive, send)
            return

        received = 0
        # Over the cap / the app's answer went out / the app's answer is being dropped.
        exceeded = started = dropped = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap.max_bytes:
                    exceeded = True
                    return _DISCONNECT
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started, dropped
            if message["type"] == "http.response.start":
                if exceeded:
                    dropped = True
                else:
                    started = True
            if not dropped:
                await send(message)

        await self.app(scope, counted_receive, watched_send)
        # Sent once the app is done, outside its tasks (a stream cancels its own).
        if exceeded and not started:
            await too_large(cap)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when absent or unreadable (the body is counted then)."""
    for key, value in scope.get("headers", []):
        if bytes(key).lower() == b"content-length":
            text = bytes(value).decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else None
    return None
