"""The Data Bank wire contract shared by the trainer's client and the local server.

See /work/shared/contracts/data-bank-api.md. Both sides (`model_trainer.databank` and
`databank_server`) import these names, so a field or a code spelled here is spelled the same
on the way out and on the way back.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

# The contract's X-Request-ID is the header every service of ours echoes: re-exported.
from service_common.jsonlog import REQUEST_ID_HEADER as REQUEST_ID_HEADER

# A file_id is the lowercase hex SHA-256 of the file's bytes; nothing else is an id. The one
# spelling of that rule: the training and tokenization configs and the job payloads use it too.
# A string, not a compiled `re`: Pydantic then matches it with its Rust engine, where `$` is
# the end of the text; Python's `$` also matches before a final newline, which let an id
# with a trailing newline through validation (and on to a 503 from Data Bank).
FILE_ID_PATTERN = r"^[0-9a-f]{64}$"
_FILE_ID = re.compile(FILE_ID_PATTERN)

API_KEY_HEADER = "X-API-Key"


def is_file_id(value: str) -> bool:
    return _FILE_ID.fullmatch(value) is not None


class ErrorCode(StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    BAD_REQUEST = "BAD_REQUEST"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
    INVALID_RANGE = "INVALID_RANGE"
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileInfo(_Wire):
    """The answer to an upload and to `GET /files/{file_id}/info`."""

    file_id: str
    size: int
    sha256: str
    content_type: str
    created_at: datetime


class ErrorBody(_Wire):
    # Always present, null when the caller sent no X-Request-ID and none was made.
    code: str
    message: str
    request_id: str | None


class HealthBody(_Wire):
    status: Literal["ok"] = "ok"


class ReadyBody(_Wire):
    status: Literal["ready", "degraded"]
    reason: str | None = None
