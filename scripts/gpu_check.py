#!/usr/bin/env python3
"""The training library on a CUDA GPU: one run per shape, eager and compiled, in bf16 where
the GPU has it, then a hand-back and resume, then the artifact loaded and sampled in stock
transformers. Prints one JSON line per run (tokens/s, MFU, the execution chosen) and
writes them to `--out`. Needs only the training library's own dependencies (no Redis, no
API), so that it runs on a lent GPU machine: see docs/benchmarks.md, "GPU".

    python scripts/gpu_check.py --corpus CORPUS --work DIR --out results.jsonl [--quick]

MFU: model FLOPs per token (the manifest's `flops_per_token`, 6N plus attention) times
tokens/s, over the GPU's dense bf16 peak (`--peak-tflops`, H200: 989).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import torch
from bench_train import bench_cache, corpus_id, train_bpe  # the sibling script's helpers
from torch import nn

from model_trainer.training.config import Device, TrainingSpec
from model_trainer.training.hardware import cpu_info, gpu_info
from model_trainer.training.loop import ProgressInfo, TrainingCallbacks
from model_trainer.training.run import TrainingResult, run_training


@runtime_checkable
class CanGenerate(Protocol):
    """What this script uses of a transformers model (its own typing of `generate` is loose)."""

    def generate(self, inputs: torch.Tensor, max_new_tokens: int, do_sample: bool) -> torch.Tensor:
        """Token ids, the prompt's first."""


class HandBackAt(TrainingCallbacks):
    def __init__(self, step: int) -> None:
        self.step = step
        self.seen = 0

    def on_progress(self, info: ProgressInfo) -> None:
        self.seen = info.step

    def should_hand_back(self) -> bool:
        return self.seen >= self.step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="an empty folder to work in")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few steps")
    args = parser.parse_args()
    gpu = gpu_info()
    cpu = cpu_info()
    text = args.corpus.read_text(encoding="utf-8")
    tok = train_bpe(text, 1024, args.work / "tok")
    corpus = corpus_id(args.corpus)
    cache = bench_cache(args.work)
    device = Device.CUDA if gpu.available else Device.CPU
    steps = 30 if args.quick else 300
    shapes = [
        {"model_size": "tiny", "max_seq_len": 64, "batch_size": 12},
        {"model_size": "mini", "max_seq_len": 256, "batch_size": 16},
        {"model_size": "small", "max_seq_len": 512, "batch_size": 32},
    ]
    if args.quick:
        shapes = [{"n_layer": 1, "n_head": 2, "n_embd": 32, "max_seq_len": 32, "batch_size": 4}]
    rows: list[dict[str, object]] = []

    def run(name: str, fields: dict[str, object], **kw: object) -> TrainingResult:
        spec = TrainingSpec.model_validate({"eval_interval": 100, "eval_batches": 4, **fields})
        started = time.perf_counter()
        callbacks = kw.get("callbacks")
        result = run_training(
            spec,
            args.corpus,
            tok,
            args.work / "runs" / name,
            cache,
            cpu=cpu,
            gpu=gpu,
            device_requested=device,
            threads=4,
            corpus_id=corpus,
            tokenizer_id="tok-gpu-check",
            callbacks=callbacks if isinstance(callbacks, TrainingCallbacks) else None,
            compile_cache_dir=args.work / "compile-cache",
        )
        manifest = result.manifest
        row: dict[str, object] = {
            "run": name,
            "outcome": result.outcome.value,
            "steps": result.steps,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        if manifest is not None:
            rate = manifest.training.tokens_per_sec or 0.0
            row |= {
                "device": manifest.device,
                "gpu": gpu.name,
                "precision": manifest.precision.value,
                "compiled": manifest.compiled,
                "compile_reason": manifest.execution.compile_reason,
                "n_params": manifest.n_params,
                "tokens_per_sec": round(rate),
                "mfu": round(manifest.flops_per_token * rate / (args.peak_tflops * 1e12), 4),
                "val_bits_per_char": manifest.eval and round(manifest.eval.bits_per_char, 3),
                "resumed_at": manifest.training.resumed_at_steps,
            }
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
        rows.append(row)
        return result

    for i, shape in enumerate(shapes):
        for compile_mode in ("off", "on"):
            run(f"s{i}-{compile_mode}", {**shape, "max_steps": steps, "compile": compile_mode})
    # A hand-back mid-run, then the same folder resumed (as another attempt would).
    resume = {**shapes[0], "max_steps": 2 * steps // 3 * 3 // 2, "compile": "on"}
    handed = run("resume", resume, callbacks=HandBackAt(steps // 3))
    done = run("resume", resume)
    ok = handed.outcome.value == "interrupted" and done.outcome.value == "completed"
    # The artifact loads in stock transformers and generates on the GPU.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert done.artifact_dir is not None
    model: object = AutoModelForCausalLM.from_pretrained(done.artifact_dir)
    assert isinstance(model, nn.Module) and isinstance(model, CanGenerate)
    model.to(device.value)
    tokenizer = AutoTokenizer.from_pretrained(done.artifact_dir)
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids.to(device.value)
    sample = tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0])
    rows.append({"run": "generate", "sample": sample, "resume_ok": ok})
    sys.stdout.write(json.dumps(rows[-1]) + "\n")
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
