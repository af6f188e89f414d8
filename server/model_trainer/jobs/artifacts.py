"""The Data Bank steps jobs share: fetch a corpus or an artifact, publish an artifact.

API and worker share no disk, so everything a job reads comes from Data Bank by `file_id`
and everything it produces goes back there; Redis keeps the pointers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from model_trainer.databank.artifacts import fetch_extracted
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import DataBankError, NotFound
from model_trainer.errors import ArtifactUploadFailed, UserError
from model_trainer.jobs.context import WorkerContext
from model_trainer.manifest import add_artifact_pointer
from model_trainer.tokenization.corpus import CorpusCheck, check_corpus
from model_trainer.tokenization.corpus_formats import (
    CorpusFormat,
    ResolvedFormat,
    resolve_format,
    text_corpus_id,
    write_text_corpus,
)
from service_common.databank_contract import FileInfo
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")

TEXT_SECTION = "corpus-text"  # of the worker's disk cache: structured corpora as text


@contextmanager
def fetch_corpus(ctx: WorkerContext, file_id: str) -> Iterator[Path]:
    """The corpus in the worker's cache, kept there (never evicted) until the block ends."""
    with ExitStack() as held:
        try:
            path = held.enter_context(CorpusFetcher(ctx.databank, ctx.cache).fetch(file_id))
        except NotFound as exc:  # the fetch's own, not one the job raises while using it
            raise UserError(
                f"corpus {file_id} is not in Data Bank (deleted?): upload it again"
            ) from exc
        yield path


def check_fetched_corpus(ctx: WorkerContext, corpus: Path) -> CorpusCheck:
    """The checks every job makes on its corpus before using it (`check_corpus`)."""
    checked = check_corpus(corpus, ctx.settings.app.corpus_max_line_bytes)
    log.info(
        "corpus checked: %d bytes, %d lines, the longest %d bytes (%.1f s)",
        checked.size_bytes,
        checked.lines,
        checked.longest_line_bytes,
        checked.seconds,
        extra=log_fields("corpus_checked"),
    )
    return checked


@dataclass(frozen=True)
class PreparedCorpus:
    """A job's corpus as plain text, checked, whatever format it was uploaded in."""

    path: Path
    corpus_id: str  # keys the token cache: the file id, or the id of the text it gave
    corpus_format: ResolvedFormat


@contextmanager
def prepare_corpus(
    ctx: WorkerContext, file_id: str, corpus_format: CorpusFormat, text_field: str
) -> Iterator[PreparedCorpus]:
    """Fetch the corpus; a structured one is written out as text once per worker
    (`corpus_formats.write_text_corpus`); then `check_fetched_corpus`. Every `UserError`
    (unreadable file, unknown field, bad text) comes here, before anything is trained.
    The text stays in the worker's cache, never evicted, until the block ends."""
    with fetch_corpus(ctx, file_id) as fetched:
        resolved = resolve_format(fetched, corpus_format)
        if resolved == "text":  # the fast path: the file as it is
            check_fetched_corpus(ctx, fetched)
            yield PreparedCorpus(fetched, file_id, resolved)
            return

        def write_text(dest: Path) -> None:
            # `datasets`' lock files go to the scratch folder, removed with it.
            max_bytes = ctx.settings.app.corpus_max_text_bytes
            write_text_corpus(
                fetched, resolved, text_field, dest, dest.parent / ".datasets", max_bytes
            )

        text_id = text_corpus_id(file_id, resolved, text_field)
        # Not beside the fetched corpora: those names are trusted as verified file ids.
        with ctx.cache.use(TEXT_SECTION, f"{text_id}.txt", write_text) as text_path:
            check_fetched_corpus(ctx, text_path)
            yield PreparedCorpus(text_path, text_id, resolved)


def fetch_artifact(ctx: WorkerContext, file_id: str, kind: str, record_id: str) -> Path:
    """The extracted artifact folder of a tokenizer or run, downloaded once per worker
    (`databank.artifacts.fetch_extracted`: size and shape checked, `UserError` if refused)."""
    app = ctx.settings.app
    root = app.data_root / "artifact-cache" / kind
    return fetch_extracted(ctx.databank, app, root, file_id, kind, record_id)


def publish_artifact(ctx: WorkerContext, folder: Path, top_name: str) -> FileInfo:
    """Tar and upload `folder`; write the pointer into its manifest; return what Data Bank
    says of the file (its id and size).

    The uploaded manifest cannot contain its own file_id (that is the hash of the tar that
    holds it), so the pointer is written into the worker's copy after the upload. The caller
    records it in Redis (with the job's final status, in one write).
    """
    try:
        info = ctx.databank.upload_directory(folder, top_name)
    except (DataBankError, OSError) as exc:
        raise ArtifactUploadFailed(f"{type(exc).__name__}: {exc}") from exc
    add_artifact_pointer(folder, info.file_id)
    log.info(
        "artifact uploaded (%d bytes)",
        info.size,
        extra=log_fields("artifact_uploaded", file_id=info.file_id),
    )
    return info
