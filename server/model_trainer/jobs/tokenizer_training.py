"""The tokenizer job: corpus (Data Bank) -> tokenizer files -> tar -> Data Bank -> pointer."""

from __future__ import annotations

import shutil

from model_trainer.errors import JobCancelled, WorkerShutdown
from model_trainer.jobs.artifacts import prepare_corpus, publish_artifact
from model_trainer.jobs.context import worker_context
from model_trainer.jobs.ownership import JobOwner, owned_job
from model_trainer.jobs.payloads import TokenizerJob
from model_trainer.store.keys import JobKind
from model_trainer.store.records import TokenizerSummary
from model_trainer.tokenization.stopping import TrainingStopped
from model_trainer.tokenization.train import train_tokenizer
from model_trainer.training.hardware import resolve_threads


def run(payload_json: str) -> None:
    payload = TokenizerJob.model_validate_json(payload_json)
    ctx = worker_context()
    folder = ctx.settings.app.artifacts_root / "tokenizers" / payload.tokenizer_id
    # Every attempt starts clean: no file of an earlier one may end up in the tar.
    shutil.rmtree(folder, ignore_errors=True)
    with owned_job(
        ctx, JobKind.TOKENIZER, payload.tokenizer_id, folder, user_id=payload.user_id
    ) as owner:
        if owner is not None:
            _train(owner, payload)


def _train(owner: JobOwner, payload: TokenizerJob) -> None:
    ctx, config, tokenizer_id = owner.ctx, payload.config, payload.tokenizer_id
    folder = ctx.settings.app.artifacts_root / "tokenizers" / tokenizer_id
    with prepare_corpus(
        ctx, config.corpus_file_id, config.corpus_format, config.text_field
    ) as corpus:
        owner.stop_if_asked()
        try:
            result = train_tokenizer(
                config,
                corpus.path,
                folder,
                threads=resolve_threads(ctx.settings.app.threads),
                sample_bytes=ctx.settings.app.spm_sample_bytes,
                should_stop=owner.should_stop,
            )
        except TrainingStopped as exc:
            if owner.hand_back_requested():
                raise WorkerShutdown(str(exc)) from exc
            raise JobCancelled(str(exc)) from exc
    owner.stop_if_asked()
    uploaded = publish_artifact(ctx, folder, f"tokenizer-{tokenizer_id}")
    summary = TokenizerSummary(
        stats=result.stats.model_dump(mode="json") if result.stats else None,
        timings=result.timings.model_dump(mode="json"),
        vocab_size=result.vocab_size,
    )
    tokenizers = owner.fenced(ctx.tokenizers)
    owner.complete(
        f"trained {config.method} tokenizer, vocabulary {result.vocab_size}",
        artifact=uploaded,
        also=(
            *tokenizers.progress_commands(tokenizer_id, summary),
            *tokenizers.file_id_commands(tokenizer_id, uploaded.file_id),
        ),
    )
