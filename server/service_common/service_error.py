"""`ServiceError`: a refusal a service answers with an HTTP status and one of its own codes.

Apart from `error_bodies.py` so that code outside the web layer (the trainer's jobs raise
`AppError`, a ServiceError) can import it without importing FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel

CodeT = TypeVar("CodeT", bound=StrEnum)


class ServiceError(Exception, Generic[CodeT]):
    """A refusal a service answers with its own code: raise it from a route or dependency."""

    def __init__(
        self,
        status: int,
        code: CodeT,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: Sequence[BaseModel] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details  # per-field refusals (a 422's `details`), if any
