"""Ids in paths and headers, checked by shape before anything is looked up.

`RunId` and `TokenizerId` are the `{run_id}` and `{tokenizer_id}` path parameters of the
routes: a value that is not shaped like an id this service makes is answered before Redis is
asked. `LastEventId` is the SSE resume header, a Redis stream id.

A malformed path id answers **404 NOT_FOUND**, not 422, deliberately:

- a path names a resource; `run-nope` names none, and never can (RFC 9110: 404 is "no
  current representation for the target resource"). It is the same answer as a well-formed
  id that is unknown or expired, so clients handle "no such run" in one place, and the
  answer does not depend on how we spell ids today;
- it keeps the contract clients and the suite already rely on (`/runs/run-nope`,
  `/tokenizers/tok-unknown` answer 404);
- the message still says what an id looks like, so a client bug (a tokenizer id sent to
  `/runs/{run_id}`, a truncated id) is plain to see, and the OpenAPI document gives the
  pattern of each path parameter.

Ids in request bodies (`corpus_file_id`, `from_run_id`) are fields of the request models,
refused with 422 there like any other invalid field. `FileId` is the `{file_id}` of a
corpus (`DELETE /corpora/{file_id}`), a Data Bank id, 404 too when malformed. No route takes
an eval id in its path.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Path

from model_trainer.errors import AppError, ErrorCode, NotFoundError
from service_common.databank_contract import FILE_ID_PATTERN

# `TokenizerTrainConfig.tokenizer_id()`: "tok-" and 16 hex digits of a SHA-256.
TOKENIZER_ID_PATTERN = r"^tok-[0-9a-f]{16}$"
# A Redis stream entry id, `<milliseconds>-<sequence>`, or "0" (from the start).
STREAM_ID_PATTERN = r"^(0|[0-9]{1,20}-[0-9]{1,20})$"
_U64_MAX = 2**64 - 1

RUN_ID_PATTERN = r"^run-[0-9a-f]{16}$"
SWEEP_ID_PATTERN = r"^swp-[0-9a-f]{16}$"
_SWEEP_ID = re.compile(SWEEP_ID_PATTERN)
_RUN_ID = re.compile(RUN_ID_PATTERN)
_TOKENIZER_ID = re.compile(TOKENIZER_ID_PATTERN)
_STREAM_ID = re.compile(STREAM_ID_PATTERN)
_FILE_ID = re.compile(FILE_ID_PATTERN)


def _shown(value: str) -> str:
    """The caller's value for a message: quoted, and cut short (it may be anything)."""
    return repr(value if len(value) <= 80 else value[:80] + "...")


def _run_id(
    run_id: Annotated[
        str,
        Path(
            description="`run-` and 16 hex digits, as `POST /runs/train` answered; "
            "anything else is an unknown run (404)",
            json_schema_extra={"pattern": RUN_ID_PATTERN},
        ),
    ],
) -> str:
    return check_run_id(run_id)


def check_run_id(run_id: str) -> str:
    """`run_id` when shaped like a run id; else the 404 of an unknown run (the module doc)."""
    if _RUN_ID.fullmatch(run_id) is None:
        raise NotFoundError(f"unknown run {_shown(run_id)}: run ids are 'run-' and 16 hex digits")
    return run_id


def _sweep_id(
    sweep_id: Annotated[
        str,
        Path(
            description="`swp-` and 16 hex digits, as `POST /sweeps` answered; anything else "
            "is an unknown sweep (404)",
            json_schema_extra={"pattern": SWEEP_ID_PATTERN},
        ),
    ],
) -> str:
    if _SWEEP_ID.fullmatch(sweep_id) is None:
        raise NotFoundError(
            f"unknown sweep {_shown(sweep_id)}: sweep ids are 'swp-' and 16 hex digits"
        )
    return sweep_id


def _tokenizer_id(
    tokenizer_id: Annotated[
        str,
        Path(
            description="`tok-` and 16 hex digits, as `POST /tokenizers/train` answered; "
            "anything else is an unknown tokenizer (404)",
            json_schema_extra={"pattern": TOKENIZER_ID_PATTERN},
        ),
    ],
) -> str:
    if _TOKENIZER_ID.fullmatch(tokenizer_id) is None:
        raise NotFoundError(
            f"unknown tokenizer {_shown(tokenizer_id)}: tokenizer ids are 'tok-' and 16 hex digits"
        )
    return tokenizer_id


def _file_id(
    file_id: Annotated[
        str,
        Path(
            description="a Data Bank id (64 hex digits), as `POST /corpora` or `POST /models` "
            "answered; anything else is an unknown file (404)",
            json_schema_extra={"pattern": FILE_ID_PATTERN},
        ),
    ],
) -> str:
    if _FILE_ID.fullmatch(file_id) is None:
        raise NotFoundError(f"unknown file {_shown(file_id)}: file ids are 64 hex digits")
    return file_id


def is_stream_id(value: str) -> bool:
    """Whether Redis takes `value` as the exclusive start of a stream range."""
    if _STREAM_ID.fullmatch(value) is None:
        return False
    if value == "0":
        return True
    millis, sequence = (int(part) for part in value.split("-"))
    # Nothing comes after the largest id: Redis refuses it as an exclusive start.
    return millis <= _U64_MAX and sequence <= _U64_MAX and (millis, sequence) != (_U64_MAX,) * 2


def _last_event_id(
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="resume after this event id (a Redis stream id such as "
            "`1718000000000-0`, or `0` for all lines); anything else is a 400",
        ),
    ] = None,
) -> str:
    if last_event_id is None:
        return "0"
    if not is_stream_id(last_event_id):
        raise AppError(
            ErrorCode.BAD_REQUEST,
            f"Last-Event-ID {_shown(last_event_id)} is not an event id of this stream: "
            "send back the `id:` of the last event received (`<ms>-<seq>`), or 0",
        )
    return last_event_id


RunId = Annotated[str, Depends(_run_id)]
SweepId = Annotated[str, Depends(_sweep_id)]
TokenizerId = Annotated[str, Depends(_tokenizer_id)]
FileId = Annotated[str, Depends(_file_id)]
# "0" when the header is absent.
LastEventId = Annotated[str, Depends(_last_event_id)]
