"""The training loop: plain PyTorch, in the spirit of nanoGPT's train.py.

    resume from run_dir's last checkpoint if there is one, else (optionally) load the
        weights of another run's checkpoint into the fresh model
    evaluate once at step 0
    until the budget (steps, epochs or seconds) is spent:
        stop if cancelled; checkpoint and stop if the worker is shutting down
        set the learning rate from the plan (warmup, then cosine to a floor)
        draw a random batch of windows, forward, cross-entropy (eager or compiled, as
            the run's execution says: execution.py, step.py), backward
        clip the gradient norm, optimizer step (AdamW, or Muon + AdamW: optimizer.py)
        every eval_interval steps: loss on the fixed validation windows (keep the best);
            after early_stopping_patience validations in a row without a new best, stop
        every log_interval steps: a metrics row and a progress callback
        every checkpoint_interval steps, or checkpoint_every_seconds: a checkpoint
    evaluate and checkpoint at the end (the budget's end or the early stop)

If `run_dir` already holds a checkpoint (a retried job, or one the job fetched back from
Data Bank), the loop resumes from it. The job talks to the loop only through
`TrainingCallbacks`, passed in explicitly.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from transformers import PreTrainedModel

from model_trainer.errors import CheckpointInvalid, ErrorCode, UserError
from model_trainer.training.checkpoint import (
    CheckpointFile,
    CheckpointKind,
    LoopState,
    MetricRow,
    TrainingCheckpoint,
    checkpoint_path,
    load_weights,
    save_best,
    save_last,
)
from model_trainer.training.config import Budget, Precision, TrainingSpec
from model_trainer.training.data import (
    IGNORED,
    TokenSplits,
    WindowSampler,
    validation_batches,
)
from model_trainer.training.evaluate import EvalMetrics
from model_trainer.training.execution import Execution
from model_trainer.training.model import load_trainable_state, trainable_state
from model_trainer.training.optimizer import make_optimizer
from model_trainer.training.schedule import LrPlan
from model_trainer.training.step import CPU, LossFn, autocast, forward_logits
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.training")

METRICS_FILE = "metrics.jsonl"
LOG_INTERVAL = 10  # steps per metrics row / progress callback
# Steps of each session left out of the seconds-per-step estimate: the first ones are slow
# (memory allocation, kernel selection) and would make the time-budget plan too short.
PACE_WARMUP_STEPS = 5


@dataclass(frozen=True)
class ProgressInfo:
    step: int
    total_steps: int  # where training is planned to end; the last row's own step
    epoch: float
    total_epochs: float  # total_steps in passes over the training split
    train_loss: float | None
    grad_norm: float | None  # mean total gradient norm (before clipping) of the same steps
    val_loss: float | None  # the latest validation loss, computed at this step or before
    evaluated: bool  # val_loss was computed at this step
    lr: float
    tokens_per_sec: float | None
    elapsed: float
    eta_seconds: float | None


@dataclass(frozen=True)
class EvalInfo:
    step: int
    val_loss: float
    best_val_loss: float
    elapsed: float


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    kind: CheckpointKind
    elapsed: float
    file: CheckpointFile  # what the sidecar beside `path` says (size, SHA-256...)


class TrainingCallbacks:
    """What the loop tells its caller, and asks it. The defaults do nothing; override."""

    def on_progress(self, info: ProgressInfo) -> None:
        return None

    def on_eval(self, info: EvalInfo) -> None:
        return None

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        return None

    def should_stop(self) -> bool:
        """True to cancel the run; checked before every step."""
        return False

    def should_hand_back(self) -> bool:
        """True to save a checkpoint and stop where a later attempt resumes (the worker is
        shutting down); checked before every step."""
        return False

    def on_execution(self, execution: Execution) -> None:
        """How this session runs its steps (chosen, or kept on resuming), before the first."""
        return None


class Outcome(StrEnum):
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"  # the validation loss stopped improving: also a success
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # checkpointed and stopped on request: to be resumed


@dataclass(frozen=True)
class LoopResult:
    outcome: Outcome
    state: LoopState
    session_seconds: float  # wall time of this session only (a resumed run has several)


def planned_steps(budget: Budget, train_tokens: int, tokens_per_step: int) -> int:
    if budget.kind == "steps":
        return int(budget.value)
    if budget.kind == "epochs":
        return max(1, math.ceil(budget.value * train_tokens / tokens_per_step))
    # A first guess for a time budget; replaced by measurements after a few steps.
    return max(1, int(budget.value * 10))


@torch.inference_mode()
def validation_loss(
    model: PreTrainedModel,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    precision: Precision,
    device: torch.device = CPU,
) -> float:
    """Mean cross-entropy (nats per token) over the fixed validation windows (on `device`)."""
    model.train(False)  # model.eval(): no dropout
    total, count = 0.0, 0
    for x, y in batches:
        with autocast(precision, device):
            logits = forward_logits(model, x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        count += int((y != IGNORED).sum())  # a chat corpus's targets outside the loss: none
    model.train()
    return total / count


class MetricsLog:
    """`metrics.jsonl`: rewritten from the checkpoint's rows at start, then appended to."""

    def __init__(self, path: Path, rows: list[MetricRow]) -> None:
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(row.model_dump_json() + "\n" for row in rows)
        os.replace(tmp, path)

    def append(self, row: MetricRow) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(row.model_dump_json() + "\n")


