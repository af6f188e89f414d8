"""The trainer's Data Bank client: streamed, verified, retried only where that is safe.

- Uploads stream the file as multipart (one part named `file`) with a known length, hashing
  on the way; the answer's `file_id`/`sha256` must equal that hash.
- Downloads go to a temp file beside the destination, resume with `Range: bytes=<have>-`
  after a dropped connection, and are renamed into place only when the size matches the
  announced total and the SHA-256 matches both the ETag and the file_id.
- Retries (tenacity: bounded, exponential backoff with jitter, at least what Retry-After
  asks) only for connection failures, timeouts and 408/429/5xx, and only on requests that
  are safe to repeat: GET, HEAD, DELETE (answered 204 when already gone) and the POST of
  content-addressed bytes.
- Every documented 4xx raises its own `DataBankError` subclass; the API key never reaches
  a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NoReturn, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from model_trainer.databank.archive import pack_directory
from model_trainer.databank.errors import (
    BY_STATUS,
    DataBankError,
    IntegrityError,
    InvalidFileId,
    Unavailable,
    UnexpectedAnswer,
)
from service_common.databank_contract import (
    API_KEY_HEADER,
    REQUEST_ID_HEADER,
    ErrorBody,
    FileInfo,
    is_file_id,
)
from service_common.jsonlog import log_fields, request_id_var

log = logging.getLogger("model_trainer.databank")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=30.0)
CHUNK_BYTES = 1 << 20
# 5xx means "try again later", except these three, which say so for good.
_PERMANENT_5XX = frozenset({501, 505, 507})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_Model = TypeVar("_Model", bound=BaseModel)


class FileHead(BaseModel):
    """What `HEAD /files/{file_id}` tells without the body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int
    etag: str
    content_type: str


class DataBankClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        backoff_base_sec: float = 0.5,
        backoff_max_sec: float = 30.0,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        # The key lives only in the httpx client's default headers: never in our attributes,
        # messages or logs.
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={API_KEY_HEADER: api_key} if api_key else {},
            transport=transport,
            timeout=timeout,
        )
        self._max_retries = max_retries
        self._backoff_base = backoff_base_sec
        self._backoff_max = backoff_max_sec
        self._chunk = chunk_bytes

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DataBankClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- uploads -------------------------------------------------------------------------

    def upload_file(self, path: Path, content_type: str = "application/octet-stream") -> FileInfo:
        """Stream `path` to `POST /files`; the answer must name the SHA-256 we sent."""
        started = time.monotonic()
        body = _MultipartFile(path, content_type, self._chunk)
        response = self._request(
            "POST",
            "/files",
            ok=(200, 201),
            headers={"Content-Type": body.content_type, "Content-Length": str(body.length)},
            content=body,
        )
        info = _parse(FileInfo, response)
        if body.sha256 is None or info.file_id != body.sha256 or info.sha256 != body.sha256:
            raise IntegrityError(
                f"uploaded {path.name} with sha256 {body.sha256}, the answer says "
                f"file_id {info.file_id} / sha256 {info.sha256}"
            )
        if info.size != body.file_size:
            raise IntegrityError(f"uploaded {body.file_size} bytes, the answer says {info.size}")
        log.info(
            "uploaded %s (%d bytes) in %.1fs",
            path.name,
            info.size,
            time.monotonic() - started,
            extra=log_fields("databank_uploaded", file_id=info.file_id),
        )
        return info

    def upload_directory(
        self, folder: Path, top_name: str, *, spool_dir: Path | None = None
    ) -> FileInfo:
        """Tar `folder` as `top_name/...` (e.g. `model-<run_id>/`) and upload the tar.

        The tar is spooled to a temp file (beside `folder` unless `spool_dir` is given), never
        held in memory, and removed afterwards.
        """
        with tempfile.TemporaryDirectory(dir=spool_dir or folder.parent, prefix=".pack-") as tmp:
            tar_path = pack_directory(folder, top_name, Path(tmp) / f"{top_name}.tar")
            return self.upload_file(tar_path, content_type="application/x-tar")

    # -- metadata ------------------------------------------------------------------------

    def head(self, file_id: str) -> FileHead:
        response = self._request("HEAD", _file_path(file_id), ok=(200,))
        try:
            return FileHead(
                size=int(response.headers["content-length"]),
                etag=_unquote_etag(response.headers["etag"]),
                content_type=response.headers.get("content-type", "application/octet-stream"),
            )
        except (KeyError, ValueError) as exc:
            raise UnexpectedAnswer(f"HEAD {file_id}: incomplete headers ({exc})") from exc

    def info(self, file_id: str) -> FileInfo:
        return _parse(FileInfo, self._request("GET", f"{_file_path(file_id)}/info", ok=(200,)))

    def exists(self, file_id: str) -> bool:
        response = self._request("HEAD", _file_path(file_id), ok=(200, 404))
        return response.status_code == 200

    def not_ready_reason(self) -> str | None:
        """None when Data Bank's /readyz answers 200, else why not (one try, for probes)."""
        try:
            response = self._http.get("/readyz", timeout=3.0)
        except httpx.TransportError as exc:
            return f"data bank unreachable: {type(exc).__name__}"
        if response.status_code == 200:
            return None
        return f"data bank not ready: HTTP {response.status_code}"

    def delete(self, file_id: str) -> None:
        """Delete; a file already gone is not an error (404 comes only from strict mode)."""
        self._request("DELETE", _file_path(file_id), ok=(204, 200, 404))
        log.info("deleted %s", file_id, extra=log_fields("databank_deleted", file_id=file_id))

    # -- downloads -----------------------------------------------------------------------

    def download(self, file_id: str, dest: Path) -> Path:
        """Fetch into `dest` (replaced atomically); on any failure no file is left behind."""
        path = _file_path(file_id)
        started = time.monotonic()
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as out:
                partial = _PartialFile(out)
                self._fill(path, partial)
                partial.verify(file_id)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.info(
            "downloaded %s (%d bytes) in %.1fs",
            file_id,
            partial.have,
            time.monotonic() - started,
            extra=log_fields("databank_downloaded", file_id=file_id),
        )
        return dest

    def _fill(self, path: str, partial: _PartialFile) -> None:
        """GET until the temp file holds every byte, resuming after each dropped connection.

        A retry that made progress starts a fresh retry budget: a long download over a
        flaky link should finish, not die after N drops spread over an hour.
        """
        budget = _ProgressBudget(partial, self._max_retries)

        def once() -> None:
            self._get_once(path, partial)
            if not partial.complete:
                raise _Retryable("body ended early")

        try:
            for attempt in Retrying(
                stop=budget.spent,
                wait=self._wait(budget.failures),
                retry=retry_if_exception_type(_Retryable),
                before_sleep=self._log_retry("GET", path),
                reraise=True,
            ):
                with attempt:
                    once()
        except _Retryable as exc:
            raise Unavailable(
                f"GET {path}: {exc.problem} at byte {partial.have}; gave up after "
                f"{budget.failures(None)} tries"
            ) from exc

    def _get_once(self, path: str, partial: _PartialFile) -> None:
        # identity: offsets in Range and the hash both refer to the stored bytes themselves.
        headers = {"Accept-Encoding": "identity"}
        if partial.have:
            headers["Range"] = f"bytes={partial.have}-"
        with self._http.stream("GET", path, headers=self._headers(headers)) as response:
            if response.status_code not in (200, 206):
                response.read()
                if _retryable(response.status_code):
                    raise _Retryable.of(response)
                _raise_for(response)
            partial.start(response)
            # As they arrive (no re-chunking): bytes buffered here would be lost on a drop.
            try:
                for chunk in response.iter_bytes():
                    partial.append(chunk)
            except httpx.TransportError as exc:
                raise _Retryable(f"{type(exc).__name__}: {exc}") from exc

    # -- plumbing ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        ok: Collection[int],
        headers: Mapping[str, str] | None = None,
        content: _MultipartFile | None = None,
    ) -> httpx.Response:
        def once() -> httpx.Response:
            try:
                response = self._http.request(
                    method, path, headers=self._headers(headers), content=content
                )
            except httpx.TransportError as exc:
                raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code in ok:
                return response
            if not _retryable(response.status_code):
                _raise_for(response)
            raise _Retryable.of(response)

        tries = stop_after_attempt(self._max_retries + 1)
        try:
            for attempt in Retrying(
                stop=tries,
                wait=self._wait(lambda state: state.attempt_number),
                retry=retry_if_exception_type(_Retryable),
                before_sleep=self._log_retry(method, path),
                reraise=True,
            ):
                with attempt:
                    return once()
        except _Retryable as exc:
            raise Unavailable(
                f"{method} {path}: {exc.problem}; gave up after {self._max_retries + 1} tries",
                status=exc.status,
            ) from exc
        raise AssertionError("unreachable: Retrying returns or raises")

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        request_id = request_id_var.get()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        return headers

    def _wait(self, failures: Callable[[RetryCallState], int]) -> Callable[[RetryCallState], float]:
        """Exponential in the failures that count, with jitter, and at least what the
        service's Retry-After asked (capped)."""

        def wait(state: RetryCallState) -> float:
            delay = min(self._backoff_max, self._backoff_base * 2 ** (failures(state) - 1))
            delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not secrets
            outcome = state.outcome.exception() if state.outcome else None
            if isinstance(outcome, _Retryable) and outcome.retry_after is not None:
                delay = min(self._backoff_max, max(delay, outcome.retry_after))
            return delay

        return wait

    def _log_retry(self, method: str, path: str) -> Callable[[RetryCallState], None]:
        def log_retry(state: RetryCallState) -> None:
            outcome = state.outcome.exception() if state.outcome else None
            log.warning(
                "data bank %s %s failed (%s); retry %d/%d in %.2fs",
                method,
                path,
                outcome.problem if isinstance(outcome, _Retryable) else outcome,
                state.attempt_number,
                self._max_retries,
                state.upcoming_sleep,
                extra=log_fields("databank_retry"),
            )

        return log_retry


