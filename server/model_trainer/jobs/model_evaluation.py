"""The evaluation job: a run's artifact (Data Bank) -> metrics and samples on a split or a corpus.

An evaluation is a job of its own (a record of its own, the life of jobs/ownership.py); the
run's record names its latest one (its `eval` field), and its log lines go to the run's log stream,
so `/runs/{id}/logs` shows them. A finished run's own final evaluation is recorded the same
way, by the training job (`final_eval_commands`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from model_trainer.errors import UserError
from model_trainer.jobs.artifacts import fetch_artifact, prepare_corpus
from model_trainer.jobs.context import worker_context
from model_trainer.jobs.ownership import JobOwner, owned_job
from model_trainer.jobs.payloads import EvaluateJob, TrainJob
from model_trainer.store.fencing import Command
from model_trainer.store.keys import JobField, JobKind
from model_trainer.store.records import (
    BaseScore,
    EvalResult,
    RecordMeta,
    SampleText,
    Status,
    StatusStore,
    hset,
)
from model_trainer.training.evaluate import EvalMetrics, evaluate_folder
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")


def run(payload_json: str) -> None:
    payload = EvaluateJob.model_validate_json(payload_json)
    ctx = worker_context()
    out_dir = ctx.settings.app.runs_root / payload.run_id / "evals" / payload.eval_id
    with owned_job(
        ctx,
        JobKind.EVAL,
        payload.eval_id,
        out_dir,
        user_id=payload.user_id,
        logs_to=payload.run_id,
    ) as owner:
        if owner is not None:
            _evaluate(owner, payload, out_dir)


def _evaluate(owner: JobOwner, payload: EvaluateJob, out_dir: Path) -> None:
    ctx, run_id, request = owner.ctx, payload.run_id, payload.request
    log.info(
        "evaluation %s started (%s)",
        payload.eval_id,
        request.split or "another corpus",
        extra=log_fields("eval_started", split=request.split or "corpus"),
    )
    file_id = ctx.runs.file_id(run_id)
    if file_id is None:
        raise UserError(f"run {run_id} has no artifact to evaluate")
    # The run's own job: where its corpus came from and how it was read, and its seed.
    raw = ctx.runs.field(run_id, JobField.PAYLOAD)
    if raw is None:
        raise UserError(f"run {run_id} has no record of its job any more; evaluate another run")
    run = TrainJob.model_validate_json(raw)
    model_dir = fetch_artifact(ctx, file_id, "run", run_id)
    owner.stop_if_asked()
    if request.corpus_file_id is not None:
        with prepare_corpus(
            ctx, request.corpus_file_id, request.corpus_format, request.text_field
        ) as other:
            owner.stop_if_asked()
            metrics = evaluate_folder(
                model_dir, other.path, ctx.cache, out_dir, corpus_id=other.corpus_id, split="all"
            )
    elif run.corpus_format == "chat":
        raise UserError(
            f"run {run_id} trained on a chat corpus: its splits are conversations, which this "
            "evaluation does not render; its final evaluation scored its validation split, and "
            "it can be evaluated on a text corpus (corpus_file_id)"
        )
    else:
        # The run's own corpus: validation or test as `data.Holdout` defines them.
        with prepare_corpus(ctx, run.corpus_file_id, run.corpus_format, run.text_field) as own:
            owner.stop_if_asked()
            metrics = evaluate_folder(
                model_dir,
                own.path,
                ctx.cache,
                out_dir,
                corpus_id=own.corpus_id,
                split="test" if request.split == "test" else "validation",
                seed=run.spec.seed,
            )
    owner.stop_if_asked()
    result = eval_result(metrics, out_dir).model_copy(update={"split": request.split or "corpus"})
    evals = owner.fenced(ctx.evals)
    owner.complete(
        f"evaluation {payload.eval_id}: loss {metrics.loss:.4f}, "
        f"{metrics.bits_per_char:.3f} bits/char",
        also=evals.progress_commands(payload.eval_id, result),
    )
    log.info("evaluation %s completed", payload.eval_id, extra=log_fields("eval_completed"))


def eval_result(
    metrics: EvalMetrics, eval_dir: Path, base: EvalMetrics | None = None
) -> EvalResult:
    """What an evaluation measured; `base`: a fine-tuning run's base model on the same split."""
    samples_path = eval_dir / "samples.jsonl"
    samples: list[SampleText] = []
    if samples_path.exists():
        for line in samples_path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            samples.append(SampleText(prompt=str(row["prompt"]), completion=str(row["completion"])))
    return EvalResult(
        split=metrics.split,
        loss=metrics.loss,
        perplexity=metrics.perplexity,
        bits_per_char=metrics.bits_per_char,
        tokens_per_char=metrics.tokens_per_char,
        num_tokens=metrics.n_tokens,
        num_chars=metrics.n_chars,
        samples=samples,
        base=(
            BaseScore(loss=base.loss, perplexity=base.perplexity, bits_per_char=base.bits_per_char)
            if base is not None
            else None
        ),
    )


def final_eval_id(run_id: str) -> str:
    return f"eval-final-{run_id}"


def final_eval_commands(
    evals: StatusStore[EvalResult], run_id: str, result: EvalResult, message: str
) -> tuple[Command, ...]:
    """A finished run's own evaluation as a completed eval record, and the run's pointer to
    it: commands for the run's completing (fenced) write."""
    eval_id = final_eval_id(run_id)
    meta = RecordMeta(created_at=time.time(), request={"run_id": run_id, "split": "validation"})
    return (
        *hset(eval_id, (JobField.META, meta.model_dump_json())),
        *evals.status_commands(eval_id, Status.COMPLETED, message),
        *evals.progress_commands(eval_id, result),
        ("ZADD", evals.keys.index, repr(meta.created_at), eval_id),
        *hset(run_id, (JobField.EVAL, eval_id)),
    )
