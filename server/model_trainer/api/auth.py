"""Who is calling: API keys, their principals, and the throttle on wrong keys.

A key (`X-API-Key`) names a principal: its `name` and `role` (settings.py `ApiKey`). A
`user` sees and acts on what it submitted only; others' jobs and corpora answer 404, as an
unknown id does. An `admin` sees everyone's. `security.api_key`, one key given in clear, is
the admin `admin`. Keys are held as their SHA-256 only (`KeyRing`): the key presented is
hashed and looked up, so the process holds no key it could leak, and a lookup's timing
depends on the hash, which tells nothing about the key. Keys must be random (`make start`:
128 bits), which is what makes them unguessable; a hash that is fast to compute is then
as good as a slow one.

Closed by default: with no key configured the API refuses to start (`check_can_start`)
unless `security.allow_anonymous` says so; then every request acts as the admin
`anonymous`, and the API warns at each start (the dashboard shows it: `GET /whoami`).

Wrong keys: each client address may send `security.auth_failures_per_minute` wrong or
missing keys in any minute; past that, its requests are answered 429 with Retry-After
before their key is looked at, until the minute has passed. So guessing is throttled (an
address over its budget learns nothing, right key or wrong), while a right key costs no
more than before (an in-memory check; it is never counted), and keys from other addresses
are not affected. The count is per API process, in memory: no Redis command on the path of
every request.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field

from model_trainer.errors import AppError, ErrorCode
from model_trainer.settings import ApiKey, Role, SecuritySettings
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.api")

ADMIN = "admin"
ANONYMOUS = "anonymous"


class Principal(BaseModel):
    """Who a request acts as (`GET /whoami` answers it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the API key's name; jobs and corpora record it as owner")
    role: Role = Field(description="admin: everyone's jobs and corpora; user: its own only")
    anonymous: bool = Field(
        default=False,
        description="true when the server runs without keys (security.allow_anonymous)",
    )

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """Whose jobs and corpora this principal sees: its own, or everyone's (None)."""
        return None if self.admin else self.name


class KeyRing:
    """The configured keys, by the hex SHA-256 of each."""

    def __init__(self, security: SecuritySettings) -> None:
        entries = list(security.api_keys)
        if security.api_key is not None and security.api_key.get_secret_value():
            digest = _sha256(security.api_key.get_secret_value())
            entries.append(ApiKey(name=ADMIN, role="admin", key_sha256=digest))
        names = [e.name for e in entries]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise AppError(
                ErrorCode.CONFIG_INVALID,
                f"security.api_keys: names must be unique ({', '.join(duplicated)}; "
                f"security.api_key is the admin {ADMIN!r})",
            )
        self._by_hash = {e.key_sha256: Principal(name=e.name, role=e.role) for e in entries}
        if len(self._by_hash) != len(entries):
            raise AppError(ErrorCode.CONFIG_INVALID, "security.api_keys: two names share a key")

    def __bool__(self) -> bool:
        return bool(self._by_hash)

    def find(self, key: str) -> Principal | None:
        return self._by_hash.get(_sha256(key))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class FailureThrottle:
    """Wrong or missing keys per client address, in a moving one-minute window."""

    def __init__(self, per_minute: int) -> None:
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, address: str) -> None:
        """429 while `address` is over its budget."""
        if self._limiter.test(self._item, address):
            return
        reset = self._limiter.get_window_stats(self._item, address).reset_time
        raise AppError(
            ErrorCode.RATE_LIMITED,
            "too many wrong API keys from this address; try again later",
            headers={"Retry-After": str(max(1, math.ceil(reset - time.time())))},
        )

    def failed(self, address: str) -> None:
        self._limiter.hit(self._item, address)


class Authenticator:
    """Maps a request's key to its principal (or refuses it), with the throttle above."""

    def __init__(self, security: SecuritySettings) -> None:
        self.keys = KeyRing(security)
        self.anonymous = not self.keys and security.allow_anonymous
        self._throttle = FailureThrottle(security.auth_failures_per_minute)

    def principal(self, key: str | None, address: str) -> Principal:
        if self.anonymous:
            return Principal(name=ANONYMOUS, role="admin", anonymous=True)
        self._throttle.check(address)
        found = self.keys.find(key) if key else None
        if found is not None:
            return found
        self._throttle.failed(address)
        message = (
            "missing X-API-Key header (or Authorization: Bearer)"
            if key is None
            else "invalid API key"
        )
        raise AppError(ErrorCode.UNAUTHORIZED, message)


def check_can_start(security: SecuritySettings) -> Authenticator:
    """The API's authenticator; refuses (CONFIG_INVALID) to run without a key unless
    anonymous use was asked for, and warns, at every start, when it was."""
    auth = Authenticator(security)
    if not auth.keys and not security.allow_anonymous:
        raise AppError(
            ErrorCode.CONFIG_INVALID,
            "no API key configured: set SECURITY__API_KEY (one admin) or SECURITY__API_KEYS "
            "(keys per person), or SECURITY__ALLOW_ANONYMOUS=true to let anyone who reaches "
            "this API use it",
        )
    if auth.anonymous:
        log.warning(
            "no API key configured and SECURITY__ALLOW_ANONYMOUS=true: anyone who reaches "
            "this API can use it, as an admin",
            extra=log_fields("api_anonymous"),
        )
    return auth


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
# The same key as `Authorization: Bearer <key>`: what OpenAI-style clients and Prometheus send.
_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    # `async` (no I/O): a plain `def` would cost every request a thread-pool hop.
    auth = request.app.state.auth
    if not isinstance(auth, Authenticator):
        raise RuntimeError("app started without an Authenticator")
    address = request.client.host if request.client else "unknown"
    return auth.principal(api_key or (bearer.credentials if bearer else None), address)


Me = Annotated[Principal, Depends(current_principal)]
