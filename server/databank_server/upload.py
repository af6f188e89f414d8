"""Receive `POST /files` as a stream: the `file` part goes to a temp file, hashed on the way.

Nothing is held in memory beyond one batch (`WRITE_BATCH_BYTES`): python-multipart's
streaming parser hands us the part's bytes as they arrive, and a worker thread hashes and
writes each batch so the event loop keeps serving other requests. The size cap is enforced
as bytes arrive, and the temp file is removed on every failure.

Refusals (413, 507, 400) are answered only after the rest of the body has been read and
thrown away: a server that answers and closes while the client is still sending makes the
client's kernel see a reset, and the client then reports a broken connection instead of
the 413 it should act on. A caller without a valid key is not owed that: at most
`UNAUTHENTICATED_BODY_BYTES` of its body are read (enough for a small upload to get its
401/403 cleanly), then it is answered and the connection closed, so nobody can make the
server read gigabytes without a key.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from databank_server.storage import FileStore
from service_common.databank_contract import ErrorCode, FileInfo

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

WRITE_BATCH_BYTES = 1 << 20
# The most of an unauthenticated upload read before its refusal (see the module docstring).
UNAUTHENTICATED_BODY_BYTES = 64 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class UploadRejected(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _FilePart:
    """Collects the one part named `file` from python-multipart's callbacks."""

    max_bytes: int | None
    content_type: str = DEFAULT_CONTENT_TYPE
    seen: bool = False
    size: int = 0
    pending: bytearray = field(default_factory=bytearray)
    problem: UploadRejected | None = None
    _in_file: bool = False
    _header_name: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _headers: dict[str, str] = field(default_factory=dict)

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        if params.get(b"name") != b"file":
            return  # other form fields are allowed and ignored
        if self.seen:
            self._refuse(400, ErrorCode.BAD_REQUEST, "send exactly one part named 'file'")
            return
        self.seen = self._in_file = True
        self.content_type = self._headers.get("content-type") or DEFAULT_CONTENT_TYPE

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file or self.problem is not None:
            return
        self.size += end - start
        if self.max_bytes is not None and self.size > self.max_bytes:
            self._refuse(
                413,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"file is over the {self.max_bytes}-byte cap (MAX_FILE_BYTES)",
            )
            return
        self.pending.extend(data[start:end])

    def _part_end(self) -> None:
        self._in_file = False

    def _refuse(self, status: int, code: ErrorCode, message: str) -> None:
        if self.problem is None:
            self.problem = UploadRejected(status, code, message)


class _TempWriter:
    """Hashes and writes batches in a worker thread, so disk waits never block the loop."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    async def write(self, part: _FilePart) -> None:
        if not part.pending:
            return
        batch = bytes(part.pending)
        part.pending.clear()
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            part.problem = UploadRejected(
                507, ErrorCode.INSUFFICIENT_STORAGE, "disk full while writing"
            )

    def _write(self, batch: bytes) -> None:
        self.digest.update(batch)
        self.out.write(batch)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._flush_and_close)

    def _flush_and_close(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()


async def receive_upload(request: Request, store: FileStore, max_bytes: int | None) -> FileInfo:
    problem = _precheck(request, store, max_bytes)
    if problem is not None:
        await drain_body(request)
        raise problem
    part = _FilePart(max_bytes)
    parser = MultipartParser(_boundary(request), part.callbacks())
    temp, out = store.new_upload()
    writer = _TempWriter(out)
    try:
        async for chunk in _body(request):
            if part.problem is not None:
                continue  # draining: see the module docstring
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                part.problem = UploadRejected(400, ErrorCode.BAD_REQUEST, f"bad multipart: {exc}")
            if len(part.pending) >= WRITE_BATCH_BYTES:
                await writer.write(part)
        if part.problem is None:
            parser.finalize()
            await writer.write(part)
        if part.problem is not None:
            raise part.problem
        if not part.seen:
            raise UploadRejected(400, ErrorCode.BAD_REQUEST, "no multipart part named 'file'")
        await writer.close()
        return await anyio.to_thread.run_sync(
            store.commit, temp, writer.digest.hexdigest(), part.size, part.content_type
        )
    finally:
        out.close()
        temp.unlink(missing_ok=True)  # a no-op once commit moved it into place


def _precheck(request: Request, store: FileStore, max_bytes: int | None) -> UploadRejected | None:
    try:
        _boundary(request)
        declared = int(request.headers.get("content-length") or "0")
    except UploadRejected as exc:
        return exc
    except ValueError:
        return UploadRejected(400, ErrorCode.BAD_REQUEST, "invalid Content-Length")
    if not store.has_room_for(declared):
        return UploadRejected(507, ErrorCode.INSUFFICIENT_STORAGE, "not enough free disk space")
    # The body carries some multipart framing around the file, hence the slack.
    if max_bytes is not None and declared > max_bytes + 64 * 1024:
        return UploadRejected(
            413,
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"file is over the {max_bytes}-byte cap (MAX_FILE_BYTES)",
        )
    return None


def _boundary(request: Request) -> bytes:
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadRejected(
            400, ErrorCode.BAD_REQUEST, "send multipart/form-data with one part named 'file'"
        )
    return boundary


async def drain_body(request: Request, max_bytes: int | None = None) -> bool:
    """Read and drop the rest of the body, or only up to `max_bytes` of it: whether all of
    it was read (a refusal may then keep the connection)."""
    read = 0
    async for chunk in _body(request):
        read += len(chunk)
        if max_bytes is not None and read > max_bytes:
            return False
    return True


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect as exc:
        # Not a server fault: answer (to nobody) with a 400 and an info log line.
        raise UploadRejected(
            400, ErrorCode.BAD_REQUEST, "the client went away before the end of the upload"
        ) from exc
