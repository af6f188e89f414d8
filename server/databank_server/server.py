"""A Data Bank-compatible file server for local runs and tests (`python -m databank_server`).

It speaks /work/shared/contracts/data-bank-api.md with the real service's settings, so the
trainer's client cannot tell the two apart. Choices the contract leaves open:
- an id that is not 64 lowercase hex characters is answered 400 BAD_REQUEST (after the key
  check, so callers without a key learn nothing);
- suffix ranges (`bytes=-n`) count as malformed (416 INVALID_RANGE), like several ranges.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from hypercorn.config import Config
from hypercorn.run import run
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from databank_server.errors import VOCABULARY, ApiError
from databank_server.ranges import MalformedRange, UnsatisfiableRange, parse_range
from databank_server.storage import FileStore
from databank_server.upload import (
    UNAUTHENTICATED_BODY_BYTES,
    UploadRejected,
    drain_body,
    receive_upload,
)
from service_common.databank_contract import (
    API_KEY_HEADER,
    ErrorCode,
    FileInfo,
    HealthBody,
    ReadyBody,
    is_file_id,
)
from service_common.docs_page import docs_router
from service_common.error_bodies import install_error_bodies
from service_common.jsonlog import log_fields, setup_logging

# Named for the service, so its JSON log lines say category "databank".
log = logging.getLogger("databank")

READ_CHUNK_BYTES = 1 << 20
DEFAULT_PORT = 8000


class Permission(StrEnum):
    UPLOAD = "upload"
    READ = "read"
    DELETE = "delete"


class DataBankSettings(BaseSettings):
    """The real service's environment variables (no prefix, no .env file)."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False)

    data_root: Path = Path("/data/files")
    min_free_gb: float = Field(default=1.0, ge=0)
    # Larger uploads get 413. 10 GiB: the trainer's largest artifact (app.artifact_max_bytes,
    # 8 GiB) with its tar's overhead.
    max_file_bytes: int = Field(default=10 * 1024**3, ge=1)
    # Comma-separated. Read and delete fall back to the upload keys. Without any key the
    # server refuses to start, unless ALLOW_ANONYMOUS=true (open to anyone who can reach it:
    # then it says so in a warning at every start).
    api_upload_keys: str = ""
    api_read_keys: str = ""
    api_delete_keys: str = ""
    allow_anonymous: bool = False
    delete_strict_404: bool = False
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    def keys_for(self, permission: Permission) -> frozenset[str]:
        upload = _split_keys(self.api_upload_keys)
        if permission is Permission.UPLOAD:
            return upload
        own = self.api_read_keys if permission is Permission.READ else self.api_delete_keys
        return _split_keys(own) or upload


def _split_keys(raw: str) -> frozenset[str]:
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


class KeylessRefused(Exception):
    """No API key is configured and anonymous access was not asked for: not started."""


def keyless_refusal(settings: DataBankSettings) -> str | None:
    """Why this server must not start (closed by default: no key, and no ALLOW_ANONYMOUS),
    or None."""
    if settings.keys_for(Permission.UPLOAD) or settings.allow_anonymous:
        return None
    return (
        "no API key configured (API_UPLOAD_KEYS): refusing to start an open Data Bank; "
        "set a key, or ALLOW_ANONYMOUS=true to serve anyone who can reach it"
    )


def check_keys(settings: DataBankSettings) -> None:
    """Refuse a keyless server (`KeylessRefused`); an anonymous one, opted into, is warned
    about at every start (anyone on its network can upload, read and delete)."""
    refusal = keyless_refusal(settings)
    if refusal is not None:
        raise KeylessRefused(refusal)
    if not settings.keys_for(Permission.UPLOAD):
        log.warning(
            "ALLOW_ANONYMOUS=true and no API key: anyone who can reach this Data Bank can "
            "upload, read and delete its files",
            extra=log_fields("databank_anonymous"),
        )


# -- the app -------------------------------------------------------------------------------


def create_databank_app(settings: DataBankSettings) -> FastAPI:
    check_keys(settings)
    store = FileStore(settings.data_root, int(settings.min_free_gb * 1_000_000_000))
    try:
        store.prepare()
    except OSError as exc:
        # Keep serving: /readyz then says "storage not writable", which is what a probe wants.
        log.error(
            "cannot prepare %s: %s", settings.data_root, exc, extra=log_fields("storage_error")
        )
    # `/docs` is the page the API serves too (service_common/docs_page.py): FastAPI's own
    # loads Swagger UI from a CDN.
    app = FastAPI(title="Data Bank (local)", version="0.1.0", docs_url=None, redoc_url=None)
    install_error_bodies(app, VOCABULARY)
    app.include_router(_health_routes(store))
    app.include_router(_file_routes(store, settings))
    app.include_router(docs_router(app.title, app.openapi_url or "/openapi.json"))
    return app


def _require(settings: DataBankSettings, permission: Permission) -> Callable[[Request], None]:
    keys = settings.keys_for(permission)

    def check(request: Request) -> None:
        if not keys:
            return
        given = request.headers.get(API_KEY_HEADER)
        if not given:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, f"missing {API_KEY_HEADER}")
        # Compare with every key in constant time: no early exit to measure.
        matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
        if not any(matches):
            raise ApiError(403, ErrorCode.FORBIDDEN, f"key not valid for {permission}")

    return check


def _health_routes(store: FileStore) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> HealthBody:
        return HealthBody()

    @router.get("/readyz", responses={503: {"model": ReadyBody}})
    def readyz() -> JSONResponse:
        reason = store.readiness_problem()
        if reason is None:
            return JSONResponse(ReadyBody(status="ready").model_dump(exclude_none=True))
        return JSONResponse(ReadyBody(status="degraded", reason=reason).model_dump(), 503)

    return router


