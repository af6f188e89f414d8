"""The training job: corpus + tokenizer (Data Bank) -> checkpoints -> model -> eval -> pointer.

`RunReporter` turns the training loop's callbacks into what people watch: progress in Redis,
the loss curve, log lines and `trainer:events`. `run` says what the job does, in order.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

from model_trainer.errors import UserError
from model_trainer.jobs.artifacts import fetch_artifact, fetch_corpus, publish_artifact
from model_trainer.jobs.model_evaluation import eval_info
from model_trainer.jobs.payloads import TrainJob
from model_trainer.jobs.runner import (
    JobCancelled,
    JobControl,
    WorkerContext,
    running_job,
    worker_context,
)
from model_trainer.store.events import TrainCompleted, TrainProgress, TrainStarted
from model_trainer.store.records import RunProgress, Status
from model_trainer.store.runlog import MetricPoint, MetricsWriter
from model_trainer.training.config import ModelTrainConfig
from model_trainer.training.evaluate import EVAL_DIR
from model_trainer.training.hardware import cpu_info, resolve_threads
from model_trainer.training.loop import CheckpointInfo, Outcome, ProgressInfo, TrainingCallbacks
from model_trainer.training.loop import EvalInfo as LoopEvalInfo
from model_trainer.training.run import run_training
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")

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
            self._ctx.runs.set_progress(self._run_id, progress)
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


def run(payload_json: str) -> None:
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
        threads = resolve_threads(ctx.settings.app.threads)
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
            ctx.runs.set_eval(run_id, eval_info(run_id, "final", metrics, artifact / EVAL_DIR))
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
