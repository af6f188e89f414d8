"""The local Data Bank's error vocabulary: the contract's codes on the shared error body.

One body for every failure, `{code, message, request_id}`, with `request_id` echoing the
caller's X-Request-ID (or one we made), as the contract says. The body, the handlers and the
request-id middleware are `service_common`'s; this module gives them the contract's codes,
the server's exception, and its answer to an invalid request (400, the contract has no 422).
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from service_common.databank_contract import ErrorCode
from service_common.error_bodies import ErrorVocabulary, error_response
from service_common.service_error import ServiceError

# Named for the service, so its JSON log lines say category "databank".
log = logging.getLogger("databank")


class ApiError(ServiceError[ErrorCode]):
    """A refusal the contract documents: raise it with its status and code."""


def _validation_response(exc: RequestValidationError) -> Response:
    # The contract has no 422: a request we cannot read is a 400.
    return error_response(400, ErrorCode.BAD_REQUEST, f"invalid request: {exc.errors()}")


# Pass to `service_common.error_bodies.install_error_bodies`.
VOCABULARY = ErrorVocabulary(
    log=log,
    codes=ErrorCode,
    error_type=ApiError,
    fallback_code=ErrorCode.BAD_REQUEST,
    internal_error=ErrorCode.INTERNAL_ERROR,
    internal_message="internal error; see logs",
    validation_response=_validation_response,
)