class _Pace:
    """Seconds per step in this session, measured after its first few steps."""

    def __init__(self) -> None:
        self.anchor: tuple[int, float] | None = None
        self.session_steps = 0

    def tick(self, step: int, elapsed: float) -> None:
        self.session_steps += 1
        if self.session_steps == PACE_WARMUP_STEPS:
            self.anchor = (step, elapsed)

    def seconds_per_step(self, step: int, elapsed: float) -> float | None:
        if self.anchor is None or step <= self.anchor[0]:
            return None
        return (elapsed - self.anchor[1]) / (step - self.anchor[0])


def _identity(config_json: str) -> dict[str, object]:
    try:
        return TrainingSpec.model_validate_json(config_json).identity()
    except ValidationError as exc:
        raise CheckpointInvalid(f"the checkpoint's config is not valid: {exc}") from exc


def train(
    model: PreTrainedModel,
    config: TrainingSpec,
    splits: TokenSplits,
    run_dir: Path,
    *,
    execution: Execution,
    loss_fn: LossFn,
    resume: TrainingCheckpoint | None,
    callbacks: TrainingCallbacks,
    device: torch.device = CPU,
    log_interval: int = LOG_INTERVAL,
    checkpoint_every_seconds: float | None = None,
    init_weights: Path | None = None,
    init_label: str | None = None,
    base_eval: EvalMetrics | None = None,
) -> LoopResult:
    """Train `model` in place; resume from `run_dir`'s checkpoint if there is one.

    `execution` is how the steps run (execution.choose_execution; a resumed run passes its
    checkpoint's, kept), and `loss_fn` the step's forward and loss that runs them, eager or
    compiled; its `setup_seconds` (this session's probe and compile) count in the budget.
    `resume`: run_dir's last checkpoint (`load_last`), to continue from.
    `device` is where `model` already is (hardware.resolve_device): batches go there too.
    `checkpoint_every_seconds`: also checkpoint when this much training time has passed
    since the previous checkpoint. `init_weights`: a checkpoint file (`last.pt` or
    `best.pt`, of any run) whose weights a run without a checkpoint of its own starts from;
    `init_label` names it in the logs and the state (default: the file name).
    `base_eval`: a fine-tuning run's base model scored before training (kept in the state).
    """
    if checkpoint_every_seconds is not None and not checkpoint_every_seconds > 0:
        raise ValueError(f"checkpoint_every_seconds must be > 0, got {checkpoint_every_seconds}")
    options = _Options(device, log_interval, checkpoint_every_seconds, execution.setup_seconds)
    state = LoopState(execution=execution, base_eval=base_eval)
    trainer = _Trainer(model, config, splits, run_dir, state, loss_fn, callbacks, options)
    if resume is not None:
        trainer.resume(resume)
    elif init_weights is not None:
        trainer.initialise(init_weights, init_label or init_weights.name)
    callbacks.on_execution(execution)
    return trainer.run()


@dataclass(frozen=True)
class _Options:
    device: torch.device
    log_interval: int
    checkpoint_every_seconds: float | None
    setup_seconds: float


