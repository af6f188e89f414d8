"""The tokenizer job: corpus (Data Bank) -> tokenizer files -> tar -> Data Bank -> pointer."""

from __future__ import annotations

import shutil

from model_trainer.jobs.artifacts import prepare_corpus, publish_artifact
from model_trainer.jobs.payloads import TokenizerJob
from model_trainer.jobs.runner import raise_stop_reason, running_job, stop_check, worker_context
from model_trainer.store.records import Status, TokenizerSummary
from model_trainer.tokenization.stopping import TrainingStopped
from model_trainer.tokenization.train import train_tokenizer
from model_trainer.training.hardware import resolve_threads


def run(payload_json: str) -> None:
    payload = TokenizerJob.model_validate_json(payload_json)
    ctx = worker_context()
    tokenizer_id = payload.tokenizer_id
    folder = ctx.settings.app.artifacts_root / "tokenizers" / tokenizer_id
    # A retry or re-submit starts clean: no file of an earlier attempt may end up in the tar.
    shutil.rmtree(folder, ignore_errors=True)
    with running_job(ctx, "tokenizer", tokenizer_id, folder) as job:
        if job is None:
            return  # cancelled before it started
        config = payload.config
        corpus = prepare_corpus(
            ctx, config.corpus_file_id, config.corpus_format, config.text_field
        ).path
        try:
            result = train_tokenizer(
                payload.config,
                corpus,
                folder,
                threads=resolve_threads(ctx.settings.app.threads),
                sample_bytes=ctx.settings.app.spm_sample_bytes,
                should_stop=lambda: stop_check(job),
            )
        except TrainingStopped:
            raise_stop_reason(job)
            raise
        job.raise_if_cancelled()
        file_id = publish_artifact(ctx, folder, f"tokenizer-{tokenizer_id}")
        ctx.tokenizers.set_file_id(tokenizer_id, file_id)
        summary = TokenizerSummary(
            stats=result.stats.model_dump(mode="json") if result.stats else None,
            timings=result.timings.model_dump(mode="json"),
            vocab_size=result.vocab_size,
        )
        ctx.tokenizers.set_progress(tokenizer_id, summary)
        ctx.tokenizers.set_status(
            tokenizer_id,
            Status.COMPLETED,
            f"trained {payload.config.method} tokenizer, vocabulary {result.vocab_size}",
        )
