"""`POST /corpora`: a text corpus uploaded through the API, on its way to Data Bank.

Browsers cannot reach Data Bank (another service, another key), so the dashboard uploads
corpora here. The body is the file's bytes (no multipart form): streamed to a temp file in
the API's data folder as it arrives, never held in memory, capped by
`limits.corpus_upload_max_bytes` (the body-size middleware answers 413 past it, see
limits.py). The file then gets the check every job makes of its corpus (`check_corpus`:
not empty, not only whitespace, UTF-8, no endless line; 422 with the reason otherwise), is
uploaded with the project's Data Bank client (streamed, verified by SHA-256) and recorded
in `CorpusCatalog` under the principal who sent it. The temp file is removed whatever
happens. It counts as a submission (`quotas.submissions_per_minute`), and a file that would
take its principal past `quotas.corpus_bytes` is refused (429) before it reaches Data Bank.

`delete_corpus` removes a principal's entry, and Data Bank's copy with the last holder.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from model_trainer.api.auth import Principal
from model_trainer.api.deps import ApiContext
from model_trainer.connections import DataBankUse, databank_client
from model_trainer.databank import errors as bank_errors
from model_trainer.databank.client import DataBankClient
from model_trainer.errors import AppError, ErrorCode, NotFoundError
from model_trainer.store.corpora import CorpusCatalog, CorpusInfo
from model_trainer.tokenization.corpus import check_corpus

T = TypeVar("T")


async def receive_corpus(
    ctx: ApiContext,
    chunks: AsyncIterator[bytes],
    name: str,
    content_type: str | None,
    who: Principal,
) -> CorpusInfo:
    def check_and_upload(path: Path) -> CorpusInfo:
        return _check_and_upload(ctx, path, name, who)

    return await receive_file(
        ctx, chunks, content_type, who, "text/plain", "corpus.txt", check_and_upload
    )


async def receive_file(
    ctx: ApiContext,
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    who: Principal,
    expected_type: str,
    file_name: str,
    check_and_upload: Callable[[Path], T],
) -> T:
    """An upload's common path (corpora, base models): a submission for the quotas, the
    body spooled to a temp file of the API's disk, then `check_and_upload` in a thread; the
    file is removed whatever happens."""
    await run_in_threadpool(ctx.quotas.submission, who)
    if content_type and content_type.lower().startswith("multipart/"):
        raise AppError(
            ErrorCode.VALIDATION_ERROR,
            f"send the file's bytes as the body (Content-Type: {expected_type}), not a form",
        )
    with tempfile.TemporaryDirectory(dir=uploads_dir(ctx), prefix=".upload-") as tmp:
        path = Path(tmp) / file_name
        await _spool(chunks, path)
        return await run_in_threadpool(check_and_upload, path)


@contextmanager
def transfer_client(ctx: ApiContext, what: str) -> Iterator[DataBankClient]:
    """A Data Bank client for a request's whole files (uploads, a base model's read): not the
    API's request-path client (no retries, seconds of timeout), as a file of a few hundred MiB
    takes longer; the guard still answers 503 fast while Data Bank is down."""
    app = ctx.settings.app
    with (
        ctx.databank_guard.call(what),
        databank_client(
            app.data_bank_api_url, app.data_bank_api_key, DataBankUse.API_UPLOAD
        ) as bank,
    ):
        yield bank


def uploads_dir(ctx: ApiContext) -> Path:
    """Where files wait on the API's disk while they are checked (uploads, base models)."""
    folder = ctx.settings.app.data_root / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _spool(chunks: AsyncIterator[bytes], path: Path) -> None:
    try:
        async with await anyio.open_file(path, "wb") as out:
            async for chunk in chunks:
                await out.write(chunk)
    except ClientDisconnect as exc:
        # The client went away, or the body went over its cap: then the body-size middleware
        # drops this answer and sends its 413.
        raise AppError(ErrorCode.BAD_REQUEST, "the upload ended before the whole body") from exc


def _check_and_upload(ctx: ApiContext, path: Path, name: str, who: Principal) -> CorpusInfo:
    # A corpus a job would refuse (UserError) is refused now, with its code (422).
    checked = check_corpus(path, ctx.settings.app.corpus_max_line_bytes)
    ctx.quotas.corpus_bytes(who, checked.size_bytes)
    try:
        with transfer_client(ctx, "upload the corpus") as bank:
            stored = bank.upload_file(path, content_type="text/plain; charset=utf-8")
    except bank_errors.DataBankError as exc:
        raise AppError(
            ErrorCode.UPSTREAM_ERROR, f"cannot upload the corpus to Data Bank: {exc.message}"
        ) from exc
    info = CorpusInfo(
        file_id=stored.file_id,
        name=name,
        size=checked.size_bytes,
        lines=checked.lines,
        created_at=time.time(),
        owner=who.name,
    )
    CorpusCatalog(ctx.redis).add(info)
    return info


def delete_corpus(ctx: ApiContext, file_id: str, who: Principal) -> None:
    """Remove `who`'s entry for the corpus (an admin: every principal's), and the file from
    Data Bank once nobody holds it. 404 when `who` holds none (an admin: nobody does). Data
    Bank is asked first: while it is unavailable (503) the entries stay, to try again."""
    catalog = CorpusCatalog(ctx.redis)
    holders = catalog.holders(file_id)
    mine = holders if who.admin else [h for h in holders if h == who.name]
    if not mine:
        raise NotFoundError(f"unknown corpus {file_id!r} (not uploaded through POST /corpora)")
    if len(mine) == len(holders):
        try:
            with ctx.databank_guard.call("delete the corpus"):
                ctx.databank.delete(file_id)
        except bank_errors.DataBankError as exc:
            raise AppError(
                ErrorCode.UPSTREAM_ERROR, f"cannot delete the corpus in Data Bank: {exc.message}"
            ) from exc
    for holder in mine:
        catalog.remove(holder, file_id)
