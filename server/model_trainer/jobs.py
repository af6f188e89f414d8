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
import math
import os
import shutil
import time
from pathlib import Path

from model_trainer.databank.archive import safe_extract
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import DataBankError, NotFound
from model_trainer.errors import UserError
from model_trainer.events import TrainCompleted, TrainProgress, TrainStarted
from model_trainer.job_runner import (
    ArtifactUploadFailed,
    JobCancelled,
    JobControl,
    WorkerContext,
    running_job,
    worker_context,
)
from model_trainer.jsonlog import bound, log_fields, run_id_var
from model_trainer.manifest import add_artifact_pointer, read_manifest
from model_trainer.payloads import (
    EvalInfo,
    EvaluateJob,
    RunProgress,
    SampleText,
    TokenizerJob,
    TrainJob,
)
from model_trainer.runlog import MetricPoint, MetricsWriter
from model_trainer.shutdown import WorkerShutdown, stop_requested
from model_trainer.status_store import Status, StatusStore
from model_trainer.tokenization.stopping import TrainingStopped
from model_trainer.tokenization.train import train_tokenizer as train_tokenizer_files
from model_trainer.training.config import ModelTrainConfig
from model_trainer.training.evaluate import EVAL_DIR, EvalMetrics, evaluate_folder
from model_trainer.training.hardware import cpu_info
from model_trainer.training.loop import CheckpointInfo, Outcome, ProgressInfo, TrainingCallbacks
from model_trainer.training.loop import EvalInfo as LoopEvalInfo
from model_trainer.training.run import run_training

log = logging.getLogger("model_trainer.jobs")

# Artifacts we download are ours, but a tar is still input: cap what extraction may write.
MAX_ARTIFACT_MEMBERS = 10_000
MAX_ARTIFACT_BYTES = 20 * 1024**3


# --- shared steps -------------------------------------------------------------------------


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
    add_artifact_pointer(folder, info.file_id)
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


# --- train_model --------------------------------------------------------------------------

# Progress events are for people: at most one per this many seconds (plus evals and the end).
EVENT_INTERVAL_SEC = 10.0
PROGRESS_WRITE_INTERVAL_SEC = 1.0


class RunReporter(TrainingCallbacks):
    """Turns the loop's callbacks into Redis progress, metric points, logs and events."""

    def __init__(self, ctx: WorkerContext, job: JobControl, config: ModelTrainConfig) -> None:
        self._ctx = ctx
        self._job = job
        self._config = config
        self._run_id = job.record_id
        self._metrics = MetricsWriter(ctx.redis, job.record_id)
        self._started = time.time()
        self._last_event = 0.0
        self._last_write = 0.0
        self._last_val: float | None = None
        self.total_epochs = 1

    def on_progress(self, info: ProgressInfo) -> None:
        now = time.time()
        if info.val_loss is not None:
            self._last_val = info.val_loss
        self._metrics.add(
            MetricPoint(
                step=info.step,
                train_loss=info.train_loss,
                val_loss=info.val_loss,
                lr=info.lr,
                tokens_per_sec=info.tokens_per_sec,
                elapsed_sec=info.elapsed,
            )
        )
        final = info.step >= info.total_steps
        if final or now - self._last_write >= PROGRESS_WRITE_INTERVAL_SEC:
            self._last_write = now
            progress = RunProgress(
                step=info.step,
                total_steps=info.total_steps,
                epoch=info.epoch,
                train_loss=info.train_loss,
                val_loss=self._last_val,
                learning_rate=info.lr,
                tokens_per_sec=info.tokens_per_sec,
                percent=round(100.0 * info.step / max(info.total_steps, 1), 2),
                eta_seconds=info.eta_seconds,
                started_at=self._started,
                updated_at=now,
            )
            self._ctx.runs.set_progress(self._run_id, progress.model_dump_json())
        if info.train_loss is not None and (
            final or info.val_loss is not None or now - self._last_event >= EVENT_INTERVAL_SEC
        ):
            self._last_event = now
            c = self._config
            self._ctx.events.publish(
                TrainProgress(
                    request_id=self._run_id,
                    run_id=self._run_id,
                    user_id=c.user_id,
                    epoch=int(info.epoch),
                    total_epochs=self.total_epochs,
                    step=info.step,
                    loss=info.train_loss,
                    total_steps=info.total_steps,
                    tokens_per_sec=info.tokens_per_sec,
                    samples_per_sec=(
                        info.tokens_per_sec / c.max_seq_len if info.tokens_per_sec else None
                    ),
                    eta_seconds=info.eta_seconds,
                    val_loss=self._last_val,
                    lr=info.lr,
                    main_rss_mb=_rss_mb(),
                )
            )

    def on_eval(self, info: LoopEvalInfo) -> None:
        self._last_val = info.val_loss
        log.info(
            "validation at step %d: loss %.4f (best %.4f)",
            info.step,
            info.val_loss,
            info.best_val_loss,
            extra=log_fields("run_eval", step=info.step),
        )

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        log.info(
            "checkpoint %s at step %d",
            info.kind,
            info.step,
            extra=log_fields("run_checkpoint", step=info.step),
        )

    def should_stop(self) -> bool:
        # One Redis GET per step (~0.1 ms against steps of tens of ms): cancel acts within a step.
        return self._job.cancelled()


