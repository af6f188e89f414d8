"""What this CPU can do: thread count, native bf16, a description for manifests.

`precision: auto` must not assume bf16 is fast: on a CPU without bf16 instructions PyTorch
still runs bf16 autocast, by converting in software, which is slower than fp32. So we read
the instruction-set flags ourselves: x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from model_trainer.training.config import Precision

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


class CpuInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    machine: str
    logical_cpus: int
    usable_cpus: int
    torch_capability: str
    native_bf16: bool
    bf16_flags: list[str]


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    model_name, flags = _read_cpuinfo()
    bf16 = sorted(flags & NATIVE_BF16_FLAGS)
    return CpuInfo(
        model_name=model_name or platform.processor() or "unknown",
        machine=platform.machine(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=usable_cpus(),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=bool(bf16),
        bf16_flags=bf16,
    )


def _read_cpuinfo() -> tuple[str, set[str]]:
    if not CPUINFO.is_file():
        return "", set()
    model_name = ""
    flags: set[str] = set()
    for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model_name:
            model_name = value.strip()
        elif key in ("flags", "features"):  # x86 / Arm spelling
            flags.update(value.split())
    return model_name, flags


def usable_cpus() -> int:
    """Cores this process may run on (affinity- and therefore cgroup-cpuset-aware)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_precision(requested: Precision) -> Precision:
    """`auto` becomes bf16 only where the CPU computes in bf16 natively, else fp32."""
    if requested is Precision.AUTO:
        return Precision.BF16 if cpu_info().native_bf16 else Precision.FP32
    return requested


def resolve_threads(*preferences: int | None) -> int:
    """The first preference that is set and positive, else every usable core."""
    for threads in preferences:
        if threads:
            return threads
    return usable_cpus()
