"""A service's own web assets (the API's dashboard, each service's `/docs` page): how they
are answered.

Every asset is served by the service itself, never by a CDN, so the pages work offline and on a
private network. Each is kept in memory (they are a few tens of KiB), with a content type,
a strong ETag (its SHA-256) and `Cache-Control: no-cache`: browsers keep a copy but ask
again each time, and get a 304 while it is unchanged, so a new release is never hidden
behind a stale cache. Pages carry a Content-Security-Policy that allows only this origin:
a browser refuses anything from elsewhere, which also keeps the "no CDN" promise honest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

# Only our own origin: no inline script or style, nothing from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True)
class StaticAsset:
    body: bytes
    media_type: str
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", f'"{hashlib.sha256(self.body).hexdigest()[:32]}"')

    @classmethod
    def text(cls, body: str, suffix: str) -> StaticAsset:
        return cls(body.encode(), MEDIA_TYPES[suffix])

    def response(self, request: Request) -> Response:
        headers = {
            "ETag": self.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        }
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)
