"""What Redis keeps of webhooks (the keys are in store/keys.py): endpoints and deliveries.

A delivery is one message (one job's end) to one endpoint. Its payload and `webhook-id` are
fixed when it is made, so every attempt sends the same bytes; its attempts are kept on it
(the newest `MAX_ATTEMPTS_KEPT`), which `GET /runs/{id}/webhooks` lists.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from redis import Redis

from model_trainer.store.keys import (
    RECORD_TTL_SEC,
    WEBHOOKS_DUE,
    WEBHOOKS_ENDED,
    deliveries_key,
    delivery_key,
    webhooks_key,
)
from model_trainer.store.records import as_str

MAX_ATTEMPTS_KEPT = 20
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret

# Members of a sorted set whose score is due (<= ARGV[1]), up to ARGV[3] of them, each
# pushed to ARGV[2] (claimed until then): a sender that dies leaves them to another one.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    secret: str
    source: Literal["request", "operator"]


class Attempt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float
    status_code: int | None  # None: no answer (refused, timed out, address not allowed)
    error: str | None
    seconds: float


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_id: str
    msg_id: str  # `webhook-id`: the same on every attempt
    job_id: str
    event_type: str  # e.g. run.completed, tokenizer.failed
    endpoint_id: str
    url: str
    source: Literal["request", "operator"]
    payload: str  # the exact body sent
    created_at: float
    state: Literal["pending", "delivered", "failed"] = "pending"
    next_attempt_at: float | None = None
    attempts: list[Attempt] = []
    attempt_count: int = 0


class WebhookStore:
    def __init__(self, redis: Redis, clock: Callable[[], float] = time.time) -> None:
        self._r = redis
        self._clock = clock
        self._claim = redis.register_script(_CLAIM)

    # --- endpoints (the API, at submit time) ------------------------------------------
    def add_endpoint(self, job_id: str, endpoint: Endpoint) -> str:
        """Keep `endpoint` for `job_id`'s end; returns its id. Same URL again: replaced."""
        endpoint_id = f"ep-{uuid.uuid5(uuid.NAMESPACE_URL, endpoint.url).hex[:12]}"
        key = webhooks_key(job_id)
        pipe = self._r.pipeline()
        pipe.hset(key, endpoint_id, endpoint.model_dump_json())
        pipe.expire(key, RECORD_TTL_SEC)
        pipe.execute()
        return endpoint_id

    def endpoints(self, job_id: str) -> dict[str, Endpoint]:
        raw = self._r.hgetall(webhooks_key(job_id))
        found: dict[str, Endpoint] = {}
        for key, value in raw.items():
            name = as_str(key)
            if name is None:
                continue
            try:
                found[name] = Endpoint.model_validate_json(value)
            except ValidationError:
                continue  # unreadable: as good as absent
        return found

    # --- the sender's side --------------------------------------------------------------
    def claim_ended(self, limit: int, hold_sec: float) -> list[str]:
        """Ended jobs (`<kind>:<id>`) to turn into deliveries; held for `hold_sec`."""
        return self._claim_from(WEBHOOKS_ENDED, limit, hold_sec)

    def claim_due(self, limit: int, hold_sec: float) -> list[str]:
        """Delivery ids due now; held for `hold_sec` (the time one attempt may take)."""
        return self._claim_from(WEBHOOKS_DUE, limit, hold_sec)

    def create(self, marker: str, list_under: str, deliveries: list[Delivery]) -> None:
        """The deliveries of one ended job, due now, and the job's marker gone: one write."""
        now = self._clock()
        pipe = self._r.pipeline()
        for delivery in deliveries:
            delivery.next_attempt_at = now
            pipe.set(delivery_key(delivery.delivery_id), delivery.model_dump_json())
            pipe.expire(delivery_key(delivery.delivery_id), RECORD_TTL_SEC)
            pipe.zadd(deliveries_key(list_under), {delivery.delivery_id: now})
            pipe.expire(deliveries_key(list_under), RECORD_TTL_SEC)
            pipe.zadd(WEBHOOKS_DUE, {delivery.delivery_id: now})
        pipe.zrem(WEBHOOKS_ENDED, marker)
        pipe.execute()

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self._r.get(delivery_key(delivery_id))
        if raw is None:
            return None
        try:
            return Delivery.model_validate_json(raw)
        except ValidationError:
            return None

    def save(self, delivery: Delivery) -> None:
        """Write the delivery back; due again at `next_attempt_at`, or done."""
        pipe = self._r.pipeline()
        pipe.set(delivery_key(delivery.delivery_id), delivery.model_dump_json())
        pipe.expire(delivery_key(delivery.delivery_id), RECORD_TTL_SEC)
        if delivery.state == "pending" and delivery.next_attempt_at is not None:
            pipe.zadd(WEBHOOKS_DUE, {delivery.delivery_id: delivery.next_attempt_at})
        else:
            pipe.zrem(WEBHOOKS_DUE, delivery.delivery_id)
        pipe.execute()

    def drop_due(self, delivery_id: str) -> None:
        """A due id whose delivery is gone (expired): nothing to send."""
        self._r.zrem(WEBHOOKS_DUE, delivery_id)

    # --- listing (the API) --------------------------------------------------------------
    def deliveries(self, job_id: str) -> list[Delivery]:
        """A job's deliveries (a run's include its evaluations'), oldest first."""
        ids = [as_str(i) for i in self._r.zrange(deliveries_key(job_id), 0, -1)]
        found = [self.get(i) for i in ids if i is not None]
        return [d for d in found if d is not None]

    def _claim_from(self, key: str, limit: int, hold_sec: float) -> list[str]:
        now = self._clock()
        claimed = self._claim(keys=[key], args=[repr(now), repr(now + hold_sec), limit])
        if not isinstance(claimed, list):
            return []
        return [m for m in (as_str(member) for member in claimed) if m is not None]
