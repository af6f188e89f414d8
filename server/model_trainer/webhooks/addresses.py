"""Which webhook URLs may be called: checked when a request names one and again on each send.

A URL must be http or https, and every address its host resolves to must be public: a
private, loopback, link-local, multicast or reserved one would let a caller make the server
reach what only the server can (its Redis, a cloud metadata endpoint). `allow_private` is
the operator's opt-out (a receiver on the same private network, the test suite). Checking
again before each send catches a name that resolves elsewhere later; a name that changes
between the check and the connection (DNS rebinding within a second) is not caught.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from model_trainer.errors import ErrorCode, UserError

SCHEMES = ("http", "https")


class UrlRefused(UserError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.CONFIG_INVALID)


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise `UrlRefused` unless `url` may be called (see the module doc)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise UrlRefused(f"webhook_url must be an http or https URL with a host, not {url!r}")
    if parts.username or parts.password:
        raise UrlRefused("webhook_url may not carry a user name or password")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise UrlRefused(f"webhook_url's host {parts.hostname!r} does not resolve: {exc}") from exc
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global:
            raise UrlRefused(
                f"webhook_url's host {parts.hostname!r} resolves to {ip}, a private or "
                "loopback address: refused (an operator may allow these with "
                "WEBHOOKS__ALLOW_PRIVATE_ADDRESSES)"
            )
