"""The RQ jobs: each takes the JSON payload the API enqueued and does the work on this worker.

    train_tokenizer  corpus (Data Bank) -> tokenizer files -> tar -> Data Bank -> pointer
    train_model      corpus + tokenizer (Data Bank) -> checkpoints -> model -> eval -> pointer
    evaluate_model   run artifact (Data Bank) -> metrics + samples

Status, heartbeat, logs and the failure policy are `job_runner.running_job`'s; this module
only says what each job does, in order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from model_trainer.databank.archive import safe_extract
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import DataBankError
from model_trainer.job_runner import (
    ArtifactUploadFailed,
    JobCancelled,
    JobControl,
    WorkerContext,
    running_job,
    worker_context,
)
from model_trainer.jsonlog import log_fields
from model_trainer.payloads import TokenizerJob
from model_trainer.shutdown import WorkerShutdown, stop_requested
from model_trainer.status_store import Status, StatusStore
from model_trainer.tokenization.stopping import TrainingStopped
from model_trainer.tokenization.train import train_tokenizer as train_tokenizer_files
from model_trainer.tokenization.train import write_manifest

log = logging.getLogger("model_trainer.jobs")

MANIFEST = "manifest.json"
# Artifacts we download are ours, but a tar is still input: cap what extraction may write.
MAX_ARTIFACT_MEMBERS = 10_000
MAX_ARTIFACT_BYTES = 20 * 1024**3


# --- shared steps -------------------------------------------------------------------------


def fetch_corpus(ctx: WorkerContext, file_id: str) -> Path:
    return CorpusFetcher(ctx.databank, ctx.settings.app.data_root / "corpora").fetch(file_id)


def fetch_artifact(ctx: WorkerContext, file_id: str, kind: str, record_id: str) -> Path:
    """The extracted artifact folder of a tokenizer or run, downloaded once per worker."""
    root = ctx.settings.app.data_root / "artifact-cache" / kind
    target = root / record_id / file_id
    if target.exists():
        return _single_child(target)
    tar = root / f"{file_id}.tar"
    root.mkdir(parents=True, exist_ok=True)
    ctx.databank.download(file_id, tar)
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


def publish_artifact(
    ctx: WorkerContext, store: StatusStore, record_id: str, folder: Path, top_name: str
) -> str:
    """Tar and upload `folder`, then record the pointer in Redis and in its manifest.

    The uploaded manifest cannot contain its own file_id (that is the hash of the tar that
    holds it), so the pointer is written into the worker's copy after the upload.
    """
    try:
        info = ctx.databank.upload_directory(folder, top_name)
    except (DataBankError, OSError) as exc:
        raise ArtifactUploadFailed(f"{type(exc).__name__}: {exc}") from exc
    manifest_path = folder / MANIFEST
    manifest: dict[str, object] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    )
    manifest["artifact_pointer"] = {"storage": "data-bank", "file_id": info.file_id}
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    store.set_file_id(record_id, info.file_id)
    log.info(
        "artifact uploaded (%d bytes)",
        info.size,
        extra=log_fields("artifact_uploaded", file_id=info.file_id),
    )
    return info.file_id


def stop_check(job: JobControl) -> bool:
    return stop_requested.is_set() or job.cancelled()


def raise_stop_reason(job: JobControl) -> None:
    """After a library stopped early: say why, as the exception the runner expects."""
    if stop_requested.is_set():
        raise WorkerShutdown("worker shutting down; job will be retried")
    raise JobCancelled(f"{job.kind} {job.record_id} cancelled by request")


# --- train_tokenizer ----------------------------------------------------------------------


def train_tokenizer(payload_json: str) -> None:
    payload = TokenizerJob.model_validate_json(payload_json)
    ctx = worker_context()
    tokenizer_id = payload.tokenizer_id
    folder = ctx.settings.app.artifacts_root / "tokenizers" / tokenizer_id
    # A retry or re-submit starts clean: no file of an earlier attempt may end up in the tar.
    shutil.rmtree(folder, ignore_errors=True)
    with running_job(ctx, "tokenizer", tokenizer_id, folder) as job:
        corpus = fetch_corpus(ctx, payload.config.corpus_file_id)
        try:
            result = train_tokenizer_files(
                payload.config,
                corpus,
                folder,
                threads=_threads(ctx),
                sample_bytes=ctx.settings.app.spm_sample_bytes,
                should_stop=lambda: stop_check(job),
            )
        except TrainingStopped:
            raise_stop_reason(job)
            raise
        write_manifest(folder, result)
        job.raise_if_cancelled()
        publish_artifact(ctx, ctx.tokenizers, tokenizer_id, folder, f"tokenizer-{tokenizer_id}")
        summary = {
            "stats": result.stats.model_dump(mode="json") if result.stats else None,
            "timings": result.timings.model_dump(mode="json"),
            "vocab_size": result.vocab_size,
        }
        ctx.tokenizers.set_progress(tokenizer_id, json.dumps(summary))
        ctx.tokenizers.set_status(
            tokenizer_id,
            Status.COMPLETED,
            f"trained {payload.config.method} tokenizer, vocabulary {result.vocab_size}",
        )


def _threads(ctx: WorkerContext) -> int:
    configured = ctx.settings.app.threads
    return configured if configured > 0 else max(1, len(os.sched_getaffinity(0)))
