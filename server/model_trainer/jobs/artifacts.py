"""The Data Bank steps jobs share: fetch a corpus or an artifact, publish an artifact.

API and worker share no disk, so everything a job reads comes from Data Bank by `file_id`
and everything it produces goes back there; Redis keeps the pointers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from model_trainer.databank.archive import UnsafeArchiveError, safe_extract
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import DataBankError, NotFound
from model_trainer.errors import UserError
from model_trainer.jobs.failures import ArtifactUploadFailed
from model_trainer.jobs.runner import WorkerContext
from model_trainer.manifest import add_artifact_pointer
from model_trainer.tokenization.corpus import CorpusCheck, check_corpus
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")

# Tar headers and padding around the contents: a member's header (a PAX one for long names
# besides) and its padding to 512 bytes, and the end-of-archive record.
_TAR_OVERHEAD_PER_MEMBER = 4096
_TAR_OVERHEAD = 64 * 1024


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
    """The extracted artifact folder of a tokenizer or run, downloaded once per worker.

    Artifacts are ours, but a tar from Data Bank is still input: it must be a plain tar
    within `artifact_max_members` and `artifact_max_bytes` (checked against its size before
    the download and against its headers before extraction). A refused artifact is the
    user's to replace (`UserError`); a refused or failed fetch leaves nothing in the cache.
    """
    app = ctx.settings.app
    root = app.data_root / "artifact-cache" / kind
    target = root / record_id / file_id
    if target.exists():
        return _single_child(target)
    what = f"the artifact of {kind} {record_id} ({file_id})"
    gone = f"{what} is not in Data Bank any more: train the {kind} again"
    try:
        size = ctx.databank.head(file_id).size
    except NotFound as exc:
        raise UserError(gone) from exc
    most = app.artifact_max_bytes + app.artifact_max_members * _TAR_OVERHEAD_PER_MEMBER
    if size > most + _TAR_OVERHEAD:
        raise UserError(
            f"{what} is refused: {size} bytes, more than an artifact may hold "
            f"(artifact_max_bytes {app.artifact_max_bytes}); train the {kind} again"
        )
    # One download file per process: workers sharing a disk never unlink each other's.
    tar = root / f".{file_id}.{os.getpid()}.tar"
    try:
        ctx.databank.download(file_id, tar)
        safe_extract(
            tar,
            target,
            max_members=app.artifact_max_members,
            max_total_bytes=app.artifact_max_bytes,
        )
        return _single_child(target)
    except NotFound as exc:
        raise UserError(gone) from exc
    except UnsafeArchiveError as exc:
        shutil.rmtree(target, ignore_errors=True)  # extracted, but not shaped as ours
        raise UserError(f"{what} is refused: {exc}; train the {kind} again") from exc
    finally:
        tar.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # left by a refusal; not empty once extracted
            target.parent.rmdir()


def _single_child(folder: Path) -> Path:
    """Our tars have one top folder (`tokenizer-<id>/`, `model-<id>/`)."""
    children = list(folder.iterdir())
    if len(children) != 1 or not children[0].is_dir():
        names = sorted(p.name for p in children)[:5]
        raise UnsafeArchiveError(f"an artifact holds one top folder, not {names}")
    return children[0]


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
