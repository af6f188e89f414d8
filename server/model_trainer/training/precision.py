"""`precision: auto`, measured: which of fp32 and bf16 autocast a run uses, and why.

bf16 autocast is not faster everywhere. On a CPU without bf16 instructions PyTorch converts
in software and bf16 is slower than fp32; on one with them (avx512_bf16, amx_bf16, Arm bf16)
the gain depends on the model's shapes: 4% for gpt2 tiny on a 2-core AMD EPYC with
avx512_bf16 (docs/benchmarks.md). So on a CPU with native bf16 the run measures both:

    one warmup step of each (allocation, kernel selection), then fp32 and bf16 steps in
    turns (so that a neighbour's load or a clock change hits both alike), forward and
    backward of the run's own model at the run's own batch shape, until PROBE_SECONDS or
    PROBE_PAIRS pairs, whichever comes first (at least one pair); the median of each wins.

bf16 is chosen only when it is at least BF16_MIN_GAIN faster: under that the gain is within
what a probe of a few steps on a shared machine can tell apart, and fp32 is exact (bf16 keeps
8 bits of mantissa in the matrix products). The probe's seconds are part of the run's
training budget (execution.py); the manifest records them.

Elsewhere there is nothing to measure: without native bf16 fp32 (the reason says so); on a
GPU bf16 where `torch.cuda.is_bf16_supported()` (Ampere and later: bf16 tensor cores run
at twice or more the fp32 rate), else fp32. An explicit `fp32` or `bf16` is kept as asked.

`choose_precision` is a pure function of the request, the device, the hardware facts and
the probe's timings, so tests state any machine; `probe_precision` does the measuring.
"""

from __future__ import annotations

import statistics
import time

import torch
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel

from model_trainer.training.config import Precision
from model_trainer.training.hardware import CpuInfo, GpuInfo
from model_trainer.training.step import loss_function, time_step

# The probe's bounds: whichever comes first, after at least one measured pair.
PROBE_SECONDS = 1.5
PROBE_PAIRS = 5
# bf16 must be at least this much faster (a fraction of fp32's step time) to be chosen.
BF16_MIN_GAIN = 0.05


class ProbeTimings(BaseModel):
    """What the probe measured: median milliseconds per forward+backward step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fp32_ms: float
    bf16_ms: float
    pairs: int
    seconds: float  # the probe's wall time, warmup included


class PrecisionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision  # fp32 or bf16, never auto
    reason: str
    probe: ProbeTimings | None = None


def needs_probe(requested: Precision, device: torch.device, cpu: CpuInfo) -> bool:
    """Whether `choose_precision` needs timings: `auto` on a CPU with native bf16."""
    return requested is Precision.AUTO and device.type == "cpu" and cpu.native_bf16


def choose_precision(
    requested: Precision,
    device: torch.device,
    cpu: CpuInfo,
    gpu: GpuInfo,
    probe: ProbeTimings | None = None,
) -> PrecisionChoice:
    """fp32 or bf16 for a run, and the reason in words (see the module doc)."""
    if requested is not Precision.AUTO:
        return PrecisionChoice(precision=requested, reason=f"requested {requested.value}")
    if device.type == "cuda":
        if gpu.bf16_supported:
            return PrecisionChoice(precision=Precision.BF16, reason="GPU supports bf16")
        return PrecisionChoice(precision=Precision.FP32, reason="GPU has no bf16 support")
    if not cpu.native_bf16:
        return PrecisionChoice(
            precision=Precision.FP32, reason=f"no native bf16 ({cpu.native_bf16_source})"
        )
    if probe is None:
        raise ValueError("auto precision on a CPU with native bf16 needs the probe's timings")
    figures = f"bf16 {probe.bf16_ms:.1f} ms/step vs fp32 {probe.fp32_ms:.1f} ms/step"
    if probe.bf16_ms <= probe.fp32_ms * (1 - BF16_MIN_GAIN):
        return PrecisionChoice(precision=Precision.BF16, reason=f"probe: {figures}", probe=probe)
    return PrecisionChoice(
        precision=Precision.FP32,
        reason=f"probe: {figures} (bf16 not {BF16_MIN_GAIN:.0%} faster)",
        probe=probe,
    )


def probe_precision(
    model: PreTrainedModel,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    device: torch.device,
    *,
    max_seconds: float = PROBE_SECONDS,
    max_pairs: int = PROBE_PAIRS,
) -> ProbeTimings:
    """Time forward+backward of `model` in fp32 and bf16 autocast (see the module doc).

    The model's weights are not changed (no optimizer step; gradients are dropped after)
    and the global random state is put back, so a probed run trains exactly as an unprobed
    one with the same precision would.
    """
    started = time.perf_counter()
    rng = torch.random.get_rng_state()
    # Random token ids: the step's cost depends on the shape, not on the text.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(vocab_size, (batch_size, seq_len), generator=generator).to(device)
    y = torch.randint(vocab_size, (batch_size, seq_len), generator=generator).to(device)
    was_training = model.training
    model.train()
    times: dict[Precision, list[float]] = {Precision.FP32: [], Precision.BF16: []}
    steps = {p: loss_function(model, p, device, compiled=False) for p in times}
    try:
        for precision in times:  # warmup, not timed
            time_step(steps[precision], model, x, y)
        while True:
            for precision, measured in times.items():
                measured.append(time_step(steps[precision], model, x, y))
            pairs = len(times[Precision.FP32])
            if pairs >= max_pairs or time.perf_counter() - started >= max_seconds:
                break
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.random.set_rng_state(rng)
    return ProbeTimings(
        fp32_ms=round(statistics.median(times[Precision.FP32]) * 1000, 2),
        bf16_ms=round(statistics.median(times[Precision.BF16]) * 1000, 2),
        pairs=pairs,
        seconds=round(time.perf_counter() - started, 3),
    )
