"""The hardware resolvers, given the facts: both answers for bf16 and for a GPU, whatever
this machine is (devices and precision: DESIGN.md, "Devices and precision")."""

from __future__ import annotations

import pytest
import torch

from model_trainer.errors import UserError
from model_trainer.training.config import Device, Precision
from model_trainer.training.hardware import (
    NO_GPU,
    CpuInfo,
    GpuInfo,
    cpu_info,
    native_bf16_flags,
    parse_cpuinfo,
    resolve_device,
    resolve_threads,
)
from model_trainer.training.precision import (
    BF16_MIN_GAIN,
    ProbeTimings,
    choose_precision,
    needs_probe,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a name only: nothing here touches a GPU
A_GPU = GpuInfo(available=True, name="NVIDIA H100", count=1, bf16_supported=True)

X86_WITH_BF16 = """processor\t: 0
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""
X86_WITHOUT_BF16 = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""
ARM_WITH_BF16 = """processor\t: 0
Features\t: fp asimd evtstrm aes sve bf16 i8mm
CPU part\t: 0xd4f
"""


def _cpu(native_bf16: bool) -> CpuInfo:
    return CpuInfo(
        model_name="test cpu",
        machine="x86_64",
        logical_cpus=2,
        usable_cpus=2,
        torch_capability="AVX2",
        native_bf16=native_bf16,
        bf16_flags=["avx512_bf16"] if native_bf16 else [],
    )


@pytest.mark.parametrize(
    ("text", "name", "bf16"),
    [
        (X86_WITH_BF16, "AMD EPYC 9B14", ["avx512_bf16"]),
        (X86_WITHOUT_BF16, "AMD EPYC 7B13", []),
        (ARM_WITH_BF16, "", ["bf16"]),
        ("", "", []),
    ],
)
def test_cpuinfo_flags_say_whether_bf16_is_native(text: str, name: str, bf16: list[str]) -> None:
    model_name, flags = parse_cpuinfo(text)
    assert model_name == name
    assert native_bf16_flags(flags) == bf16


def _probe(fp32_ms: float, bf16_ms: float) -> ProbeTimings:
    return ProbeTimings(fp32_ms=fp32_ms, bf16_ms=bf16_ms, pairs=3, seconds=0.5)


def test_auto_on_a_cpu_without_native_bf16_is_fp32_without_a_probe() -> None:
    assert not needs_probe(Precision.AUTO, CPU, _cpu(False))
    choice = choose_precision(Precision.AUTO, CPU, _cpu(False), NO_GPU)
    assert choice.precision is Precision.FP32
    assert choice.reason == "no native bf16 (cpuinfo)"
    assert choice.probe is None


@pytest.mark.parametrize(
    ("fp32_ms", "bf16_ms", "expected"),
    [
        (40.0, 30.0, Precision.BF16),  # clearly faster
        (40.0, 40.0 * (1 - BF16_MIN_GAIN), Precision.BF16),  # exactly the margin
        (43.0, 41.2, Precision.FP32),  # 4% faster: within the margin, fp32 is exact
        (40.0, 48.0, Precision.FP32),  # slower
    ],
)
def test_auto_on_a_cpu_with_native_bf16_follows_the_probe(
    fp32_ms: float, bf16_ms: float, expected: Precision
) -> None:
    assert needs_probe(Precision.AUTO, CPU, _cpu(True))
    probe = _probe(fp32_ms, bf16_ms)
    choice = choose_precision(Precision.AUTO, CPU, _cpu(True), NO_GPU, probe)
    assert choice.precision is expected
    assert choice.reason.startswith(
        f"probe: bf16 {bf16_ms:.1f} ms/step vs fp32 {fp32_ms:.1f} ms/step"
    )
    assert choice.probe == probe


def test_auto_with_native_bf16_but_no_timings_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="probe"):
        choose_precision(Precision.AUTO, CPU, _cpu(True), NO_GPU)


@pytest.mark.parametrize(("bf16", "expected"), [(True, Precision.BF16), (False, Precision.FP32)])
def test_auto_on_a_gpu_follows_its_bf16_support(bf16: bool, expected: Precision) -> None:
    gpu = A_GPU.model_copy(update={"bf16_supported": bf16})
    assert not needs_probe(Precision.AUTO, CUDA, _cpu(True))  # nothing measured on a GPU
    choice = choose_precision(Precision.AUTO, CUDA, _cpu(True), gpu)
    assert choice.precision is expected
    assert "GPU" in choice.reason
    assert choice.probe is None


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("asked", [Precision.FP32, Precision.BF16])
@pytest.mark.parametrize("device", [CPU, CUDA])
def test_an_explicit_precision_is_kept_anywhere(
    native: bool, asked: Precision, device: torch.device
) -> None:
    assert not needs_probe(asked, device, _cpu(native))
    choice = choose_precision(asked, device, _cpu(native), A_GPU)
    assert choice.precision is asked
    assert choice.reason == f"requested {asked.value}"


@pytest.mark.parametrize(
    ("asked", "gpu", "expected"),
    [
        (Device.AUTO, NO_GPU, "cpu"),
        (Device.AUTO, A_GPU, "cuda"),  # auto trains on whatever the worker has
        (Device.CPU, NO_GPU, "cpu"),
        (Device.CPU, A_GPU, "cpu"),
        (Device.CUDA, A_GPU, "cuda"),
    ],
)
def test_the_device_follows_the_request_and_the_worker(
    asked: Device, gpu: GpuInfo, expected: str
) -> None:
    assert resolve_device(asked, gpu).type == expected


def test_a_cuda_run_on_a_worker_without_a_gpu_fails_with_the_reason() -> None:
    with pytest.raises(UserError, match="no GPU"):
        resolve_device(Device.CUDA, NO_GPU)


@pytest.mark.parametrize("forced", [True, False])
def test_the_setting_overrides_what_the_flags_say(forced: bool) -> None:
    info = cpu_info(forced)
    assert info.native_bf16 is forced
    assert info.native_bf16_source == "setting"
    assert info.bf16_flags == cpu_info().bf16_flags  # the flags themselves are still reported
    assert cpu_info().native_bf16_source == "cpuinfo"


def test_compile_steps_false_states_there_is_no_compiler() -> None:
    """APP__COMPILE_STEPS=false: the worker's facts say no compiler, so `auto` stays eager
    and `on` is refused (test_execution.py), whatever is installed."""
    assert cpu_info(compile_steps=False).cpp_compiler is None
    assert cpu_info(compile_steps=True).cpp_compiler == cpu_info().cpp_compiler


def test_threads_take_the_first_positive_preference() -> None:
    assert resolve_threads(3, 5) == 3
    assert resolve_threads(None, 0, 4) == 4
    assert resolve_threads(None, 0) == cpu_info().usable_cpus
