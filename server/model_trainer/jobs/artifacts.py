"""The Data Bank steps jobs share: fetch a corpus or an artifact, publish an artifact.

API and worker share no disk, so everything a job reads comes from Data Bank by `file_id`
and everything it produces goes back there; Redis keeps the pointers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model_trainer.databank.artifacts import fetch_extracted
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import DataBankError, NotFound
from model_trainer.errors import UserError
from model_trainer.jobs.failures import ArtifactUploadFailed
from model_trainer.jobs.runner import WorkerContext
from model_trainer.manifest import add_artifact_pointer
from model_trainer.tokenization.corpus import CorpusCheck, check_corpus
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")


def fetch_corpus(ctx: WorkerContext, file_id: str) -> Path:
    try:
        return CorpusFetcher(ctx.databank, ctx.settings.app.data_root / "corpora").fetch(file_id)
    except NotFound as exc:
        raise UserError(
            f"corpus {file_id} is not in Data Bank (deleted?): upload it again"
        ) from exc


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


def fetch_artifact(ctx: WorkerContext, file_id: str, kind: str, record_id: str) -> Path:
    """The extracted artifact folder of a tokenizer or run, downloaded once per worker
    (`databank.artifacts.fetch_extracted`: size and shape checked, `UserError` if refused)."""
    app = ctx.settings.app
    root = app.data_root / "artifact-cache" / kind
    return fetch_extracted(ctx.databank, app, root, file_id, kind, record_id)


def publish_artifact(ctx: WorkerContext, folder: Path, top_name: str) -> str:
    """Tar and upload `folder`; write the pointer into its manifest; return the file_id.

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
    return info.file_id