def train_model(payload_json: str) -> None:
    payload = TrainJob.model_validate_json(payload_json)
    ctx = worker_context()
    run_id, config = payload.run_id, payload.config
    run_dir = ctx.settings.app.runs_root / run_id
    with running_job(ctx, "run", run_id, run_dir, user_id=config.user_id) as job:
        corpus = fetch_corpus(ctx, config.corpus_file_id)
        tokenizer_file_id = ctx.tokenizers.file_id(config.tokenizer_id)
        if tokenizer_file_id is None:
            raise UserError(f"tokenizer {config.tokenizer_id} has no artifact (was it deleted?)")
        tokenizer_dir = fetch_artifact(ctx, tokenizer_file_id, "tokenizer", config.tokenizer_id)
        reporter = RunReporter(ctx, job, config)
        reporter.total_epochs = max(1, math.ceil(config.num_epochs or 1))
        threads = _threads(ctx)
        ctx.events.publish(
            TrainStarted(
                request_id=run_id,
                run_id=run_id,
                user_id=config.user_id,
                model_family=config.model_family.value,
                model_size=config.model_size.value,
                total_epochs=reporter.total_epochs,
                queue=ctx.settings.rq.queue_name,
                cpu_cores=os.cpu_count(),
                optimal_threads=threads,
                optimal_workers=1,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                memory_mb=_memory_mb(),
            )
        )
        log.info("run started", extra=log_fields("run_started"))
        result = run_training(
            config,
            corpus,
            tokenizer_dir,
            run_dir,
            ctx.settings.app.data_root / "tokens",
            cpu=cpu_info(ctx.settings.app.native_bf16),
            threads=threads,
            callbacks=reporter,
        )
        if result.outcome is Outcome.CANCELLED or result.artifact_dir is None:
            raise JobCancelled(f"run {run_id} cancelled by request")
        artifact = result.artifact_dir
        # The artifact carries the run's log lines up to here (the stream in Redis has all).
        shutil.copyfile(run_dir / "logs.jsonl", artifact / "logs.jsonl")
        job.raise_if_cancelled()
        publish_artifact(ctx, ctx.runs, run_id, artifact, f"model-{run_id}")
        metrics = result.eval
        if metrics is not None:
            ctx.runs.set_eval(
                run_id, _eval_info(run_id, "final", metrics, artifact / EVAL_DIR).model_dump_json()
            )
        loss = metrics.loss if metrics else float("nan")
        message = (
            f"completed {result.steps} steps; validation loss {metrics.loss:.4f}, "
            f"{metrics.bits_per_char:.3f} bits/char"
            if metrics
            else f"completed {result.steps} steps"
        )
        ctx.runs.set_status(run_id, Status.COMPLETED, message)
        log.info(message, extra=log_fields("run_completed"))
        if metrics is not None and math.isfinite(loss):
            ctx.events.publish(
                TrainCompleted(
                    request_id=run_id,
                    run_id=run_id,
                    user_id=config.user_id,
                    loss=metrics.loss,
                    perplexity=metrics.perplexity,
                    artifact_path=str(artifact),
                )
            )


