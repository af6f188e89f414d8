"""Compile the presets' training steps ahead of the first run that needs them.

A worker started with APP__COMPILE_WARM_PRESETS runs this in a background process
(jobs/compile_warm.py): each preset at the defaults of `TrainingSpec` (family, batch,
context), in every precision `auto` can choose on this CPU, is compiled once, which fills
inductor's cache and the memo `compile: auto` reads (execution.py). A run of that shape then
compiles from the cache in seconds, and `auto` knows it.

A compiled graph is specific to the whole shape: vocabulary size and the padding token's id
(LLaMA-style embeddings zero its gradient) included. So the warm-up is exact only for runs
whose tokenizer has `vocab_size` tokens and byte-level BPE's special-token ids; other
shapes compile on first use, as without it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from model_trainer.training.config import CompileMode, ModelSize, Precision, TrainingSpec
from model_trainer.training.execution import CompileMemo, choose_execution
from model_trainer.training.hardware import NO_GPU, CpuInfo
from model_trainer.training.model import build_model, model_spec
from model_trainer.training.step import use_compile_cache
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.training")

# Byte-level BPE's special tokens take the first ids: end of text, then padding.
BPE_EOS_ID, BPE_PAD_ID = 0, 1


def warm_compile_cache(
    presets: list[ModelSize], cache_dir: Path, cpu: CpuInfo, threads: int, vocab_size: int
) -> None:
    use_compile_cache(cache_dir)
    torch.set_num_threads(threads)
    precisions = [Precision.FP32, Precision.BF16] if cpu.native_bf16 else [Precision.FP32]
    for size in presets:
        for precision in precisions:
            config = TrainingSpec(model_size=size, precision=precision, compile=CompileMode.ON)
            spec = model_spec(config, vocab_size, BPE_EOS_ID, BPE_PAD_ID)
            model = build_model(spec, config.model_family, config.seed)
            started = time.perf_counter()
            execution, _ = choose_execution(
                model,
                config,
                vocab_size,
                torch.device("cpu"),
                cpu,
                NO_GPU,
                threads=threads,
                planned_steps=None,
                memo=CompileMemo(cache_dir),
            )
            timings = execution.compile_timings
            hits = timings.cache_hits if timings and timings.cache_hits else 0
            log.info(
                "compile cache warmed: %s %s %s in %.1f s (%d graphs were cached already)",
                config.model_family.value,
                size.value,
                precision.value,
                time.perf_counter() - started,
                hits,
                extra=log_fields("compile_warmed", preset=size.value, precision=precision.value),
            )
