"""The evaluation job: a run's artifact (Data Bank) -> metrics and samples on a split or a corpus.

An evaluation is not a run of its own: its status lives in the run's `eval` record, and its
log lines go to the run's log stream, so `/runs/{id}/logs` shows them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model_trainer.errors import UserError
from model_trainer.jobs.artifacts import fetch_artifact, prepare_corpus
from model_trainer.jobs.payloads import EvaluateJob
from model_trainer.jobs.runner import WorkerContext, worker_context
from model_trainer.manifest import read_manifest
from model_trainer.store.records import EvalInfo, SampleText, Status
from model_trainer.store.runlog import capture_job_logs
from model_trainer.training.config import STORED, ModelTrainConfig
from model_trainer.training.evaluate import EvalMetrics, evaluate_folder
from service_common.jsonlog import bound, log_fields, run_id_var

log = logging.getLogger("model_trainer.jobs")


def run(payload_json: str) -> None:
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
    ctx.runs.set_eval(run_id, info)
    out_dir = ctx.settings.app.runs_root / run_id / "evals" / payload.eval_id
    with (
        bound(run_id_var, run_id),
        capture_job_logs(ctx.redis, run_id, out_dir, ctx.settings.app.log_stream_maxlen),
    ):
        log.info(
            "evaluation %s started (%s)",
            payload.eval_id,
            request.split or "another corpus",
            extra=log_fields("eval_started", split=request.split or "corpus"),
        )
        try:
            result = _evaluate(ctx, payload, out_dir)
        except UserError as exc:
            failed = info.model_copy(update={"status": Status.FAILED, "message": exc.message})
            ctx.runs.set_eval(run_id, failed)
            log.error("evaluation failed: %s", exc.message, extra=log_fields("eval_failed"))
            return
        except Exception as exc:
            message = f"system error: {type(exc).__name__}: {exc}"
            failed = info.model_copy(update={"status": Status.FAILED, "message": message})
            ctx.runs.set_eval(run_id, failed)
            log.exception("evaluation failed", extra=log_fields("eval_failed"))
            raise
        ctx.runs.set_eval(run_id, result)
        log.info(
            "evaluation %s completed: %.4f bits/char",
            payload.eval_id,
            result.bits_per_char or float("nan"),
            extra=log_fields("eval_completed"),
        )


def _evaluate(ctx: WorkerContext, payload: EvaluateJob, out_dir: Path) -> EvalInfo:
    run_id, request = payload.run_id, payload.request
    file_id = ctx.runs.file_id(run_id)
    if file_id is None:
        raise UserError(f"run {run_id} has no artifact to evaluate")
    model_dir = fetch_artifact(ctx, file_id, "run", run_id)
    manifest = read_manifest(model_dir)
    config = ModelTrainConfig.model_validate(manifest["config"], context=STORED)
    cache = ctx.settings.app.data_root / "tokens"
    if request.corpus_file_id is not None:
        other = prepare_corpus(
            ctx, request.corpus_file_id, request.corpus_format, request.text_field
        )
        metrics = evaluate_folder(
            model_dir, other.path, cache, out_dir, corpus_id=other.corpus_id, split="all"
        )
    else:
        # The run's own corpus: validation or test as `data.Holdout` defines them.
        own = prepare_corpus(ctx, config.corpus_file_id, config.corpus_format, config.text_field)
        metrics = evaluate_folder(
            model_dir,
            own.path,
            cache,
            out_dir,
            corpus_id=own.corpus_id,
            split="test" if request.split == "test" else "validation",
            seed=config.seed,
        )
    result = eval_info(run_id, payload.eval_id, metrics, out_dir)
    return result.model_copy(
        update={"split": request.split or "corpus", "corpus_file_id": request.corpus_file_id}
    )


def eval_info(run_id: str, eval_id: str, metrics: EvalMetrics, eval_dir: Path) -> EvalInfo:
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
