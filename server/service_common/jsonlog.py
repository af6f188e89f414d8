"""JSON-lines logging: one object per line with the fields every consumer can rely on.

Fields: timestamp, level, category, service, event, message, and request_id / run_id /
tokenizer_id / error_code when known. Request and run ids come from context variables set by
the request-id middleware and the trainer's job runner, so call sites need not pass them
around. Both services log through this module, so their lines have one shape.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

# The header that carries a request id between services (and back in every answer).
REQUEST_ID_HEADER = "X-Request-ID"
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
run_id_var: ContextVar[str | None] = ContextVar("run_id", default=None)
tokenizer_id_var: ContextVar[str | None] = ContextVar("tokenizer_id", default=None)

# `log_fields` puts a call's structured fields under this LogRecord attribute; the formatter
# writes every one of them (none is dropped for not being on a list).
FIELDS_ATTR = "fields"
JsonScalar = str | int | float | bool | None


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.to_dict(record), separators=(",", ":"), ensure_ascii=False)

    def to_dict(self, record: logging.LogRecord) -> dict[str, JsonScalar]:
        out: dict[str, JsonScalar] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "category": _attr_str(record, "category") or record.name.split(".")[-1],
            "service": self._service,
            "event": _attr_str(record, "event") or "log",
            "message": record.getMessage(),
        }
        fields = record.__dict__.get(FIELDS_ATTR)
        for name, var in (
            ("request_id", request_id_var),
            ("run_id", run_id_var),
            ("tokenizer_id", tokenizer_id_var),
        ):
            given = fields.get(name) if isinstance(fields, dict) else None
            value = given if isinstance(given, str) and given else var.get()
            if value:
                out[name] = value
        if isinstance(fields, dict):
            for name, raw in fields.items():
                if isinstance(name, str) and name not in out and raw is not None:
                    out[name] = raw if isinstance(raw, str | int | float | bool) else str(raw)
        if record.exc_info and record.exc_info[0] is not None:
            out["stack"] = "".join(traceback.format_exception(*record.exc_info))
        return out


def _attr_str(record: logging.LogRecord, name: str) -> str | None:
    value = record.__dict__.get(name)
    return value if isinstance(value, str) and value else None


def setup_logging(level: str, service: str) -> None:
    """Send every logger's records to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter at INFO drowns our own lines.
    for noisy in ("httpx", "httpcore", "hypercorn.access", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_fields(event: str, **fields: JsonScalar) -> Mapping[str, str | Mapping[str, JsonScalar]]:
    """`extra=` for a log call: `log.info("...", extra=log_fields("run_started", step=0))`.

    The fields travel together under one attribute, so none can clash with a LogRecord
    attribute (logging refuses `name`, `message`...), and the formatter writes each of them.
    """
    return {"event": event, FIELDS_ATTR: fields}


@contextmanager
def bound(var: ContextVar[str | None], value: str | None) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