class _Retryable(Exception):
    """A failure worth another try: the connection, a timeout, or 408/429/5xx."""

    def __init__(
        self, problem: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.retry_after = retry_after

    @classmethod
    def of(cls, response: httpx.Response) -> _Retryable:
        return cls(f"HTTP {response.status_code}", response.status_code, _retry_after(response))


class _ProgressBudget:
    """A download's retry budget: failures since the last one that made progress."""

    def __init__(self, partial: _PartialFile, max_retries: int) -> None:
        self._partial = partial
        self._max_retries = max_retries
        self._had = 0
        self._failures = 0
        self._seen = 0  # the attempt number last counted

    def failures(self, state: RetryCallState | None) -> int:
        if state is not None and state.attempt_number != self._seen:
            self._seen = state.attempt_number
            progressed = self._partial.have > self._had
            self._had = self._partial.have
            self._failures = 1 if progressed else self._failures + 1
        return self._failures

    def spent(self, state: RetryCallState) -> bool:
        return self.failures(state) > self._max_retries


class _PartialFile:
    """The temp file of a download and the running SHA-256 of what it holds."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.have = 0
        self.total: int | None = None
        self.etag: str | None = None

    @property
    def complete(self) -> bool:
        return self.total is not None and self.have >= self.total

    def start(self, response: httpx.Response) -> None:
        """Check a 200/206 answer against what we hold; a 200 means start over."""
        etag = response.headers.get("etag")
        if etag is not None:
            etag = _unquote_etag(etag)
            if self.etag is not None and etag != self.etag:
                raise IntegrityError(f"ETag changed between requests: {self.etag} -> {etag}")
            self.etag = etag
        if response.status_code == 200:
            self._restart()
            total = _int_header(response, "content-length")
        else:
            first, total = _content_range(response)
            if first != self.have:
                raise UnexpectedAnswer(f"asked for bytes from {self.have}, got from {first}")
        if self.total is not None and total != self.total:
            raise IntegrityError(f"size changed between requests: {self.total} -> {total}")
        self.total = total

    def append(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.digest.update(chunk)
        self.have += len(chunk)

    def verify(self, file_id: str) -> None:
        if self.have != self.total:
            raise IntegrityError(f"{file_id}: got {self.have} bytes, expected {self.total}")
        actual = self.digest.hexdigest()
        if self.etag is not None and actual != self.etag:
            raise IntegrityError(f"{file_id}: body sha256 {actual} does not match ETag {self.etag}")
        if actual != file_id:
            raise IntegrityError(f"{file_id}: body sha256 is {actual}")

    def _restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.digest = hashlib.sha256()
        self.have = 0


class _MultipartFile:
    """A multipart/form-data body with one `file` part, read from disk as it is sent.

    Iterable more than once (each retry re-reads the file); `sha256` is the hash of the
    bytes of the last complete pass.
    """

    def __init__(self, path: Path, content_type: str, chunk_bytes: int) -> None:
        self.path = path
        self.file_size = path.stat().st_size
        self.sha256: str | None = None
        self._chunk = chunk_bytes
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", path.name) or "file"
        self._head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self.length = len(self._head) + self.file_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        sent = 0
        yield self._head
        with self.path.open("rb") as source:
            while chunk := source.read(self._chunk):
                digest.update(chunk)
                sent += len(chunk)
                yield chunk
        if sent != self.file_size:
            raise DataBankError(f"{self.path} changed size while being uploaded")
        yield self._tail
        self.sha256 = digest.hexdigest()


def _file_path(file_id: str) -> str:
    if not is_file_id(file_id):
        raise InvalidFileId(f"not a file_id (64 lowercase hex characters): {file_id[:80]!r}")
    return f"/files/{file_id}"


def _retryable(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status not in _PERMANENT_5XX)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _raise_for(response: httpx.Response) -> NoReturn:
    try:
        body = ErrorBody.model_validate_json(response.content)
        code, message, request_id = body.code, body.message, body.request_id
    except ValidationError:
        code, message, request_id = None, response.text[:200], None
    status = response.status_code
    error = BY_STATUS.get(status)
    if error is None:
        error = Unavailable if _retryable(status) else UnexpectedAnswer
    request = response.request
    raise error(
        f"{request.method} {request.url.path}: {status} {code or ''} {message}".strip(),
        status=status,
        service_code=code,
        request_id=request_id,
    )


def _parse(model: type[_Model], response: httpx.Response) -> _Model:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise UnexpectedAnswer(f"unexpected answer body: {exc}") from exc


def _unquote_etag(value: str) -> str:
    return value.removeprefix("W/").strip('"').lower()


def _int_header(response: httpx.Response, name: str) -> int:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError) as exc:
        raise UnexpectedAnswer(f"answer without a valid {name} header") from exc


def _content_range(response: httpx.Response) -> tuple[int, int]:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
    if match is None:
        raise UnexpectedAnswer("206 without a valid Content-Range header")
    return int(match.group(1)), int(match.group(3))
