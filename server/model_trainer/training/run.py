"""`run_training`: the whole job, from a corpus file and a tokenizer folder to an artifact.

    threads and device -> tokens (cached under the corpus id) -> train/validation/test
    split (data.Holdout) -> a fresh model, on the device -> its execution: fp32 or bf16,
    eager or compiled (measured for `auto`, or kept on resuming: execution.py) -> the loop
    (resuming from run_dir's checkpoint if any, else starting from `init_weights` if given;
    it may stop early) -> the weights to ship (best.pt's by default, or the last) ->
    artifact folder -> evaluation of those weights on the whole validation split -> manifest

Run folder:
    run_dir/metrics.jsonl                     the loss curve, one row per logged step
    run_dir/checkpoints/last.pt, best.pt      see checkpoint.py
    run_dir/checkpoints/last.json, best.json  their sidecars (CheckpointFile)
    run_dir/artifact/                         see artifact.py (the lead tars and uploads it)

The caller (the RQ job) owns Redis, events and uploads; it passes `TrainingCallbacks`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from transformers import PreTrainedModel

from model_trainer.disk_cache import DiskCache
from model_trainer.errors import OutOfMemory
from model_trainer.manifest import library_versions, write_manifest
from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.training.artifact import (
    ArtifactWeights,
    DataSummary,
    FineTuning,
    Manifest,
    Timings,
    TrainingSummary,
    publish,
    save_model,
    save_tokenizer_files,
    staging_dir,
)
from model_trainer.training.chat import ChatTemplate
from model_trainer.training.checkpoint import LoopState, load_best, load_last
from model_trainer.training.config import Device, TrainingSpec
from model_trainer.training.data import (
    Holdout,
    eval_tokens,
    split_tokens,
    tokenize_chat_corpus,
    tokenize_corpus,
)
from model_trainer.training.evaluate import (
    EVAL_DIR,
    EvalMetrics,
    eval_context,
    evaluate_model,
    score,
)
from model_trainer.training.execution import CompileMemo, choose_execution, kept_execution
from model_trainer.training.finetune import (
    LoadedBase,
    load_base_model,
    merged_model,
    save_adapter,
)
from model_trainer.training.hardware import (
    NO_GPU,
    CpuInfo,
    GpuInfo,
    resolve_device,
    resolve_threads,
)
from model_trainer.training.loop import (
    METRICS_FILE,
    Outcome,
    TrainingCallbacks,
    planned_steps,
    train,
)
from model_trainer.training.model import (
    build_model,
    count_params,
    flops_per_token,
    load_trainable_state,
    model_spec,
)
from model_trainer.training.step import use_compile_cache
from model_trainer.training.tensorboard import write_tensorboard
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.training")

ARTIFACT_DIR = "artifact"


class TrainingResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Outcome
    steps: int
    artifact_dir: Path | None  # None when cancelled
    manifest: Manifest | None
    eval: EvalMetrics | None


def run_training(
    config: TrainingSpec,
    corpus_path: Path,
    tokenizer_dir: Path,
    run_dir: Path,
    token_cache: DiskCache,
    *,
    cpu: CpuInfo,
    corpus_id: str,
    tokenizer_id: str,
    device_requested: Device = Device.AUTO,
    gpu: GpuInfo = NO_GPU,
    threads: int | None = None,
    callbacks: TrainingCallbacks | None = None,
    checkpoint_every_seconds: float | None = None,
    init_weights: Path | None = None,
    init_label: str | None = None,
    compile_cache_dir: Path | None = None,
    chat: bool = False,
) -> TrainingResult:
    """Train, save and evaluate; resume from `run_dir`'s checkpoint if one is there.

    `cpu` and `gpu` are the worker's facts (`hardware.cpu_info()`, and `gpu_info()` on a
    GPU worker): `device_requested` and `precision: auto` resolve against them. `threads`:
    how many the run may use (0 or None: every usable core). Raises `UserError` for bad
    input or a diverging loss. Ends `INTERRUPTED`, after a checkpoint, when
    `callbacks.should_hand_back()` says so (no artifact: resume later).

    `corpus_id` (the Data Bank id of the corpus, the SHA-256 of `corpus_path`'s bytes; for a
    structured corpus, the id of the text it gave) and `tokenizer_id` key the token file in
    `token_cache`: the corpus is not hashed again.

    `checkpoint_every_seconds`: checkpoint on time as well as every
    `config.checkpoint_interval` steps. `init_weights`: a `last.pt` or `best.pt` (of another
    run) whose weights a run without a checkpoint of its own starts from; the manifest
    names it `init_label` (default: the file name). An early stop ends the run like its
    budget would: artifact, evaluation and manifest.

    `compile_cache_dir`: where inductor keeps compiled graphs, with the worker's memo of
    compile times (execution.py); None: inductor's default folder, and no memo.
    """
    started = time.perf_counter()
    n_threads = resolve_threads(threads)
    torch.set_num_threads(n_threads)
    device = resolve_device(device_requested, gpu)
    if compile_cache_dir is not None:
        use_compile_cache(compile_cache_dir)

    # A base model's own tokenizer (its folder holds it); it may name no pad token.
    tokenizer = load_tokenizer(tokenizer_dir, pad_falls_back_to_eos=config.fine_tunes())
    t0 = time.perf_counter()
    # The token file is mapped for the whole run: held until it ends, never evicted.
    if chat:  # conversations in the base model's chat template, with their loss mask
        tokens_of_corpus = tokenize_chat_corpus(
            corpus_path,
            tokenizer,
            ChatTemplate(tokenizer_dir),
            tokenizer_id,
            token_cache,
            corpus_id=corpus_id,
            assistant_only=config.loss_on == "assistant",
        )
    else:
        tokens_of_corpus = tokenize_corpus(
            corpus_path, tokenizer, tokenizer_id, token_cache, corpus_id=corpus_id
        )
    with tokens_of_corpus as cache:
        splits = split_tokens(cache, config.holdout_fraction, tokenizer)
        tokenize_seconds = time.perf_counter() - t0

        base: LoadedBase | None = None
        if config.fine_tunes():
            base = load_base_model(tokenizer_dir, config)
            model = base.model
            shape = (model.config.num_hidden_layers, model.config.hidden_size)
        else:
            spec = model_spec(config, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
            model = build_model(spec, config.model_family, config.seed)
            shape = (spec.n_layer, spec.n_embd)
        nn.Module.to(model, device)  # transformers' typing of `model.to` hides nn.Module's
        # Loading restores the random states; choosing puts back whatever it draws.
        resume = load_last(run_dir)
        tokens = cache.tokens()
        holdout = Holdout.of(len(tokens), config.holdout_fraction)
        base_eval = None
        if base is not None and resume is None:  # a resumed run has it in its checkpoint
            base_eval = score(
                model,
                tokenizer,
                eval_tokens(tokens, holdout, "validation"),
                "validation",
                eval_context(model),
            )
            log.info(
                "base model %s: %.4f nats/token, %.4f bits/char on validation",
                config.base_model,
                base_eval.loss,
                base_eval.bits_per_char,
                extra=log_fields("base_model_evaluated", bits_per_char=base_eval.bits_per_char),
            )
        if resume is None:
            budget = config.budget()
            steps = None
            if budget.kind != "seconds":
                steps = planned_steps(
                    budget, len(splits.train), config.batch_size * config.max_seq_len
                )
            execution, loss_fn = choose_execution(
                model,
                config,
                tokenizer.vocab_size,
                device,
                cpu,
                gpu,
                threads=n_threads,
                planned_steps=steps,
                memo=CompileMemo(compile_cache_dir),
            )
        else:
            # A resumed run keeps its first session's choice, whatever this worker would choose.
            execution, loss_fn = kept_execution(
                resume.loop.execution,
                model,
                config,
                tokenizer.vocab_size,
                device,
                cpu,
                resume.loop.step,
            )
        precision = execution.precision
        log.info(
            "model %s: %d parameters, %d threads, %s%s on %s (%s; %s)",
            config.model_family.value,
            count_params(model),
            n_threads,
            precision.value,
            ", compiled" if execution.compiled else "",
            device.type,
            execution.precision_reason,
            execution.compile_reason,
            extra=log_fields(
                "model_built",
                threads=n_threads,
                precision=precision.value,
                precision_reason=execution.precision_reason,
                compiled=execution.compiled,
                compile_reason=execution.compile_reason,
                setup_seconds=execution.setup_seconds,
                device=device.type,
            ),
        )
        with _allocation_failures_as_out_of_memory():
            result = train(
                model,
                config,
                splits,
                run_dir,
                execution=execution,
                loss_fn=loss_fn,
                resume=resume,
                device=device,
                callbacks=callbacks or TrainingCallbacks(),
                checkpoint_every_seconds=checkpoint_every_seconds,
                init_weights=init_weights,
                init_label=init_label,
                base_eval=base_eval,
            )
        state = result.state
        if result.outcome in (Outcome.CANCELLED, Outcome.INTERRUPTED):
            return TrainingResult(
                outcome=result.outcome,
                steps=state.step,
                artifact_dir=None,
                manifest=None,
                eval=None,
            )

        weights = ship_weights(model, config, run_dir, state)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        artifact_dir = run_dir / ARTIFACT_DIR
        staging = staging_dir(artifact_dir)
        if base is not None and config.artifact_format == "adapter" and base.adapter is not None:
            save_adapter(base, config.base_model or "", staging)
            save_tokenizer_files(tokenizer, staging)
        else:
            if base is not None:
                model = merged_model(base)
            save_model(model, tokenizer, staging)
        t0 = time.perf_counter()
        metrics = evaluate_model(
            model,
            tokenizer,
            eval_tokens(tokens, holdout, "validation"),
            staging / EVAL_DIR,
            split="validation",
            seed=config.seed,
        )
        eval_seconds = time.perf_counter() - t0
        shutil.copyfile(run_dir / METRICS_FILE, staging / METRICS_FILE)
        final = {"val_loss": metrics.loss, "bits_per_char": metrics.bits_per_char}
        write_tensorboard(staging, state.metrics, config, final)

        rates = [r.tokens_per_sec for r in state.metrics if r.tokens_per_sec is not None]
        train_losses = [r.train_loss for r in state.metrics if r.train_loss is not None]
        manifest = Manifest(
            config=config,
            architecture=None if base is not None else config.resolved(),
            fine_tuning=(
                FineTuning(
                    base_model=config.base_model or "",
                    model_type=base.model_type,
                    architecture=type(model).__name__,
                    method=config.method,
                    trainable_params=trainable,
                    artifact_format=config.artifact_format,
                    base_eval=state.base_eval,
                )
                if base is not None
                else None
            ),
            n_params=count_params(model),
            flops_per_token=flops_per_token(model, *shape, config.max_seq_len),
            seed=config.seed,
            precision_requested=config.precision,
            precision=precision,
            compile_requested=config.compile,
            compiled=execution.compiled,
            execution=execution,
            device_requested=device_requested,
            device="cuda" if device.type == "cuda" else "cpu",
            threads=n_threads,
            cpu=cpu,
            gpu=gpu if device.type == "cuda" else None,
            versions=library_versions(),
            data=DataSummary(
                corpus_sha256=corpus_id,
                tokenizer_id=tokenizer_id,
                vocab_size=tokenizer.vocab_size,
                token_dtype=cache.meta.dtype,
                tokens_from_cache=cache.from_cache,
                train_tokens=len(splits.train),
                validation_tokens=len(splits.validation),
                train_chars=splits.train_chars,
                validation_chars=splits.validation_chars,
                test_tokens=len(splits.test),
                test_chars=splits.test_chars,
            ),
            timings=Timings(
                tokenize_seconds=round(tokenize_seconds, 3),
                train_seconds=round(state.elapsed, 3),
                setup_seconds=round(state.setup_seconds, 3),
                session_seconds=round(result.session_seconds, 3),
                eval_seconds=round(eval_seconds, 3),
                total_seconds=round(time.perf_counter() - started, 3),
            ),
            training=TrainingSummary(
                steps=state.step,
                tokens_seen=state.tokens_seen,
                epochs=state.tokens_seen / len(splits.train),
                resumed_at_steps=state.resumed_at,
                stopped_early=state.stopped_early,
                stopped_early_at_step=state.step if state.stopped_early else None,
                final_train_loss=train_losses[-1] if train_losses else None,
                final_val_loss=state.last_val_loss,
                best_val_loss=state.best_val_loss,
                best_step=state.best_step,
                tokens_per_sec=sum(rates) / len(rates) if rates else None,
            ),
            weights=weights,
            initialised_from=state.initialised_from,
            eval=metrics,
        )
        write_manifest(staging, manifest.model_dump(mode="json"))
        publish(staging, artifact_dir)
        log.info(
            "artifact written: %d steps, %s weights of step %d, %.4f bits/char on validation",
            state.step,
            weights.kind,
            weights.step,
            metrics.bits_per_char,
            extra=log_fields("artifact_written", step=state.step, weights=weights.kind),
        )
        return TrainingResult(
            outcome=result.outcome,
            steps=state.step,
            artifact_dir=artifact_dir,
            manifest=manifest,
            eval=metrics,
        )


def ship_weights(
    model: PreTrainedModel, config: TrainingSpec, run_dir: Path, state: LoopState
) -> ArtifactWeights:
    """Put the weights the artifact ships into `model` (best.pt's, or the last); say which.

    `model` holds the last weights when training returns. best.pt is used only when it is
    the run's own best (`state.best_step` and loss): one written past the checkpoint a run
    resumed from belongs to a stretch of training that was rolled back.
    """
    last = ArtifactWeights(kind="last", step=state.step, val_loss=state.last_val_loss)
    if config.artifact_weights == "last":
        return last
    best = load_best(run_dir)
    if best is None or (best.step, best.val_loss) != (state.best_step, state.best_val_loss):
        log.warning(
            "no best checkpoint of step %s in %s: the artifact ships the last weights",
            state.best_step,
            run_dir,
            extra=log_fields("best_weights_missing", step=state.step),
        )
        return last
    load_trainable_state(model, best.model)
    return ArtifactWeights(kind="best", step=best.step, val_loss=best.val_loss)


@contextmanager
def _allocation_failures_as_out_of_memory() -> Iterator[None]:
    """torch reports a failed allocation as `torch.OutOfMemoryError` on a GPU, and from its
    CPU allocator as a plain RuntimeError naming `DefaultCPUAllocator`: both become our
    typed `OutOfMemory`, so that no one downstream reads messages to class a failure."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(str(exc)) from exc
    except RuntimeError as exc:
        if "DefaultCPUAllocator" in str(exc):
            raise OutOfMemory(str(exc)) from exc
        raise
