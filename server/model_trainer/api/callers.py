"""Whether a caller is still there, and the cap on each key's concurrent streams (keyed by
the principal's name, api/auth.py)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from model_trainer.errors import AppError, ErrorCode

# What a refused stream is told to wait: streams end when their run does, their client
# leaves or their lifetime is up, none of which can be known here.
STREAM_RETRY_AFTER_SEC = 5


async def disconnected(request: Request) -> None:
    """Return when the client disconnects. For a route that has read its whole body: no
    message but `http.disconnect` can come after it."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class StreamCap:
    """At most `limit` concurrent streams per caller in this process; past it, 429."""

    def __init__(self, limit: int, setting: str) -> None:
        self._limit = limit
        self._setting = setting
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()  # routes take slots from the thread pool

    def open(self, caller: str) -> int:
        with self._lock:
            return self._open.get(caller, 0)

    def take(self, caller: str) -> Callable[[], None]:
        """A slot for one stream of `caller`, and the function that gives it back (once,
        however often it is called); `AppError` 429 when the caller has `limit` open."""
        with self._lock:
            if self._open.get(caller, 0) >= self._limit:
                raise AppError(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"too many open streams: {self._limit} at once per caller "
                    f"({self._setting}); close one, or try again shortly",
                    headers={"Retry-After": str(STREAM_RETRY_AFTER_SEC)},
                )
            self._open[caller] = self._open.get(caller, 0) + 1
        given_back = threading.Event()

        def give_back() -> None:
            with self._lock:
                if given_back.is_set():
                    return
                given_back.set()
                left = self._open[caller] - 1
                if left:
                    self._open[caller] = left
                else:
                    del self._open[caller]

        return give_back


class LeasedStream(StreamingResponse):
    """A streaming response that gives its `StreamCap` slot back however it ends: done,
    cancelled when the client left (Starlette watches for that), or failed."""

    def __init__(
        self,
        content: AsyncIterator[str],
        give_back: Callable[[], None],
        *,
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._give_back = give_back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._give_back()
