"""What each submit does, one small function per action; routes only map HTTP onto these.

Every check that can be made at submit time is made here (tokenizer finished, artifact and
corpus still in Data Bank), so a bad request is refused now rather than minutes later in a job.
"""

from __future__ import annotations

import time
import uuid

from model_trainer.api.deps import ApiContext, artifact_available, require_corpus
from model_trainer.api.schemas import EvalAccepted, RunAccepted, TokenizerAccepted
from model_trainer.errors import ConflictError, NotFoundError
from model_trainer.jobs.payloads import EvaluateJob, EvaluateRequest, TokenizerJob, TrainJob
from model_trainer.jobs.queue import JobName
from model_trainer.store.records import EvalInfo, Record, RecordMeta, RunProgress, Status
from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.training.config import ModelTrainConfig


def submit_tokenizer(ctx: ApiContext, config: TokenizerTrainConfig) -> TokenizerAccepted:
    """The same request twice is the same tokenizer: answer its state instead of training it
    again. A failed or cancelled one, or one whose artifact is gone from Data Bank, is
    trained anew under the same id."""
    tokenizer_id = config.tokenizer_id()
    store = ctx.tokenizers
    current = store.record(tokenizer_id)
    state = current.status if current else None
    if state is Status.COMPLETED and current and not artifact_available(ctx, current.file_id):
        state = Status.FAILED
    if state is not None and state not in (Status.FAILED, Status.CANCELLED):
        return TokenizerAccepted(tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=state)
    require_corpus(ctx, config.corpus_file_id)
    meta = RecordMeta(created_at=time.time(), request=config.model_dump(mode="json"))
    if state is not None:
        store.reset(tokenizer_id, meta)
    elif not store.create(tokenizer_id, meta):
        # Another request created it between our read and write.
        latest = store.status(tokenizer_id) or Status.QUEUED
        return TokenizerAccepted(tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=latest)
    payload = TokenizerJob(tokenizer_id=tokenizer_id, config=config)
    job_id = ctx.queue.enqueue(JobName.TRAIN_TOKENIZER, payload, job_id=tokenizer_id)
    return TokenizerAccepted(tokenizer_id=tokenizer_id, job_id=job_id, status=Status.QUEUED)


def submit_run(ctx: ApiContext, config: ModelTrainConfig) -> RunAccepted:
    """A new run (runs are never deduplicated) once its tokenizer and corpus are usable."""
    tokenizer = ctx.tokenizers.record(config.tokenizer_id)
    if tokenizer is None:
        raise NotFoundError(f"unknown tokenizer_id {config.tokenizer_id!r}")
    if tokenizer.status is not Status.COMPLETED:
        raise ConflictError(
            f"tokenizer {config.tokenizer_id!r} is {tokenizer.status.value}, not completed: "
            "wait for it to finish (GET /tokenizers/{id})"
        )
    if not artifact_available(ctx, tokenizer.file_id):
        raise ConflictError(
            f"the artifact of tokenizer {config.tokenizer_id!r} is not in Data Bank any more: "
            "train the tokenizer again (POST /tokenizers/train with the same request)"
        )
    require_corpus(ctx, config.corpus_file_id)
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    ctx.runs.create(
        run_id, RecordMeta(created_at=time.time(), request=config.model_dump(mode="json"))
    )
    job_id = ctx.queue.enqueue(
        JobName.TRAIN_MODEL, TrainJob(run_id=run_id, config=config), job_id=run_id
    )
    return RunAccepted(run_id=run_id, job_id=job_id, status=Status.QUEUED)


def cancel_run(ctx: ApiContext, run: Record[RunProgress]) -> None:
    """Ask the worker to stop within a step; a run nobody has started is cancelled at once."""
    if run.status.terminal:
        raise ConflictError(f"run {run.id!r} is already {run.status.value}")
    ctx.runs.request_cancel(run.id)
    if run.status is Status.QUEUED:
        # A worker that picks the job up later skips it.
        ctx.runs.set_status(run.id, Status.CANCELLED, "cancelled before it started")


def submit_evaluation(
    ctx: ApiContext, run: Record[RunProgress], request: EvaluateRequest
) -> EvalAccepted:
    """One evaluation at a time per run, of a completed run only."""
    if run.status is not Status.COMPLETED or run.file_id is None:
        raise ConflictError(
            f"run {run.id!r} is {run.status.value}: only a completed run is evaluated"
        )
    if request.corpus_file_id is not None:
        require_corpus(ctx, request.corpus_file_id)
    current = ctx.runs.eval(run.id)
    if current is not None and not current.status.terminal:
        raise ConflictError(
            f"evaluation {current.eval_id} of run {run.id!r} is still {current.status}"
        )
    eval_id = f"eval-{uuid.uuid4().hex[:12]}"
    info = EvalInfo(
        run_id=run.id,
        eval_id=eval_id,
        status=Status.QUEUED,
        split=request.split,
        corpus_file_id=request.corpus_file_id,
    )
    ctx.runs.set_eval(run.id, info)
    job = EvaluateJob(run_id=run.id, eval_id=eval_id, request=request)
    job_id = ctx.queue.enqueue(JobName.EVALUATE_MODEL, job, job_id=f"{run.id}-{eval_id}")
    return EvalAccepted(run_id=run.id, eval_id=eval_id, job_id=job_id, status=Status.QUEUED)