def _file_routes(store: FileStore, settings: DataBankSettings) -> APIRouter:
    router = APIRouter(tags=["files"])
    check_upload = _require(settings, Permission.UPLOAD)
    can_read = [Depends(_require(settings, Permission.READ))]
    can_delete = [Depends(_require(settings, Permission.DELETE))]

    @router.post("/files", status_code=201)
    async def upload(request: Request) -> FileInfo:
        try:
            try:
                check_upload(request)
            except ApiError as exc:
                # Before the body: of a caller without a valid key, at most a few KiB are read
                # (a small upload still gets a clean answer; see upload.py), then the refusal
                # goes out and the connection is closed.
                if await drain_body(request, UNAUTHENTICATED_BODY_BYTES):
                    raise
                closing = {"Connection": "close"}
                raise ApiError(exc.status, exc.code, exc.message, headers=closing) from exc
            info = await receive_upload(request, store, settings.max_file_bytes)
        except UploadRejected as exc:
            raise ApiError(exc.status, exc.code, exc.message) from exc
        log.info(
            "stored %s (%d bytes)",
            info.file_id,
            info.size,
            extra=log_fields("file_stored", file_id=info.file_id),
        )
        return info

    # HEAD before GET: the GET route would otherwise answer HEAD too.
    @router.head("/files/{file_id}", dependencies=can_read)
    def head(file_id: str) -> Response:
        info = _existing(store, file_id)
        return Response(headers=_file_headers(info, info.size))

    @router.get("/files/{file_id}", dependencies=can_read)
    def download(file_id: str, request: Request) -> Response:
        return _serve_bytes(store, _existing(store, file_id), request.headers.get("range"))

    @router.get("/files/{file_id}/info", dependencies=can_read)
    def info(file_id: str) -> FileInfo:
        return _existing(store, file_id)

    @router.delete("/files/{file_id}", status_code=204, dependencies=can_delete)
    def delete(file_id: str) -> Response:
        _check_id(file_id)
        if not store.delete(file_id) and settings.delete_strict_404:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no file {file_id}")
        log.info("deleted %s", file_id, extra=log_fields("file_deleted", file_id=file_id))
        return Response(status_code=204)

    return router


def _check_id(file_id: str) -> None:
    if not is_file_id(file_id):
        raise ApiError(
            400, ErrorCode.BAD_REQUEST, "file_id must be 64 lowercase hex characters (sha256)"
        )


def _existing(store: FileStore, file_id: str) -> FileInfo:
    _check_id(file_id)
    info = store.info(file_id)
    if info is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no file {file_id}")
    return info


def _file_headers(info: FileInfo, length: int) -> dict[str, str]:
    # Bytes to save, never a page to render: not the uploader's content type (an HTML
    # upload would run as this origin's page), no sniffing, and an attachment.
    return {
        "Accept-Ranges": "bytes",
        "Content-Length": str(length),
        "ETag": info.sha256,
        "Content-Type": "application/octet-stream",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'attachment; filename="{info.file_id}"',
    }


def _serve_bytes(store: FileStore, info: FileInfo, range_header: str | None) -> Response:
    total = info.size
    start, length, status = 0, total, 200
    headers: dict[str, str] = {}
    if range_header is not None:
        try:
            wanted = parse_range(range_header, total)
        except MalformedRange as exc:
            raise ApiError(416, ErrorCode.INVALID_RANGE, str(exc)) from exc
        except UnsatisfiableRange as exc:
            raise ApiError(
                416,
                ErrorCode.RANGE_NOT_SATISFIABLE,
                str(exc),
                headers={"Content-Range": f"bytes */{total}"},
            ) from exc
        start, length, status = wanted.start, wanted.length, 206
        headers["Content-Range"] = wanted.content_range(total)
    try:
        # Opened now, so a delete that lands while we stream cannot cut the body short.
        handle = store.bytes_path(info.file_id).open("rb")
    except FileNotFoundError as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no file {info.file_id}") from exc
    handle.seek(start)

    async def body() -> AsyncIterator[bytes]:
        try:
            left = length
            while left > 0:
                chunk = await anyio.to_thread.run_sync(handle.read, min(READ_CHUNK_BYTES, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    headers |= _file_headers(info, length)
    return StreamingResponse(body(), status_code=status, headers=headers)


# -- the process ---------------------------------------------------------------------------


def app_from_environment() -> FastAPI:
    """Hypercorn's entry: `hypercorn 'databank_server.server:app_from_environment()'`."""
    settings = DataBankSettings()
    setup_logging(settings.log_level, service="databank")
    log.info(
        "data bank serving files from %s",
        settings.data_root,
        extra=log_fields("databank_started"),
    )
    return create_databank_app(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local Data Bank-compatible file server.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    settings = DataBankSettings()
    setup_logging(settings.log_level, service="databank")
    refusal = keyless_refusal(settings)  # before Hypercorn: one log line, exit status 2
    if refusal is not None:
        log.error("%s", refusal, extra=log_fields("databank_refused"))
        return 2
    config = Config()
    config.application_path = f"{__name__}:app_from_environment()"
    config.bind = [f"{args.host}:{args.port}"]
    config.workers = 0  # serve in this process; Hypercorn stops gracefully on SIGTERM/SIGINT
    # A client that stalls mid-upload must not hold its temp file forever.
    config.read_timeout = 120
    config.accesslog = None  # the request-id middleware writes the access log as JSON
    config.errorlog = logging.getLogger("hypercorn.error")
    return run(config)
