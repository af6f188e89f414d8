"""How a run executes its training step: eager or compiled, fp32 or bf16 autocast.

Chosen once, at the run's start, and kept by every later session (LoopState.execution):

    precision: as asked, or for `auto` measured (precision.py: eager fp32 against eager bf16
        steps on a CPU with native bf16);
    compile: as asked (`on`, `off`), or for `auto` only when it pays for itself within the run:

        run seconds x (1 - 1 / speedup) > compile seconds

    (compiling first and then running `speedup` times faster does more steps than not
    compiling at all exactly when this holds). The run seconds are what is left of
    max_train_seconds, or for a steps or epochs budget its steps at the eager step time
    measured here. The compile seconds and the speedup come from this worker's memo of an
    earlier compile of the same shape (COMPILE_MEMO, beside inductor's cache), else from a
    rule that the benchmark figures back (docs/benchmarks.md, "Compiled steps"): a cold
    compile of COLD_COMPILE_BASE_SECONDS plus COLD_COMPILE_SECONDS_PER_LAYER a layer, and
    PRIOR_SPEEDUP, the smallest gain measured.

Precision is decided first, on eager steps, and compilation for that precision only: in the
benchmark the faster precision was the same eager and compiled for every shape, and a second
compile would cost as much as the first. Once compiled, a few steps are timed; if they are
not faster than the eager ones measured here, an `auto` run goes back to eager (the compile
time is spent either way, the rest of the run is not).

All of it (probe, compile, timed steps) is counted in the run's training budget: the loop
starts with these seconds already spent (`Execution.setup_seconds`).

`choose_compile` is a pure function of the request, the estimate and the run's length, so
tests state any case; `choose_execution` measures and compiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from transformers import PreTrainedModel

from model_trainer.errors import ErrorCode, UserError
from model_trainer.training.config import CompileMode, Precision, TrainingSpec
from model_trainer.training.hardware import CpuInfo, GpuInfo
from model_trainer.training.precision import (
    ProbeTimings,
    choose_precision,
    needs_probe,
    probe_precision,
)
from model_trainer.training.step import LossFn, cache_hits, loss_function, time_step

# The rule for a shape this worker has not compiled before. Inductor traces every layer, so
# the cost grows with depth; the figures are a cold cache on 2 cores (docs/benchmarks.md).
COLD_COMPILE_BASE_SECONDS = 10.0
COLD_COMPILE_SECONDS_PER_LAYER = 6.0
# A compile that finds its graphs in inductor's cache still traces the model (dynamo): this
# fraction of a cold compile, as measured.
WARM_COMPILE_FRACTION = 0.15
# Eager step time over compiled step time, the smallest measured across shapes and precisions.
PRIOR_SPEEDUP = 1.2
# Timed steps, eager and compiled, after a warmup step: whichever bound comes first.
TIMED_STEPS = 3
TIMED_SECONDS = 1.0
COMPILE_MEMO = "compile-memo.json"


class CompileEstimate(BaseModel):
    """What compiling is expected to cost and gain, and where the figures come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float
    speedup: float  # eager step time / compiled step time
    source: str


class CompileTimings(BaseModel):
    """The figures behind a compile decision, and what compiling then measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimate: CompileEstimate | None = None  # for `auto`
    eager_ms: float | None = None  # eager step (forward + backward), when measured
    compile_seconds: float | None = None  # the first compiled step less a compiled step
    compiled_ms: float | None = None
    cache_hits: int | None = None  # graphs loaded from inductor's cache instead of compiled


class Execution(BaseModel):
    """A run's execution, chosen at its start: saved in every checkpoint, kept on resuming."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision  # fp32 or bf16, never auto
    precision_reason: str
    precision_probe: ProbeTimings | None = None
    compiled: bool
    compile_reason: str
    compile_timings: CompileTimings | None = None
    setup_seconds: float = 0.0  # probe, compile and timed steps: part of the budget


class CompileDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    compiled: bool
    reason: str


def choose_compile(
    requested: CompileMode,
    estimate: CompileEstimate | None,
    run_seconds: float | None,
    *,
    can_compile: bool,
) -> CompileDecision:
    """Compile or not, and why (see the module doc). `estimate` and `run_seconds` are needed
    for `auto` only: the expected cost, and how long the run would train eager.
    `can_compile`: the machine has what compiling needs (a C++ compiler, on a CPU)."""
    if not can_compile:
        if requested is CompileMode.ON:
            raise _cannot_compile()
        return CompileDecision(
            compiled=False, reason=f"{requested.value}: no C++ compiler on this worker"
        )
    if requested is not CompileMode.AUTO:
        return CompileDecision(
            compiled=requested is CompileMode.ON, reason=f"requested {requested.value}"
        )
    if estimate is None or run_seconds is None:
        raise ValueError("compile auto needs the compile estimate and the run's length")
    saving = run_seconds * (1 - 1 / estimate.speedup)
    figures = (
        f"saving ~{saving:.0f} s of a {run_seconds:.0f} s run at {estimate.speedup:.2f}x "
        f"against ~{estimate.seconds:.0f} s to compile ({estimate.source})"
    )
    if saving > estimate.seconds:
        return CompileDecision(compiled=True, reason=f"auto: {figures}")
    return CompileDecision(compiled=False, reason=f"auto: not worth it, {figures}")


