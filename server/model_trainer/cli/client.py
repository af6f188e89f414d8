"""The API over HTTP, with every failure turned into a `CliError` that carries its exit code.

The answers are parsed into the API's own response models (`api.schemas`): the CLI ships in
the same package as the server it talks to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from enum import IntEnum
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from model_trainer.databank.errors import DataBankError, NotFound, Unavailable
from model_trainer.errors import TrainerError

_Model = TypeVar("_Model", bound=BaseModel)
_JSON = TypeAdapter(JsonValue)
API_KEY_HEADER = "X-API-Key"
TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=10.0)
# An upload's answer comes once the API has checked the whole file and stored it in Data Bank.
UPLOAD_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=10.0)
UPLOAD_CHUNK_BYTES = 1024 * 1024


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # a job failed or was cancelled, the server erred, the key was refused
    USAGE = 2  # bad flags or arguments (click's own code)
    NOT_FOUND = 3  # 404: no such run, tokenizer, file or route
    REFUSED = 4  # 409 / 422: the server understood and said no
    UNAVAILABLE = 5  # 503, or nothing answers at the URL


class CliError(TrainerError):
    """What went wrong, said for a person, and the exit code it ends the CLI with;
    `server_code`: the API's `ErrorCode` when the API refused."""

    def __init__(
        self,
        message: str,
        exit_code: ExitCode = ExitCode.FAILURE,
        *,
        status: int | None = None,
        server_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status
        self.server_code = server_code

    def as_json(self) -> dict[str, JsonValue]:
        return {
            "error": {
                "message": self.message,
                "exit_code": int(self.exit_code),
                "status": self.status,
                "code": self.server_code,
            }
        }


def exit_code_for(status: int) -> ExitCode:
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (409, 422):
        return ExitCode.REFUSED
    if status in (502, 503, 504):
        return ExitCode.UNAVAILABLE
    return ExitCode.FAILURE


def _error_parts(response: httpx.Response) -> tuple[str | None, str]:
    """(code, message) from the API's error body `{code, message, request_id, details?}`."""
    try:
        body = _JSON.validate_json(response.content)
    except ValidationError:
        return None, response.text.strip()[:300] or response.reason_phrase
    if not isinstance(body, dict):
        return None, str(body)[:300]
    code = body.get("code")
    message = body.get("message") or body.get("detail") or response.reason_phrase
    text = str(message)
    details = body.get("details")
    if isinstance(details, list):
        fields = [f"{d.get('field')}: {d.get('message')}" for d in details if isinstance(d, dict)]
        if fields:
            text = f"{text} ({'; '.join(fields)})"
    return (str(code) if code is not None else None), text


def error_from_response(response: httpx.Response, what: str) -> CliError:
    status = response.status_code
    code, message = _error_parts(response)
    if status in (401, 403):
        return CliError(
            f"{what}: the API refused the key (HTTP {status}: {message}); "
            "give the right one with --api-key or MODEL_TRAINER_API_KEY",
            ExitCode.FAILURE,
            status=status,
            server_code=code,
        )
    return CliError(
        f"{what}: {message} (HTTP {status})", exit_code_for(status), status=status, server_code=code
    )


def databank_error(exc: DataBankError, what: str) -> CliError:
    if isinstance(exc, NotFound):
        return CliError(f"{what}: {exc}", ExitCode.NOT_FOUND)
    if isinstance(exc, Unavailable):
        return CliError(f"{what}: Data Bank is unavailable: {exc}", ExitCode.UNAVAILABLE)
    return CliError(f"{what}: {exc}", exit_code_for(exc.status) if exc.status else ExitCode.FAILURE)


class ApiClient:
    def __init__(
        self, base_url: str, api_key: str | None, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The key lives only in the client's default headers: never in messages.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={API_KEY_HEADER: api_key} if api_key else {},
            timeout=TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, JsonValue] | None = None,
        params: Mapping[str, str | int | list[str]] | None = None,
    ) -> httpx.Response:
        """The answer when it is 2xx; any other answer or no answer raises `CliError`."""
        what = f"{method} {path}"
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.is_success:
            return response
        raise error_from_response(response, what)

    def unreachable(self, exc: httpx.TransportError) -> CliError:
        return CliError(
            f"the API at {self.base_url} does not answer ({type(exc).__name__}: {exc}); "
            "is it running? (--url or MODEL_TRAINER_URL)",
            ExitCode.UNAVAILABLE,
        )

    def upload(
        self, path: str, file: Path, params: Mapping[str, str | int], content_type: str
    ) -> httpx.Response:
        """POST the file's bytes as the body, streamed in chunks with its Content-Length (an
        API whose cap it is over answers 413 at once); 2xx or `CliError` as `request`."""
        size = file.stat().st_size

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                    yield chunk

        try:
            response = self._http.post(
                path,
                content=chunks(),
                params=params,
                headers={"Content-Type": content_type, "Content-Length": str(size)},
                timeout=UPLOAD_TIMEOUT,
            )
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.is_success:
            return response
        raise error_from_response(response, f"POST {path}")

    def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> JsonValue:
        return parse_json(self.request("GET", path, params=params))

    def get(
        self,
        model: type[_Model],
        path: str,
        params: Mapping[str, str | int | list[str]] | None = None,
    ) -> _Model:
        return parse(model, self.request("GET", path, params=params))

    def post(self, model: type[_Model], path: str, body: Mapping[str, JsonValue]) -> _Model:
        return parse(model, self.request("POST", path, body=body))

    def sse(self, path: str) -> Iterator[tuple[str, str]]:
        """Server-sent events of `path` as (event, data) pairs, until the server ends it. A
        stream the server ends for its lifetime (`event: reconnect`) is resumed after the
        last event id seen, as the server asks."""
        last_id: str | None = None
        while True:
            resume = False
            for event, data, event_id in self._sse_once(path, last_id):
                if event_id is not None:
                    last_id = event_id
                if event == "reconnect":
                    resume = True  # the server closes this stream next
                else:
                    yield event, data
            if not resume:
                return

    def _sse_once(self, path: str, last_id: str | None) -> Iterator[tuple[str, str, str | None]]:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            with self._http.stream(
                "GET",
                path,
                headers=headers,
                timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=10.0),
            ) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response, f"GET {path}")
                event, data, event_id = "message", list[str](), None
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event, "\n".join(data), event_id
                        event, data, event_id = "message", [], None
                    elif line.startswith(":"):
                        continue  # keep-alive comment
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc


def parse(model: type[_Model], response: httpx.Response) -> _Model:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise CliError(
            f"unexpected answer from {response.request.method} {response.request.url.path}: "
            f"{exc.error_count()} field error(s): {exc.errors()[0]['msg']}",
        ) from exc


def parse_json(response: httpx.Response) -> JsonValue:
    try:
        return _JSON.validate_json(response.content)
    except ValidationError as exc:
        raise CliError(f"the answer to {response.request.url.path} is not JSON") from exc


def dumps(value: JsonValue) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