def _eval_info(run_id: str, eval_id: str, metrics: EvalMetrics, eval_dir: Path) -> EvalInfo:
    samples_path = eval_dir / "samples.jsonl"
    samples: list[SampleText] = []
    if samples_path.exists():
        for line in samples_path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            samples.append(SampleText(prompt=str(row["prompt"]), completion=str(row["completion"])))
    return EvalInfo(
        run_id=run_id,
        eval_id=eval_id,
        status=Status.COMPLETED,
        split=metrics.split,
        loss=metrics.loss,
        perplexity=metrics.perplexity,
        bits_per_char=metrics.bits_per_char,
        tokens_per_char=metrics.tokens_per_char,
        num_tokens=metrics.n_tokens,
        num_chars=metrics.n_chars,
        samples=samples,
    )


def _rss_mb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _memory_mb() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**2)
    except (ValueError, OSError):
        return None


# --- evaluate_model -----------------------------------------------------------------------


def evaluate_model(payload_json: str) -> None:
    payload = EvaluateJob.model_validate_json(payload_json)
    ctx = worker_context()
    run_id, request = payload.run_id, payload.request
    info = EvalInfo(
        run_id=run_id,
        eval_id=payload.eval_id,
        status=Status.RUNNING,
        split=request.split,
        corpus_file_id=request.corpus_file_id,
    )
    ctx.runs.set_eval(run_id, info.model_dump_json())
    with bound(run_id_var, run_id):
        try:
            result = _evaluate(ctx, payload)
        except UserError as exc:
            failed = info.model_copy(update={"status": Status.FAILED, "message": exc.message})
            ctx.runs.set_eval(run_id, failed.model_dump_json())
            log.error("evaluation failed: %s", exc.message, extra=log_fields("eval_failed"))
            return
        except Exception as exc:
            message = f"system error: {type(exc).__name__}: {exc}"
            failed = info.model_copy(update={"status": Status.FAILED, "message": message})
            ctx.runs.set_eval(run_id, failed.model_dump_json())
            log.exception("evaluation failed", extra=log_fields("eval_failed"))
            raise
    ctx.runs.set_eval(run_id, result.model_dump_json())


def _evaluate(ctx: WorkerContext, payload: EvaluateJob) -> EvalInfo:
    run_id, request = payload.run_id, payload.request
    file_id = ctx.runs.file_id(run_id)
    if file_id is None:
        raise UserError(f"run {run_id} has no artifact to evaluate")
    model_dir = fetch_artifact(ctx, file_id, "run", run_id)
    manifest = read_manifest(model_dir)
    config = ModelTrainConfig.model_validate(manifest["config"])
    out_dir = ctx.settings.app.runs_root / run_id / "evals" / payload.eval_id
    cache = ctx.settings.app.data_root / "tokens"
    if request.corpus_file_id is not None:
        corpus = fetch_corpus(ctx, request.corpus_file_id)
        metrics = evaluate_folder(
            model_dir, corpus, cache, out_dir, corpus_id=request.corpus_file_id, split="all"
        )
    else:
        corpus = fetch_corpus(ctx, config.corpus_file_id)
        metrics = evaluate_folder(
            model_dir,
            corpus,
            cache,
            out_dir,
            corpus_id=config.corpus_file_id,
            split="test" if request.split == "test" else "validation",
            seed=config.seed,
        )
    result = _eval_info(run_id, payload.eval_id, metrics, out_dir)
    return result.model_copy(
        update={"split": request.split or "corpus", "corpus_file_id": request.corpus_file_id}
    )
