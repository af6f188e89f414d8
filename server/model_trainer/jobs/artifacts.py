"""The Data Bank steps jobs share: fetch a corpus or an artifact, publish an artifact.

API and worker share no disk, so everything a job reads comes from Data Bank by `file_id`
and everything it produces goes back there; Redis keeps the pointers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model_trainer.databank.archive import safe_extract
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import DataBankError, NotFound
from model_trainer.errors import UserError
from model_trainer.jobs.failures import ArtifactUploadFailed
from model_trainer.jobs.runner import WorkerContext
from model_trainer.manifest import add_artifact_pointer
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")

# Artifacts we download are ours, but a tar is still input: cap what extraction may write.
MAX_ARTIFACT_MEMBERS = 10_000
MAX_ARTIFACT_BYTES = 20 * 1024**3


def fetch_corpus(ctx: WorkerContext, file_id: str) -> Path:
    try:
        return CorpusFetcher(ctx.databank, ctx.settings.app.data_root / "corpora").fetch(file_id)
    except NotFound as exc:
        raise UserError(
            f"corpus {file_id} is not in Data Bank (deleted?): upload it again"
        ) from exc


def fetch_artifact(ctx: WorkerContext, file_id: str, kind: str, record_id: str) -> Path:
    """The extracted artifact folder of a tokenizer or run, downloaded once per worker."""
    root = ctx.settings.app.data_root / "artifact-cache" / kind
    target = root / record_id / file_id
    if target.exists():
        return _single_child(target)
    tar = root / f"{file_id}.tar"
    root.mkdir(parents=True, exist_ok=True)
    try:
        ctx.databank.download(file_id, tar)
    except NotFound as exc:
        raise UserError(
            f"the artifact of {kind} {record_id} ({file_id}) is not in Data Bank any more: "
            f"train the {kind} again"
        ) from exc
    try:
        safe_extract(
            tar, target, max_members=MAX_ARTIFACT_MEMBERS, max_total_bytes=MAX_ARTIFACT_BYTES
        )
    finally:
        tar.unlink(missing_ok=True)
    return _single_child(target)


def _single_child(folder: Path) -> Path:
    """Our tars have one top folder (`tokenizer-<id>/`, `model-<id>/`)."""
    children = [p for p in folder.iterdir() if p.is_dir()]
    if len(children) != 1:
        raise RuntimeError(f"artifact {folder} should hold one top folder, found {len(children)}")
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
