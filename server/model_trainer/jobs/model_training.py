"""The training job: corpus + tokenizer (Data Bank) -> checkpoints -> model -> eval -> pointer.

    own the run (jobs/ownership.py: lease, fenced writes, how an attempt ends)
    fetch corpus and tokenizer; restore the newest checkpoint from Data Bank, if any
    train (training/run.py), uploading each checkpoint to Data Bank as it is written
    upload the artifact (retrying while Data Bank is down), then complete: status, pointer
    and `JobCompleted` event in one fenced write

`RunReporter` turns the training loop's callbacks into what people watch: progress in Redis,
the loss curve, log lines and `trainer:events` (`RunConfigured` once per run, with the first
report of training, then `RunProgressed`). `run` says what the job does, in order.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis.exceptions import RedisError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from model_trainer.databank.errors import NotFound
from model_trainer.errors import (
    ArtifactUploadFailed,
    ErrorCode,
    JobCancelled,
    JobPaused,
    LeaseLost,
    UserError,
    WorkerShutdown,
)
from model_trainer.hub import fetch_hub_model, is_hub_model
from model_trainer.jobs.artifacts import (
    PreparedCorpus,
    check_fetched_corpus,
    fetch_artifact,
    fetch_corpus,
    prepare_corpus,
    publish_artifact,
)
from model_trainer.jobs.checkpoint_sync import CheckpointSync
from model_trainer.jobs.context import WorkerContext, worker_context
from model_trainer.jobs.model_evaluation import eval_result, final_eval_commands
from model_trainer.jobs.ownership import JobOwner, owned_job
from model_trainer.jobs.payloads import TrainJob
from model_trainer.jobs.queue import run_queue_name
from model_trainer.jobs.tracking import MlflowRun
from model_trainer.pretrained import read_model_folder
from model_trainer.store.events import RunConfigured, RunProgressed, RunResult
from model_trainer.store.keys import JobField, JobKind, job_key
from model_trainer.store.records import RunExecution, RunProgress
from model_trainer.store.runlog import MetricPoint
from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.training.config import TrainingSpec
from model_trainer.training.evaluate import EVAL_DIR
from model_trainer.training.execution import Execution
from model_trainer.training.hardware import NO_GPU, cpu_info, gpu_info, resolve_threads
from model_trainer.training.loop import CheckpointInfo, Outcome, ProgressInfo, TrainingCallbacks
from model_trainer.training.loop import EvalInfo as LoopEvalInfo
from model_trainer.training.memory import (
    estimate_fine_tune_memory,
    estimate_run_memory,
    gib,
    machine_memory_bytes,
)
from model_trainer.training.run import run_training
from service_common.databank_contract import FileInfo
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")

# Progress events are for people: at most one per this many seconds (plus evals and the end).
EVENT_INTERVAL_SEC = 10.0
PROGRESS_WRITE_INTERVAL_SEC = 1.0
# A `run_progress` line in the run's log: at most one per metrics row and per this many
# seconds (and the last row), so `logs/stream` shows training moving, not only milestones.
PROGRESS_LOG_INTERVAL_SEC = 5.0


class RunReporter(TrainingCallbacks):
    """Turns the loop's callbacks into Redis progress, metric points, logs and events.

    Every write is fenced by the run's lease. A resumed run replays the steps between its
    checkpoint and the point where the previous attempt stopped: those were reported
    already, so nothing is reported again until training passes them (the curve, progress
    and events never go back). During a Redis outage progress is skipped and metric points
    wait; training goes on.
    """

    def __init__(
        self,
        owner: JobOwner,
        job: TrainJob,
        sync: CheckpointSync,
        resumed_from_step: int | None,
        threads: int,
        mlflow: MlflowRun | None = None,
    ) -> None:
        self._owner = owner
        self._threads = threads
        self._mlflow = mlflow
        self._job = job
        self._sync = sync
        self._run_id = owner.job_id
        self._runs = owner.fenced(owner.ctx.runs)
        previous = owner.ctx.runs.progress(owner.job_id)
        reported = max(previous.step if previous else -1, owner.metrics.last_step() or -1)
        self._report_after = reported if resumed_from_step is not None else -1
        owner.metrics.after_step = self._report_after
        self._resumed_from = resumed_from_step
        self._started = previous.started_at if previous and previous.started_at else time.time()
        self._last_event = 0.0
        self._last_write = 0.0
        self._last_log = 0.0
        self._last_val: float | None = previous.val_loss if previous else None
        self._execution: RunExecution | None = previous.execution if previous else None
        self._redis_down = False
        # The epochs the run's first events announced (an earlier attempt's, on resuming).
        announced = owner.store.field(owner.job_id, JobField.EVENT_EPOCHS)
        self._event_epochs = int(announced) if announced else None
        self.last_train_loss: float | None = None

    def on_execution(self, execution: Execution) -> None:
        timings = execution.compile_timings
        self._execution = RunExecution(
            precision=execution.precision.value,
            precision_reason=execution.precision_reason,
            compiled=execution.compiled,
            compile_reason=execution.compile_reason,
            setup_seconds=execution.setup_seconds,
            eager_ms=timings.eager_ms if timings else None,
            compiled_ms=timings.compiled_ms if timings else None,
            compile_seconds=timings.compile_seconds if timings else None,
            compile_cache_hits=timings.cache_hits if timings else None,
        )

    def on_progress(self, info: ProgressInfo) -> None:
        if info.step <= self._report_after:
            return  # replaying steps already reported before this attempt
        now = time.time()
        if info.evaluated:
            self._last_val = info.val_loss
        final = info.step >= info.total_steps
        self._quietly(
            "metrics",
            lambda: self._owner.metrics.add(
                MetricPoint(
                    step=info.step,
                    train_loss=info.train_loss,
                    val_loss=info.val_loss if info.evaluated else None,
                    lr=info.lr,
                    tokens_per_sec=info.tokens_per_sec,
                    elapsed_sec=info.elapsed,
                )
            ),
        )
        if self._mlflow is not None:
            self._mlflow.log_row(
                info.step,
                {
                    "loss/train": info.train_loss,
                    "loss/validation": info.val_loss if info.evaluated else None,
                    "lr": info.lr,
                    "tokens_per_sec": info.tokens_per_sec,
                },
            )
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
                resumed_from_step=self._resumed_from,
                execution=self._execution,
            )
            self._quietly("progress", lambda: self._runs.set_progress(self._run_id, progress))
        if final or now - self._last_log >= PROGRESS_LOG_INTERVAL_SEC:
            self._last_log = now
            self._log_progress(info)
        # Events are for people: one per validation, else at most one per EVENT_INTERVAL_SEC.
        if info.train_loss is not None:
            self.last_train_loss = info.train_loss
            if final or info.evaluated or now - self._last_event >= EVENT_INTERVAL_SEC:
                self._last_event = now
                self._publish_progress(info, info.train_loss)

    def stopped_at(self, step: int) -> None:
        """The run stopped at `step` to go on later (paused, handed back): its progress says
        that step, which the throttled writes may not have yet."""
        current = self._owner.ctx.runs.progress(self._run_id)
        if current is None or current.step == step:
            return
        total = current.total_steps or step
        stopped = current.model_copy(
            update={
                "step": step,
                "percent": round(100.0 * step / max(total, 1), 2),
                "eta_seconds": None,
                "updated_at": time.time(),
            }
        )
        self._quietly("progress", lambda: self._runs.set_progress(self._run_id, stopped))

    def _publish_progress(self, info: ProgressInfo, train_loss: float) -> None:
        job = self._job
        self._owner.events.publish(
            RunProgressed(
                job_id=self._run_id,
                user_id=job.user_id,
                epoch=int(info.epoch),
                total_epochs=self._announce(info),
                step=info.step,
                total_steps=info.total_steps,
                loss=train_loss,
                grad_norm=info.grad_norm,
                tokens_per_sec=info.tokens_per_sec,
                samples_per_sec=(
                    info.tokens_per_sec / job.spec.max_seq_len if info.tokens_per_sec else None
                ),
                eta_seconds=info.eta_seconds,
                val_loss=self._last_val,
                lr=info.lr,
                main_rss_mb=_rss_mb(),
            )
        )

    def _announce(self, info: ProgressInfo) -> int:
        """`RunConfigured` once per run, before its first progress; returns the run's
        `total_epochs`, which every event of the run says alike.

        Sent with the first report of training (not before the run starts) so that a time
        budget's epochs are estimated from measured steps, not guessed: an epochs budget
        says its own, a steps or time budget its plan's at that point, rounded up.
        """
        if self._event_epochs is not None:
            return self._event_epochs
        job, ctx = self._job, self._owner.ctx
        epochs = job.spec.num_epochs if job.spec.num_epochs is not None else info.total_epochs
        total = max(1, math.ceil(epochs))
        if ctx.redis.hsetnx(job_key(self._run_id), JobField.EVENT_EPOCHS.value, str(total)):
            self._owner.events.publish(
                RunConfigured(
                    job_id=self._run_id,
                    user_id=job.user_id,
                    model_family=job.spec.model_family.value,
                    model_size=job.spec.model_size.value,
                    total_epochs=total,
                    queue=run_queue_name(ctx.settings.rq, job.device),
                    optimizer=job.spec.optimizer.value,
                    cpu_cores=os.cpu_count(),
                    memory_mb=_memory_mb(),
                    optimal_threads=self._threads,
                    batch_size=job.spec.batch_size,
                    learning_rate=job.spec.learning_rate,
                    total_steps=info.total_steps,
                    resumed_from_step=self._resumed_from,
                )
            )
            log.info("run started", extra=log_fields("run_started"))
        else:  # announced by an attempt that this one did not hear of: say what it said
            announced = self._owner.store.field(self._run_id, JobField.EVENT_EPOCHS)
            total = int(announced) if announced else total
        self._event_epochs = total
        return total

    def _log_progress(self, info: ProgressInfo) -> None:
        loss = f"{info.train_loss:.4f}" if info.train_loss is not None else "-"
        val = f", val loss {self._last_val:.4f}" if self._last_val is not None else ""
        speed = f", {info.tokens_per_sec:.0f} tokens/s" if info.tokens_per_sec else ""
        eta = f", eta {info.eta_seconds:.0f} s" if info.eta_seconds is not None else ""
        log.info(
            "step %d/%d: loss %s%s%s%s",
            info.step,
            info.total_steps,
            loss,
            val,
            speed,
            eta,
            extra=log_fields(
                "run_progress",
                step=info.step,
                total_steps=info.total_steps,
                loss=info.train_loss,
                val_loss=self._last_val,
                tokens_per_sec=info.tokens_per_sec,
                eta_seconds=info.eta_seconds,
            ),
        )

    def _quietly(self, what: str, write: Callable[[], None]) -> None:
        """Progress writes are skipped while Redis is down (training goes on)."""
        try:
            write()
        except RedisError as exc:
            if not self._redis_down:
                log.warning(
                    "Redis unavailable; %s not recorded, training goes on: %s",
                    what,
                    exc,
                    extra=log_fields("progress_write_failed"),
                )
            self._redis_down = True
            return
        self._redis_down = False

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
        if info.kind == "last":
            self._sync.upload(info.file)

    def should_stop(self) -> bool:
        # Once per step: a lost lease stops at once (LeaseLost); cancel acts within a step.
        self._owner.check()
        return self._owner.cancelled()

    def should_hand_back(self) -> bool:
        # A pause stops like a shutdown (checkpoint, upload), then the run waits paused.
        return self._owner.hand_back_requested() or self._owner.pause_requested()


def run(payload_json: str) -> None:
    payload = TrainJob.model_validate_json(payload_json)
    ctx = worker_context()
    run_id = payload.run_id
    run_dir = ctx.settings.app.runs_root / run_id
    queue = run_queue_name(ctx.settings.rq, payload.device)
    with owned_job(
        ctx, JobKind.RUN, run_id, run_dir, user_id=payload.user_id, queue=queue
    ) as owner:
        if owner is None:
            return
        tracking = ctx.settings.tracking
        mlflow = MlflowRun(tracking, ctx.redis, run_id) if tracking.mlflow_tracking_uri else None
        try:
            _train(ctx, owner, payload, run_dir, mlflow)
        except Exception as exc:
            # The MLflow run ends with the job; not when the job goes on elsewhere.
            if mlflow is not None and not isinstance(exc, WorkerShutdown | LeaseLost | JobPaused):
                mlflow.finish("KILLED" if isinstance(exc, JobCancelled) else "FAILED")
            raise


def _train(
    ctx: WorkerContext,
    owner: JobOwner,
    payload: TrainJob,
    run_dir: Path,
    mlflow: MlflowRun | None,
) -> None:
    """One attempt at the run, from inputs to the completed status (see the module doc)."""
    run_id, spec = payload.run_id, payload.spec
    # The corpus stays in the worker's cache, never evicted, while the run reads it.
    with _corpus(ctx, payload) as corpus:
        # A base model's folder holds its tokenizer: it stands where a tokenizer folder would.
        tokenizer_dir, tokenizer_id = _tokenizer_folder(ctx, payload)
        _check_memory(ctx, spec, tokenizer_dir)
        sync = CheckpointSync(owner, run_dir)
        try:
            resumed_from = sync.restore()
            init_weights = _initial_weights(ctx, payload, run_dir) if resumed_from is None else None
            if resumed_from is not None:
                log.info(
                    "resuming from the checkpoint at step %d",
                    resumed_from,
                    extra=log_fields("run_resumed", step=resumed_from),
                )
            # The request's own thread count wins over the worker's setting.
            threads = resolve_threads(payload.threads, ctx.settings.app.threads)
            reporter = RunReporter(owner, payload, sync, resumed_from, threads, mlflow)
            if mlflow is not None:
                mlflow.start(spec)
            result = run_training(
                spec,
                corpus.path,
                tokenizer_dir,
                run_dir,
                ctx.cache,
                corpus_id=corpus.corpus_id,
                tokenizer_id=tokenizer_id,
                device_requested=payload.device,
                cpu=cpu_info(ctx.settings.app.native_bf16, ctx.settings.app.compile_steps),
                # Only a worker started as a GPU worker trains on its GPU (settings.worker_device).
                gpu=gpu_info() if ctx.settings.app.worker_device == "cuda" else NO_GPU,
                threads=threads,
                callbacks=reporter,
                checkpoint_every_seconds=ctx.settings.recovery.checkpoint_every_seconds,
                init_weights=init_weights,
                init_label=(
                    f"{payload.init_from.run_id}@{payload.init_from.kind}:{payload.init_from.step}"
                    if payload.init_from and init_weights
                    else None
                ),
                compile_cache_dir=ctx.settings.app.compile_cache(),
                chat=payload.corpus_format == "chat",
            )
        finally:
            sync.close()
    if result.outcome is Outcome.INTERRUPTED:
        reporter.stopped_at(result.steps)
        if owner.pause_requested() and not owner.hand_back_requested():
            raise JobPaused(f"run {run_id}: checkpointed at step {result.steps} and paused")
        raise WorkerShutdown(f"run {run_id}: checkpointed for the worker's shutdown")
    if result.outcome is Outcome.CANCELLED or result.artifact_dir is None:
        raise JobCancelled(f"run {run_id} cancelled by request")
    artifact = result.artifact_dir
    # The artifact carries the run's log lines up to here (the stream in Redis has all).
    shutil.copyfile(run_dir / "logs.jsonl", artifact / "logs.jsonl")
    owner.check()
    if owner.cancelled():
        raise JobCancelled(f"run {run_id} cancelled by request")
    uploaded = _upload_artifact(ctx, owner, artifact)
    metrics = result.eval
    stopped = (
        " (stopped early: no better validation loss)"
        if result.outcome is Outcome.EARLY_STOPPED
        else ""
    )
    message = (
        f"completed {result.steps} steps{stopped}; validation loss {metrics.loss:.4f}, "
        f"{metrics.bits_per_char:.3f} bits/char"
        if metrics
        else f"completed {result.steps} steps{stopped}"
    )
    base_eval = (
        result.manifest.fine_tuning.base_eval
        if result.manifest and result.manifest.fine_tuning
        else None
    )
    if base_eval is not None:
        message += f" (base model: {base_eval.loss:.4f}, {base_eval.bits_per_char:.3f} bits/char)"
    # The final evaluation's loss; without one, the last training loss (see RunResult).
    final_loss, evaluated = reporter.last_train_loss, False
    if metrics is not None and math.isfinite(metrics.loss):
        final_loss, evaluated = metrics.loss, True
    run_result = None
    if final_loss is not None:
        run_result = RunResult(loss=final_loss, evaluated=evaluated, artifact_path=str(artifact))
    runs = owner.fenced(ctx.runs)
    also = runs.file_id_commands(run_id, uploaded.file_id)
    if metrics is not None:
        evaluation = eval_result(metrics, artifact / EVAL_DIR, base_eval)
        also += final_eval_commands(owner.fenced(ctx.evals), run_id, evaluation, message)
    if mlflow is not None:
        final = (
            {"val_loss": metrics.loss, "bits_per_char": metrics.bits_per_char} if metrics else {}
        )
        mlflow.finish("FINISHED", final, artifact)
    owner.complete(message, artifact=uploaded, run=run_result, also=also)


@contextmanager
def _corpus(ctx: WorkerContext, payload: TrainJob) -> Iterator[PreparedCorpus]:
    """The run's corpus: text (prepared from any format), or a chat corpus's JSON lines as
    they are (training/chat.py reads them)."""
    file_id = payload.corpus_file_id
    if payload.corpus_format != "chat":
        with prepare_corpus(ctx, file_id, payload.corpus_format, payload.text_field) as text:
            yield text
        return
    with fetch_corpus(ctx, file_id) as fetched:
        check_fetched_corpus(ctx, fetched)
        yield PreparedCorpus(fetched, file_id, "jsonl")


def _tokenizer_folder(ctx: WorkerContext, payload: TrainJob) -> tuple[Path, str]:
    """The folder the run's tokenizer is in, and the id its token files are cached under:
    the tokenizer's artifact, or the base model's whole folder (it brings its tokenizer)."""
    base = payload.spec.base_model
    if base is not None and is_hub_model(base):
        settings = ctx.settings
        folder = fetch_hub_model(
            base,
            hf_home=settings.hf_home,
            downloads=settings.app.hub_downloads,
            token=settings.hf_token,
        )
        read_model_folder(folder)  # not checked at submit: the API does not reach the hub
        # The snapshot's folder is named after its commit: a branch that moves is new text.
        return folder, f"base-hf-{folder.name}"
    if base is not None:
        folder = fetch_artifact(ctx, base, "base-model", "uploaded")
        read_model_folder(folder)  # checked again here: the API's reading may be old
        return folder, f"base-{base}"
    if payload.tokenizer_id is None:
        raise UserError("the run names neither a tokenizer nor a base model")
    file_id = ctx.tokenizers.file_id(payload.tokenizer_id)
    if file_id is None:
        raise UserError(f"tokenizer {payload.tokenizer_id} has no artifact (was it deleted?)")
    return fetch_artifact(ctx, file_id, "tokenizer", payload.tokenizer_id), payload.tokenizer_id


def _check_memory(ctx: WorkerContext, spec: TrainingSpec, tokenizer_dir: Path) -> None:
    """The API admits by what workers report; this worker checks its own memory too (a run
    submitted while no worker was up, or one that landed on a smaller worker)."""
    available = ctx.settings.admission.worker_memory_bytes or machine_memory_bytes()
    if available is None:
        return
    limit = int(available * ctx.settings.admission.memory_fraction)
    if spec.fine_tunes():
        estimate = estimate_fine_tune_memory(spec, read_model_folder(tokenizer_dir))
        lower = "batch_size or max_seq_len, use method lora, or pick a smaller base model"
    else:
        estimate = estimate_run_memory(spec, load_tokenizer(tokenizer_dir).vocab_size)
        lower = "n_embd, n_layer, batch_size or max_seq_len"
    if estimate.total_bytes > limit:
        raise UserError(
            f"this run needs about {estimate.describe()}, more than this worker's "
            f"{gib(limit)}: lower {lower}",
            ErrorCode.CONFIG_INVALID,
        )


def _initial_weights(ctx: WorkerContext, payload: TrainJob, run_dir: Path) -> Path | None:
    """A run started from another run's checkpoint: fetch that file (once per worker)."""
    source = payload.init_from
    if source is None:
        return None
    path = ctx.settings.app.data_root / "init-checkpoints" / f"{source.file_id}.pt"
    if not path.is_file():
        try:
            ctx.databank.download(source.file_id, path)
        except NotFound as exc:
            raise UserError(
                f"checkpoint {source.kind} at step {source.step} of run {source.run_id} is not "
                "in Data Bank any more; start from another checkpoint"
            ) from exc
    return path


def _upload_artifact(ctx: WorkerContext, owner: JobOwner, artifact: Path) -> FileInfo:
    """Upload the finished model, retrying with backoff for `upload_retry_sec`; then the
    failure is transient and a later attempt uploads it without training again."""

    def log_retry(state: RetryCallState) -> None:
        log.warning(
            "%s; retrying in %.0f s",
            state.outcome.exception() if state.outcome else "upload failed",
            state.upcoming_sleep,
            extra=log_fields("artifact_upload_retry"),
        )

    for attempt in Retrying(
        stop=stop_after_delay(ctx.settings.recovery.upload_retry_sec),
        wait=wait_exponential(multiplier=1.0, max=30.0),
        retry=retry_if_exception_type(ArtifactUploadFailed),
        before_sleep=log_retry,
        reraise=True,
    ):
        with attempt:
            owner.check()  # a worker that lost the run uploads nothing
            return publish_artifact(ctx, artifact, f"model-{owner.job_id}")
    raise AssertionError("unreachable: Retrying returns or raises")


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
