"""The API's error vocabulary on the shared error body: `{code, message, request_id}`.

The body, the handlers and the request-id middleware (X-Request-ID, access log, the
last-resort 500) are `service_common`'s; this module gives them the API's vocabulary: its
ErrorCode, AppError, and validation errors answered 422 with `details` (one FieldError per
field).
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from model_trainer.errors import AppError, ErrorCode
from service_common.error_bodies import ErrorVocabulary, error_response

log = logging.getLogger("model_trainer.api")


class FieldError(BaseModel):
    """One entry of a 422's `details`: which field, what is wrong with it."""

    model_config = ConfigDict(extra="forbid")

    field: str
    message: str
    type: str


def _validation_response(exc: RequestValidationError) -> Response:
    details: list[FieldError] = []
    for err in exc.errors():
        loc = err.get("loc", ())
        # Drop the "body"/"query" prefix: clients want the field's own name.
        parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
        details.append(
            FieldError(
                field=".".join(parts) or "body",
                message=str(err.get("msg", "invalid")),
                type=str(err.get("type", "value_error")),
            )
        )
    fields = ", ".join(d.field for d in details)
    return error_response(
        422, ErrorCode.VALIDATION_ERROR, f"invalid request: check {fields}", details=details
    )


# Pass to `service_common.error_bodies.install_error_bodies`.
VOCABULARY = ErrorVocabulary(
    log=log,
    codes=ErrorCode,
    error_type=AppError,
    fallback_code=ErrorCode.BAD_REQUEST,
    internal_error=ErrorCode.INTERNAL_ERROR,
    internal_message="internal error; see the server logs",
    validation_response=_validation_response,
)
