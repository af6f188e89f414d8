"""The hardware resolver, given the facts: both answers for bf16, whatever this CPU is."""

from __future__ import annotations

import pytest

from model_trainer.training.config import Precision
from model_trainer.training.hardware import (
    CpuInfo,
    cpu_info,
    native_bf16_flags,
    parse_cpuinfo,
    resolve_precision,
    resolve_threads,
)

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


@pytest.mark.parametrize(("native", "expected"), [(True, Precision.BF16), (False, Precision.FP32)])
def test_auto_precision_follows_native_bf16(native: bool, expected: Precision) -> None:
    assert resolve_precision(Precision.AUTO, _cpu(native)) is expected


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("asked", [Precision.FP32, Precision.BF16])
def test_an_explicit_precision_is_kept_on_any_cpu(native: bool, asked: Precision) -> None:
    assert resolve_precision(asked, _cpu(native)) is asked


@pytest.mark.parametrize("forced", [True, False])
def test_the_setting_overrides_what_the_flags_say(forced: bool) -> None:
    info = cpu_info(forced)
    assert info.native_bf16 is forced
    assert info.native_bf16_source == "setting"
    assert info.bf16_flags == cpu_info().bf16_flags  # the flags themselves are still reported
    assert cpu_info().native_bf16_source == "cpuinfo"


def test_threads_take_the_first_positive_preference() -> None:
    assert resolve_threads(3, 5) == 3
    assert resolve_threads(None, 0, 4) == 4
    assert resolve_threads(None, 0) == cpu_info().usable_cpus
