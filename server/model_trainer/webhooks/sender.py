"""The loop every API process runs in a thread: deliveries made, sent, retried, recorded.

    every `poll_sec`:
      claim ended jobs -> one delivery per endpoint (the request's, the operator's), due now
      claim due deliveries -> POST each, signed; 2xx: delivered; 410: failed (the receiver
        says it is gone); else the next attempt at the schedule's next delay, until the
        schedule is spent (failed)

The schedule (`WEBHOOKS__RETRY_DELAYS_SEC`) defaults to Standard Webhooks' suggestion as
Svix runs it: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 28 hours in all. Claims hold
an item for `hold_sec`, so two senders never send one attempt twice unless one of them stops
for longer than that mid-send (then the receiver sees the same `webhook-id` twice).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from model_trainer.errors import UserError
from model_trainer.settings import WebhookSettings
from model_trainer.store.keys import JobKind
from model_trainer.store.records import AnyRecord, AnyStatusStore, Status
from model_trainer.webhooks.addresses import check_url
from model_trainer.webhooks.records import (
    MAX_ATTEMPTS_KEPT,
    Attempt,
    Delivery,
    Endpoint,
    WebhookStore,
)
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.webhooks")

BATCH = 20
ERROR_CHARS = 300  # of an answer's body or an exception, kept on the attempt


class WebhookSender:
    def __init__(
        self,
        store: WebhookStore,
        records: Callable[[JobKind], AnyStatusStore],
        settings: WebhookSettings,
        client: httpx.Client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`records`: the status store of a kind (`ApiContext.store`)."""
        self._store = store
        self._records = records
        self._settings = settings
        self._client = client
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="webhook-sender")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._settings.timeout_sec + 5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._settings.poll_sec):
            try:
                self.tick()
                failing = False
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one bad pass
                # Said once until a pass succeeds again (Redis down would say it every poll).
                if not failing:
                    log.warning(
                        "webhooks pass failed (%s: %s); retrying every %.0f s",
                        type(exc).__name__,
                        exc,
                        self._settings.poll_sec,
                        extra=log_fields("webhook_pass_failed"),
                    )
                failing = True

    def tick(self) -> None:
        """One pass: deliveries for the jobs that ended, then the attempts that are due."""
        hold = self._settings.timeout_sec * 2 + 5
        for marker in self._store.claim_ended(BATCH, hold):
            self._make_deliveries(marker)
        for delivery_id in self._store.claim_due(BATCH, hold):
            delivery = self._store.get(delivery_id)
            if delivery is None:
                self._store.drop_due(delivery_id)
                continue
            self._attempt(delivery)

    # --- an ended job -> its deliveries ---------------------------------------------------
    def _make_deliveries(self, marker: str) -> None:
        kind_name, _, job_id = marker.partition(":")
        if kind_name not in set(JobKind):
            self._store.create(marker, job_id, [])  # not ours to understand: dropped
            return
        kind = JobKind(kind_name)
        record = self._records(kind).record(job_id)
        endpoints = self._store.endpoints(job_id)
        for i, endpoint in enumerate(self._settings.endpoints):
            endpoints[f"operator-{i}"] = Endpoint(
                url=endpoint.url, secret=endpoint.secret.get_secret_value(), source="operator"
            )
        if record is None or not record.status.terminal or not endpoints:
            self._store.create(marker, job_id, [])  # nothing to tell, or nobody to tell it
            return
        event_type, payload = _payload(kind, record, self._clock())
        # An evaluation's deliveries are listed with its run's.
        run_id = record.meta.request.get("run_id") if record.meta else None
        list_under = run_id if kind is JobKind.EVAL and isinstance(run_id, str) else job_id
        deliveries = [
            Delivery(
                delivery_id=f"dlv-{uuid.uuid4().hex[:16]}",
                msg_id=f"msg_{uuid.uuid4().hex}",
                job_id=job_id,
                event_type=event_type,
                endpoint_id=endpoint_id,
                url=endpoint.url,
                source=endpoint.source,
                payload=payload,
                created_at=self._clock(),
            )
            for endpoint_id, endpoint in sorted(endpoints.items())
        ]
        self._store.create(marker, list_under, deliveries)
        log.info(
            "%s %s ended %s: %d webhook deliveries",
            kind,
            job_id,
            record.status.value,
            len(deliveries),
            extra=log_fields("webhooks_made", job_id=job_id, deliveries=len(deliveries)),
        )

    # --- one attempt ---------------------------------------------------------------------
    def _attempt(self, delivery: Delivery) -> None:
        secret = self._secret(delivery)
        started = self._clock()
        status_code: int | None = None
        error: str | None = None
        try:
            if secret is None:
                raise UserError("the endpoint's secret is gone (its job's record expired)")
            if delivery.source == "request":
                check_url(delivery.url, allow_private=self._settings.allow_private_addresses)
            status_code = self._post(delivery, secret)
            if not 200 <= status_code < 300:
                error = f"answered {status_code}"
        except UserError as exc:
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        now = self._clock()
        attempt = Attempt(
            at=started, status_code=status_code, error=error, seconds=round(now - started, 3)
        )
        delivery.attempts = [*delivery.attempts, attempt][-MAX_ATTEMPTS_KEPT:]
        delivery.attempt_count += 1
        delays = self._settings.retry_delays_sec
        if error is None:
            delivery.state, delivery.next_attempt_at = "delivered", None
        elif status_code == 410 or delivery.attempt_count > len(delays):
            delivery.state, delivery.next_attempt_at = "failed", None
        else:
            delivery.next_attempt_at = now + delays[delivery.attempt_count - 1]
        self._store.save(delivery)
        log.log(
            logging.INFO if error is None else logging.WARNING,
            "webhook %s to %s: %s (attempt %d)",
            delivery.event_type,
            delivery.url,
            delivery.state if error is None else f"{error}; {delivery.state}",
            delivery.attempt_count,
            extra=log_fields(
                "webhook_attempt",
                job_id=delivery.job_id,
                delivery_id=delivery.delivery_id,
                status_code=status_code,
            ),
        )

    def _post(self, delivery: Delivery, secret: str) -> int:
        sent_at = datetime.fromtimestamp(self._clock(), UTC)
        signature = Webhook(secret).sign(delivery.msg_id, sent_at, delivery.payload)
        answer = self._client.post(
            delivery.url,
            content=delivery.payload.encode(),
            headers={
                "content-type": "application/json",
                "webhook-id": delivery.msg_id,
                "webhook-timestamp": str(int(sent_at.timestamp())),
                "webhook-signature": signature,
            },
            timeout=self._settings.timeout_sec,
        )
        return answer.status_code

    def _secret(self, delivery: Delivery) -> str | None:
        if delivery.source == "operator":
            index = int(delivery.endpoint_id.removeprefix("operator-"))
            endpoints = self._settings.endpoints
            return endpoints[index].secret.get_secret_value() if index < len(endpoints) else None
        endpoint = self._store.endpoints(delivery.job_id).get(delivery.endpoint_id)
        return endpoint.secret if endpoint else None


def _payload(kind: JobKind, record: AnyRecord, now: float) -> tuple[str, str]:
    """The message, in Standard Webhooks' shape: `type`, `timestamp`, `data`."""
    event_type = f"{kind.value}.{record.status.value}"
    data: dict[str, object] = {
        "kind": kind.value,
        "job_id": record.id,
        "status": record.status.value,
        "message": record.message,
        "error": record.error.model_dump() if record.error else None,
        "file_id": record.file_id if record.status is Status.COMPLETED else None,
    }
    if kind is JobKind.EVAL and record.meta:
        data["run_id"] = record.meta.request.get("run_id")
    body = {
        "type": event_type,
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    return event_type, json.dumps(body, separators=(",", ":"))
