"""Typed failures of Data Bank calls, one class per documented answer.

Callers switch on the class (`except NotFound`), not on status numbers. Everything derives
from `DataBankError` (a `TrainerError`, errors.py), so "any Data Bank problem" is one
`except` too. A job that lets one escape fails as its class says: `Unavailable`, a full disk
or bytes that came out wrong are transient (retried); any other answer means our request or
our configuration is wrong, and asking again gives the same answer (fatal).
"""

from __future__ import annotations

from typing import ClassVar

from model_trainer.errors import ErrorCode, FailureKind, TrainerError


class DataBankError(TrainerError):
    """A Data Bank call failed; `status`/`service_code` are set when the service answered."""

    failure: ClassVar[FailureKind | None] = "fatal"
    code = ErrorCode.UPSTREAM_ERROR

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        service_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.service_code = service_code
        self.request_id = request_id

    @property
    def failure_message(self) -> str:
        return f"Data Bank: {self.message}"


class _Transient(DataBankError):
    failure: ClassVar[FailureKind | None] = "transient"
    code = ErrorCode.DATABANK_UNAVAILABLE

    @property
    def failure_message(self) -> str:
        return f"Data Bank unavailable: {self.message}"


class InvalidFileId(DataBankError, ValueError):
    """Refused before any request: a file_id is 64 lowercase hex characters."""


class BadRequest(DataBankError):
    """400: the service could not use the request (e.g. no `file` part)."""


class Unauthorized(DataBankError):
    """401: no API key was sent and this permission needs one."""


class Forbidden(DataBankError):
    """403: the API key is not valid for this permission."""


class NotFound(DataBankError):
    """404: no file with this id (or it was deleted)."""


class PayloadTooLarge(DataBankError):
    """413: the file is over the service's size cap."""


class InvalidRange(DataBankError):
    """416: a Range the service refused (malformed, several, or past the end)."""


class InsufficientStorage(_Transient):
    """507: the service's disk is too full to take the file."""


class IntegrityError(_Transient):
    """The bytes are not what they claim to be: size or SHA-256 differ from the answer."""


class Unavailable(_Transient):
    """Unreachable, timing out, or answering 408/429/5xx after every retry."""


class UnexpectedAnswer(DataBankError):
    """An answer outside the contract (unknown status, body that does not parse)."""


BY_STATUS: dict[int, type[DataBankError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    416: InvalidRange,
    507: InsufficientStorage,
}
