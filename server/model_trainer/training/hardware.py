"""What this machine can do: the CPU (threads, native bf16) and the GPU, for manifests.

`precision: auto` must not assume bf16 is fast: on a CPU without bf16 instructions PyTorch
still runs bf16 autocast, by converting in software, which is slower than fp32. So we read
the instruction-set flags ourselves: x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`.

The facts are detected once (`cpu_info()`) and then passed in as a `CpuInfo` to whatever
depends on them (`precision.choose_precision`, `run_training`), so code and tests can state the
hardware instead of reading it from a global. An operator whose VM hides or misreports the
flags overrides the answer with the `APP__NATIVE_BF16` setting.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from model_trainer.errors import ErrorCode, UserError
from model_trainer.training.config import Device

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
    # Where `native_bf16` came from: the CPU's flags, or the APP__NATIVE_BF16 setting.
    native_bf16_source: Literal["cpuinfo", "setting"] = "cpuinfo"
    # The C++ compiler inductor builds CPU kernels with (`compile`, execution.py); None: none
    # found, and the training step cannot be compiled on this machine.
    cpp_compiler: str | None = None


def cpu_info(native_bf16: bool | None = None, compile_steps: bool | None = None) -> CpuInfo:
    """This machine's CPU. `native_bf16` (when not None) overrides what its flags say;
    `compile_steps=False` states that there is no compiler to build compiled steps with."""
    info = _detect()
    if native_bf16 is not None:
        info = info.model_copy(update={"native_bf16": native_bf16, "native_bf16_source": "setting"})
    if compile_steps is False:
        info = info.model_copy(update={"cpp_compiler": None})
    return info


@lru_cache(maxsize=1)
def _detect() -> CpuInfo:
    model_name, flags = _read_cpuinfo()
    bf16 = native_bf16_flags(flags)
    return CpuInfo(
        model_name=model_name or platform.processor() or "unknown",
        machine=platform.machine(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=usable_cpus(),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=bool(bf16),
        bf16_flags=bf16,
        cpp_compiler=find_cpp_compiler(),
    )


def find_cpp_compiler() -> str | None:
    """The compiler inductor would call (its `cpp.cxx` default: $CXX, else g++ or, on macOS,
    clang++), as a path; None when it is not installed."""
    default = "clang++" if sys.platform == "darwin" else "g++"
    return shutil.which(os.environ.get("CXX", default))


def _read_cpuinfo() -> tuple[str, set[str]]:
    if not CPUINFO.is_file():
        return "", set()
    return parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """The model name and the feature flags from the text of /proc/cpuinfo."""
    model_name = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model_name:
            model_name = value.strip()
        elif key in ("flags", "features"):  # x86 / Arm spelling
            flags.update(value.split())
    return model_name, flags


def native_bf16_flags(flags: set[str]) -> list[str]:
    """The flags among `flags` that mean the CPU computes bf16 natively."""
    return sorted(flags & NATIVE_BF16_FLAGS)


def usable_cpus() -> int:
    """Cores this process may run on (affinity- and therefore cgroup-cpuset-aware)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class GpuInfo(BaseModel):
    """The GPU a worker trains on; `available` False on a CPU worker (the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    available: bool
    name: str | None = None
    count: int = 0
    bf16_supported: bool = False
    memory_bytes: int | None = None
    cuda_version: str | None = None


NO_GPU = GpuInfo(available=False)


def gpu_info() -> GpuInfo:
    """This machine's first CUDA device, as torch sees it (NO_GPU with the CPU build)."""
    if not torch.cuda.is_available():
        return NO_GPU
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(
        available=True,
        name=props.name,
        count=torch.cuda.device_count(),
        bf16_supported=torch.cuda.is_bf16_supported(),
        memory_bytes=props.total_memory,
        cuda_version=torch.version.cuda,
    )


def resolve_device(requested: Device, gpu: GpuInfo) -> torch.device:
    """`auto`: the worker's GPU if it has one, else the CPU; `cpu` and `cuda` as said.

    A `cuda` run reaches only GPU workers (the GPU queue); one that reaches a worker without
    a GPU anyway (a misconfigured worker) fails with a message that says so.
    """
    if requested is Device.CPU or (requested is Device.AUTO and not gpu.available):
        return torch.device("cpu")
    if not gpu.available:
        raise UserError(
            "the run asks for device cuda but this worker has no GPU; it reached a CPU "
            "worker that serves the GPU queue (check APP__WORKER_DEVICE and RQ__GPU_QUEUE_NAME)",
            ErrorCode.CONFIG_INVALID,
        )
    return torch.device("cuda")


def resolve_threads(*preferences: int | None) -> int:
    """The first preference that is set and positive, else every usable core."""
    for threads in preferences:
        if threads:
            return threads
    return usable_cpus()