class CompileMemoEntry(BaseModel):
    """What the last compile of one shape on this worker measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compile_seconds: float
    warm: bool  # it loaded graphs from the cache
    eager_ms: float | None
    compiled_ms: float


def estimate_compile(n_layer: int, memo: CompileMemoEntry | None) -> CompileEstimate:
    """The cost and gain of compiling this shape: this worker's memo, else the rule."""
    if memo is None:
        seconds = COLD_COMPILE_BASE_SECONDS + COLD_COMPILE_SECONDS_PER_LAYER * n_layer
        return CompileEstimate(seconds=seconds, speedup=PRIOR_SPEEDUP, source="rule, cold cache")
    # The memo's compile filled the cache if it was cold: the next one finds its graphs.
    seconds = memo.compile_seconds if memo.warm else memo.compile_seconds * WARM_COMPILE_FRACTION
    speedup = PRIOR_SPEEDUP
    if memo.eager_ms is not None and memo.compiled_ms > 0:
        speedup = memo.eager_ms / memo.compiled_ms
    return CompileEstimate(
        seconds=round(seconds, 3), speedup=round(speedup, 3), source="measured on this worker"
    )


class CompileMemo:
    """COMPILE_MEMO in the compile cache's folder: one entry per shape key, rewritten whole.

    Concurrent runs may each write it; the last one wins, which loses at most an estimate.
    """

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / COMPILE_MEMO if folder is not None else None

    def get(self, key: str) -> CompileMemoEntry | None:
        entry = self._read().get(key)
        if entry is None:
            return None
        try:
            return CompileMemoEntry.model_validate(entry)
        except ValidationError:
            return None  # written by another version: as good as absent

    def put(self, key: str, entry: CompileMemoEntry) -> None:
        if self.path is None:
            return
        entries = self._read()
        entries[key] = entry.model_dump(mode="json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{COMPILE_MEMO}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def _read(self) -> dict[str, object]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def shape_key(
    config: TrainingSpec, vocab_size: int, precision: Precision, device: torch.device, threads: int
) -> str:
    """What a compiled step depends on: the model, the batch, the precision, the machine."""
    parts = {
        "torch": torch.__version__,
        "device": device.type,
        "threads": threads,
        "family": config.model_family.value,
        "base_model": config.base_model,
        "architecture": config.resolved().model_dump(mode="json"),
        "vocab_size": vocab_size,
        "batch": [config.batch_size, config.max_seq_len],
        "precision": precision.value,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def choose_execution(
    model: PreTrainedModel,
    config: TrainingSpec,
    vocab_size: int,
    device: torch.device,
    cpu: CpuInfo,
    gpu: GpuInfo,
    *,
    threads: int,
    planned_steps: int | None,
    memo: CompileMemo,
) -> tuple[Execution, LossFn]:
    """Choose the run's execution, measuring what `auto` needs; return it and its step.

    `planned_steps`: the run's steps for a steps or epochs budget (None for seconds). A
    compiled step comes back compiled already. The weights are not changed and the global
    random state is put back, as in the precision probe.
    """
    started = time.perf_counter()
    probe = None
    if needs_probe(config.precision, device, cpu):
        probe = probe_precision(model, config.batch_size, config.max_seq_len, vocab_size, device)
    precision = choose_precision(config.precision, device, cpu, gpu, probe)
    key = shape_key(config, vocab_size, precision.precision, device, threads)
    with _timing_batch(model, config, vocab_size, device) as (x, y):
        eager = loss_function(model, precision.precision, device, compiled=False)
        eager_ms = None
        if probe is not None:
            eager_ms = probe.bf16_ms if precision.precision is Precision.BF16 else probe.fp32_ms
        estimate, run_seconds = None, None
        # A base model's compile time and speed-up are not measured here (the estimate is
        # our presets'): it runs eager unless the request says `compile: on`.
        fine_tune_auto = config.fine_tunes() and config.compile is CompileMode.AUTO
        if config.compile is CompileMode.AUTO and can_compile(device, cpu) and not fine_tune_auto:
            estimate = estimate_compile(config.resolved().n_layer, memo.get(key))
            budget = config.budget()
            if planned_steps is None:
                run_seconds = max(0.0, budget.value - (time.perf_counter() - started))
            else:
                if eager_ms is None:
                    eager_ms = _median_ms(eager, model, x, y)
                run_seconds = planned_steps * eager_ms / 1000
        if fine_tune_auto:
            decision = CompileDecision(
                compiled=False,
                reason="auto: a base model's step runs eager (compile: on to compile it)",
            )
        else:
            decision = choose_compile(
                config.compile, estimate, run_seconds, can_compile=can_compile(device, cpu)
            )
        step, reason = eager, decision.reason
        timings = CompileTimings(estimate=estimate, eager_ms=eager_ms)
        if decision.compiled and config.compile is CompileMode.ON:
            step, timings = _compile(model, precision.precision, device, x, y, timings)
            memo.put(key, _memo_entry(timings))
        elif decision.compiled:
            if eager_ms is None:  # the yardstick of the compiled step, here and in the memo
                eager_ms = _median_ms(eager, model, x, y)
            timings = timings.model_copy(update={"eager_ms": eager_ms})
            step, timings = _compile(model, precision.precision, device, x, y, timings)
            memo.put(key, _memo_entry(timings))
            compiled_ms = timings.compiled_ms or 0.0
            if compiled_ms >= eager_ms:
                step = eager
                reason += f"; compiled {compiled_ms:.1f} ms/step, eager {eager_ms:.1f}: eager"
    compiled = step is not eager
    execution = Execution(
        precision=precision.precision,
        precision_reason=precision.reason,
        precision_probe=probe,
        compiled=compiled,
        compile_reason=reason,
        compile_timings=timings if config.compile is CompileMode.AUTO or compiled else None,
        setup_seconds=round(time.perf_counter() - started, 3),
    )
    return execution, step


def kept_execution(
    chosen: Execution,
    model: PreTrainedModel,
    config: TrainingSpec,
    vocab_size: int,
    device: torch.device,
    cpu: CpuInfo,
    step: int,
) -> tuple[Execution, LossFn]:
    """A resumed run's execution: the one its first session chose, compiled again if it was
    (from the cache, usually), with this session's setup seconds; and its step."""
    if chosen.compiled and not can_compile(device, cpu):
        raise _cannot_compile()
    started = time.perf_counter()
    loss = loss_function(model, chosen.precision, device, compiled=False)
    timings = chosen.compile_timings
    if chosen.compiled:
        with _timing_batch(model, config, vocab_size, device) as (x, y):
            loss, timings = _compile(model, chosen.precision, device, x, y, CompileTimings())
    kept = chosen.model_copy(
        update={
            "precision_reason": f"{chosen.precision_reason}; kept on resuming at step {step}",
            "compile_reason": f"{chosen.compile_reason}; kept on resuming at step {step}",
            "compile_timings": timings,
            "setup_seconds": round(time.perf_counter() - started, 3),
        }
    )
    return kept, loss


def can_compile(device: torch.device, cpu: CpuInfo) -> bool:
    """Inductor builds CPU kernels with a C++ compiler (GPU ones with Triton, in torch)."""
    return device.type != "cpu" or cpu.cpp_compiler is not None


def _cannot_compile() -> UserError:
    return UserError(
        "the run asks for compile on, but this worker has no C++ compiler to build the "
        "compiled step with (g++, or $CXX); use compile auto or off, or install g++ in the "
        "worker's image",
        ErrorCode.CONFIG_INVALID,
    )


def _compile(
    model: PreTrainedModel,
    precision: Precision,
    device: torch.device,
    x: torch.Tensor,
    y: torch.Tensor,
    timings: CompileTimings,
) -> tuple[LossFn, CompileTimings]:
    """Compile the step (its first call compiles forward and backward) and time it."""
    step = loss_function(model, precision, device, compiled=True)
    hits = cache_hits()
    first = time_step(step, model, x, y)
    # With a warmup step as for eager: the step after a compile is slow (measured: 10x for
    # graphs loaded from the cache), and would make the compiled step look slower than it is.
    compiled_ms = _median_ms(step, model, x, y)
    return step, timings.model_copy(
        update={
            "compile_seconds": round(max(0.0, first - compiled_ms / 1000), 3),
            "compiled_ms": compiled_ms,
            "cache_hits": cache_hits() - hits,
        }
    )


def _median_ms(step: LossFn, model: PreTrainedModel, x: torch.Tensor, y: torch.Tensor) -> float:
    """Median milliseconds of a few forward + backward steps (TIMED_STEPS or TIMED_SECONDS),
    after one untimed (allocation and kernel selection)."""
    time_step(step, model, x, y)
    started, times = time.perf_counter(), list[float]()
    while len(times) < TIMED_STEPS and (not times or time.perf_counter() - started < TIMED_SECONDS):
        times.append(time_step(step, model, x, y))
    return round(statistics.median(times) * 1000, 2)


def _memo_entry(timings: CompileTimings) -> CompileMemoEntry:
    return CompileMemoEntry(
        compile_seconds=timings.compile_seconds or 0.0,
        warm=bool(timings.cache_hits),
        eager_ms=timings.eager_ms,
        compiled_ms=timings.compiled_ms or 0.0,
    )


@contextmanager
def _timing_batch(
    model: PreTrainedModel, config: TrainingSpec, vocab_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A random batch of the run's shape on `device`, with the model in training mode and
    the global random state put back afterwards (the run trains as if nothing had run)."""
    # Random token ids: the step's cost depends on the shape, not on the text.
    generator = torch.Generator().manual_seed(0)
    shape = (config.batch_size, config.max_seq_len)
    x = torch.randint(vocab_size, shape, generator=generator).to(device)
    y = torch.randint(vocab_size, shape, generator=generator).to(device)
    rng, was_training = torch.random.get_rng_state(), model.training
    model.train()
    try:
        yield x, y
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.random.set_rng_state(rng)