class _Trainer:
    """The loop of `train`, with its bookkeeping in small methods."""

    def __init__(
        self,
        model: PreTrainedModel,
        config: TrainingSpec,
        splits: TokenSplits,
        run_dir: Path,
        state: LoopState,
        loss_fn: LossFn,
        callbacks: TrainingCallbacks,
        options: _Options,
    ) -> None:
        self.session_start = time.perf_counter()
        self.model, self.config, self.run_dir = model, config, run_dir
        self.precision, self.callbacks = state.execution.precision, callbacks
        self.loss_fn = loss_fn
        self.device = options.device
        self.setup_seconds = options.setup_seconds
        self.log_interval = options.log_interval
        self.checkpoint_every_seconds = options.checkpoint_every_seconds
        self.train_tokens = len(splits.train)
        self.tokens_per_step = config.batch_size * config.max_seq_len
        self.budget = config.budget()
        self.sampler = WindowSampler(
            splits.train, config.max_seq_len, config.batch_size, config.seed, splits.train_mask
        )
        self.val_batches = [
            (x.to(self.device), y.to(self.device))
            for x, y in validation_batches(
                splits.validation,
                config.max_seq_len,
                config.batch_size,
                config.eval_batches,
                splits.validation_mask,
            )
        ]
        self.optimizer = make_optimizer(model, config, state.execution.precision)
        self.plan = LrPlan(
            peak=config.learning_rate,
            warmup_steps=config.warmup_steps,
            schedule=config.lr_schedule,
            min_lr_ratio=config.min_lr_ratio,
            total_steps=planned_steps(self.budget, self.train_tokens, self.tokens_per_step),
        )
        self.state = state
        state.total_steps = self.plan.total_steps
        run_dir.mkdir(parents=True, exist_ok=True)
        self.pace = _Pace()
        # Tokens/s is measured per metrics row, over training steps only.
        self.window_t0, self.window_tokens = time.perf_counter(), 0
        self.window_eval_seconds = 0.0
        self.last_eval_seconds = 0.0
        self.last_checkpoint_seconds = 0.0

    def run(self) -> LoopResult:
        state, config = self.state, self.config
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE, state.metrics)
        # This session's setup (precision probe, compilation) is spent from the budget too.
        state.elapsed += self.setup_seconds
        state.setup_seconds += self.setup_seconds
        self.elapsed_before = state.elapsed
        # Seconds of training at the previous checkpoint (the resumed one, to begin with).
        self.checkpointed_at = state.elapsed
        log.info(
            "training from step %d (%s%s on %s, %d tokens per step)",
            state.step,
            self.precision.value,
            ", compiled" if state.execution.compiled else "",
            self.device.type,
            self.tokens_per_step,
            extra=log_fields("training_started", step=state.step),
        )
        self.model.train()
        if state.last_eval_step is None:  # a fresh run (a resumed one has its step-0 row)
            self._record(self._evaluate(), self.plan.lr(0))

        # A run resumed from its final checkpoint (it crashed after the loop) ends at once.
        end = self._budget_spent() or state.stopped_early
        while not end:
            if self.callbacks.should_stop():
                log.info("cancelled", extra=log_fields("training_cancelled", step=state.step))
                return self._result(Outcome.CANCELLED)
            if self.callbacks.should_hand_back():
                self._checkpoint()
                log.info("interrupted", extra=log_fields("training_interrupted", step=state.step))
                return self._result(Outcome.INTERRUPTED)

            lr = self._train_step()
            last = self._budget_spent()  # the final step is always evaluated and logged
            due = last or state.step % config.eval_interval == 0 or self._eval_point_passed()
            val = self._evaluate() if due else None
            # Patience running out on the budget's last step is a completed run, not a stop.
            state.stopped_early = not last and self._patience_spent()
            end = last or state.stopped_early
            if val is not None or end or state.step % self.log_interval == 0:
                self._record(val, lr, end=end)
            if not end and self._checkpoint_due():
                self._checkpoint()

        self._checkpoint()
        outcome = Outcome.EARLY_STOPPED if state.stopped_early else Outcome.COMPLETED
        if state.stopped_early:
            log.info(
                "stopped early at step %d: %d validations in a row without beating the best "
                "loss, %.4f at step %s",
                state.step,
                state.evals_since_best,
                state.best_val_loss or float("nan"),
                state.best_step,
                extra=log_fields("early_stopped", step=state.step, best_step=state.best_step),
            )
        log.info(
            "training finished at step %d, validation loss %.4f",
            state.step,
            state.last_val_loss or float("nan"),
            extra=log_fields("training_finished", step=state.step),
        )
        return self._result(outcome)

    def _train_step(self) -> float:
        """One optimizer update; returns the learning rate it used."""
        lr = self.plan.lr(self.state.step)
        # Every group follows the plan from its own peak (Muon's and AdamW's differ).
        self.optimizer.set_lr_factor(lr / self.plan.peak)
        x, y = (t.to(self.device, non_blocking=True) for t in self.sampler.next_batch())
        loss = self.loss_fn(x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise _diverged("training loss", loss_value, self.state.step, self.config)
        torch.autograd.backward(loss)  # loss.backward()
        # The total norm before clipping is what clipping returns; reported with the loss.
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        state = self.state
        state.step += 1
        state.tokens_seen += self.tokens_per_step
        state.window_loss_sum += loss_value
        state.window_steps += 1
        state.window_grad_norm_sum += float(norm)
        self.window_tokens += self.tokens_per_step
        self.pace.tick(state.step, self._elapsed())
        return lr

    def _evaluate(self) -> float:
        started, state = time.perf_counter(), self.state
        val = validation_loss(self.model, self.val_batches, self.precision, self.device)
        if not math.isfinite(val):
            raise _diverged("validation loss", val, state.step, self.config)
        state.last_val_loss, state.last_eval_step = val, state.step
        if state.best_val_loss is None or val < state.best_val_loss:
            state.best_val_loss, state.best_step, state.evals_since_best = val, state.step, 0
            file = save_best(self.run_dir, trainable_state(self.model), state.step, val)
            self._checkpoint_saved(file, self._elapsed())
        else:
            state.evals_since_best += 1  # counts towards early stopping
        log.info(
            "step %d: validation loss %.4f",
            state.step,
            val,
            extra=log_fields("evaluated", step=state.step),
        )
        self.callbacks.on_eval(EvalInfo(state.step, val, state.best_val_loss, self._elapsed()))
        self.last_eval_seconds = time.perf_counter() - started
        self.window_eval_seconds += self.last_eval_seconds
        return val

    def _record(self, val_loss: float | None, lr: float, *, end: bool = False) -> None:
        """A metrics row and a progress callback for the steps since the last row.

        `val_loss` is the validation computed at this step, if any; `end` marks the run's
        last row, where the planned end becomes the actual one.
        """
        state = self.state
        train_loss = state.window_loss_sum / state.window_steps if state.window_steps else None
        grad_norm = state.window_grad_norm_sum / state.window_steps if state.window_steps else None
        if grad_norm is not None and not math.isfinite(grad_norm):
            grad_norm = None  # an overflowing step: clipping coped, the report leaves it out
        # Tokens/s measures training: the window's evaluation time is left out.
        window_seconds = time.perf_counter() - self.window_t0 - self.window_eval_seconds
        tokens_per_sec = self.window_tokens / window_seconds if self.window_tokens else None
        spent = self._elapsed()
        per_step = self.pace.seconds_per_step(state.step, spent)
        if end:
            # The run ends here, which an early stop or a time budget puts short of (or
            # just past) the plan's estimate: the last row says where it really ended.
            state.total_steps = state.step
        elif self.budget.kind == "seconds" and per_step is not None:
            closing = self.last_eval_seconds + self.last_checkpoint_seconds
            seconds_left = self.budget.value - spent - closing
            self.plan.replan(state.step, seconds_left, per_step)
            state.total_steps = self.plan.total_steps
        row = MetricRow(
            step=state.step,
            train_loss=train_loss,
            val_loss=val_loss,
            lr=lr,
            tokens_per_sec=tokens_per_sec,
            elapsed=round(spent, 3),
        )
        state.metrics.append(row)
        self.metrics.append(row)
        state.window_loss_sum, state.window_steps = 0.0, 0
        state.window_grad_norm_sum = 0.0
        self.window_t0, self.window_tokens = time.perf_counter(), 0
        self.window_eval_seconds = 0.0
        self.callbacks.on_progress(
            ProgressInfo(
                step=state.step,
                total_steps=state.total_steps,
                epoch=state.tokens_seen / self.train_tokens,
                total_epochs=state.total_steps * self.tokens_per_step / self.train_tokens,
                train_loss=train_loss,
                grad_norm=grad_norm,
                val_loss=state.last_val_loss,
                evaluated=val_loss is not None,
                lr=lr,
                tokens_per_sec=tokens_per_sec,
                elapsed=spent,
                eta_seconds=0.0 if end else _eta(self.budget, state, spent, per_step),
            )
        )

    def _checkpoint_due(self) -> bool:
        if self.state.step % self.config.checkpoint_interval == 0:
            return True
        every = self.checkpoint_every_seconds
        return every is not None and self._elapsed() - self.checkpointed_at >= every

    def _checkpoint(self) -> None:
        started, state = time.perf_counter(), self.state
        state.elapsed = self.checkpointed_at = self._elapsed()
        file = save_last(
            self.run_dir,
            TrainingCheckpoint(
                config_json=self.config.model_dump_json(),
                model=trainable_state(self.model),
                optimizer=self.optimizer.state_dict(),
                sampler=self.sampler.state_dict(),
                loop=state,
            ),
        )
        log.info("checkpoint saved", extra=log_fields("checkpoint_saved", step=state.step))
        self._checkpoint_saved(file, state.elapsed)
        self.last_checkpoint_seconds = time.perf_counter() - started

    def _checkpoint_saved(self, file: CheckpointFile, elapsed: float) -> None:
        path = checkpoint_path(self.run_dir, file.kind)
        self.callbacks.on_checkpoint(CheckpointInfo(file.step, path, file.kind, elapsed, file))

    def resume(self, ckpt: TrainingCheckpoint) -> None:
        """Continue from the run's last checkpoint."""
        if _identity(ckpt.config_json) != self.config.identity():
            raise UserError(
                f"{self.run_dir} holds a checkpoint of a different config; use a new run",
                ErrorCode.CONFIG_INVALID,
            )
        load_trainable_state(self.model, ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.sampler.load_state_dict(ckpt.sampler)
        self.state = ckpt.loop
        self.state.resumed_at.append(self.state.step)
        saved = TrainingSpec.model_validate_json(ckpt.config_json).budget()
        if saved != self.budget:
            # Resumed with another budget (a paused run given more): plan from the new one.
            planned = planned_steps(self.budget, self.train_tokens, self.tokens_per_step)
            self.state.total_steps = max(self.state.step, planned)
        self.plan.total_steps = self.state.total_steps
        log.info(
            "resuming from the checkpoint at step %d",
            self.state.step,
            extra=log_fields("training_resumed", step=self.state.step),
        )

    def initialise(self, path: Path, label: str) -> None:
        """Start a fresh run from the weights of a checkpoint file (optimizer, plan: fresh)."""
        weights = load_weights(path)
        problem = _mismatch(self.model.state_dict(), weights)
        if problem is not None:
            raise UserError(
                f"cannot start from {label}: the architectures differ ({problem}); use the "
                f"same model_family, model size, n_layer, n_head, n_embd, n_kv_head, "
                f"tie_word_embeddings, max_seq_len and tokenizer",
                ErrorCode.CONFIG_INVALID,
            )
        self.model.load_state_dict(weights)
        self.state.initialised_from = label
        log.info(
            "starting from the weights of %s",
            label,
            extra=log_fields("initialised_from", source=label),
        )

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start

    def _eval_point_passed(self) -> bool:
        """A point of `eval_at` was passed since the last validation (in the budget's unit:
        steps, or seconds of training for a time budget)."""
        points = self.config.eval_at
        if not points or self.state.last_eval_step is None:
            return False
        seconds = self.budget.kind == "seconds"
        now = self._elapsed() if seconds else float(self.state.step)
        # Where the last validation was, in the same unit (its row's elapsed seconds).
        then = float(self.state.last_eval_step)
        if seconds:
            then = next(
                (
                    r.elapsed
                    for r in reversed(self.state.metrics)
                    if r.step == self.state.last_eval_step
                ),
                0.0,
            )
        return any(then < point <= now for point in points)

    def _budget_spent(self) -> bool:
        if self.budget.kind == "seconds":
            # Stop when one more step, the final validation and the final checkpoint would
            # overrun the budget, so that the run ends on it rather than past it.
            spent = self._elapsed()
            per_step = self.pace.seconds_per_step(self.state.step, spent) or 0.0
            end = self.last_eval_seconds + self.last_checkpoint_seconds
            return spent + per_step + end >= self.budget.value
        return self.state.step >= self.state.total_steps

    def _patience_spent(self) -> bool:
        patience = self.config.early_stopping_patience
        return patience is not None and self.state.evals_since_best >= patience

    def _result(self, outcome: Outcome) -> LoopResult:
        self.state.elapsed = self._elapsed()
        return LoopResult(outcome, self.state, time.perf_counter() - self.session_start)


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """How a checkpoint's tensors differ from the model's, in words; None if they fit."""
    missing = sorted(expected.keys() - found.keys())
    if missing:
        return f"{len(missing)} tensors missing, e.g. {missing[0]}"
    unexpected = sorted(found.keys() - expected.keys())
    if unexpected:
        return f"{len(unexpected)} unknown tensors, e.g. {unexpected[0]}"
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape:
            return (
                f"{name} is {tuple(found[name].shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} in this run"
            )
    return None


def _eta(budget: Budget, state: LoopState, spent: float, per_step: float | None) -> float | None:
    if budget.kind == "seconds":
        return max(0.0, budget.value - spent)
    if per_step is None:
        return None
    return max(0, state.total_steps - state.step) * per_step


def _diverged(what: str, value: float, step: int, config: TrainingSpec) -> UserError:
    return UserError(
        f"the {what} became {value} at step {step}: training diverged. The learning rate "
        f"({config.learning_rate:g}) is probably too high; lower learning_rate "
        f"(or raise warmup_steps) and try again",
        ErrorCode.CONFIG_INVALID,
    )
