#!/usr/bin/env python3
"""Model families x optimizers on one CPU, side by side with nanoGPT (`make bench-models`).

One script, one run, so every figure shares the machine and its load:

reference   nanoGPT's CPU recipe (char level, 4 layers x 128, context 64, batch 12, 2000
            iterations, its README's command line), run from a local nanoGPT checkout whose
            path is given with --nanogpt (a copy of it in a temporary folder; its code is
            never part of this project). Its data is tinyshakespeare split 90/10 as its
            prepare.py does, written here in its format (its prepare.py downloads).
quality     validation bits per character after a --seconds training budget (76 s) for
            each family x optimizer, through `training.run.run_training` (the worker's code
            path), on tinyshakespeare: first 90% train (the BPE tokenizer too), the next 5%
            validation (`training.data.Holdout`), and each model also scored on nanoGPT's
            validation text (the last 10%), the text nanoGPT's figure is measured on.
throughput  tokens/s of our loop and MFU against the fp32 and bf16 matmul peaks measured
            here and now (and for `tiny`, against nanoGPT, tokens/s and characters of
            text/s: a token of ours is several characters, nanoGPT's one), for `tiny`
            (context 64, batch 12: nanoGPT's shape) and `mini`
            (context 256, batch 16), per family, fp32 and bf16, eager; and compiled
            (`torch.compile`, tens of seconds each) for the default family and optimizer,
            or for every row with --compile-all.

Usage: .venv/bin/python scripts/bench_models.py --nanogpt ~/src/nanoGPT [--seconds 76]
       [--family gpt2 --family llama ...] [--optimizer adamw ...] [--set field=value ...]
       [--part reference --part quality ...] [--json results.jsonl]
Prints markdown tables for docs/benchmarks.md and the load average next to every part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bench  # the sibling script: tokenizer, corpus, loops, matmul peaks

from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.training.config import (
    MAX_INTERVAL_STEPS,
    ModelSize,
    Precision,
    TrainingSpec,
)
from model_trainer.training.data import split_tokens, tokenize_corpus
from model_trainer.training.hardware import cpu_info
from model_trainer.training.model import build_model, flops_per_token, model_spec

# nanoGPT README's CPU command line (its "I only have a macbook" section), as arguments.
NANOGPT_RECIPE = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
NANOGPT_TOKENS_PER_ITER = 64 * 12
PARTS = ("reference", "quality", "throughput")
SIZES = [(ModelSize.TINY, 64, 12), (ModelSize.MINI, 256, 16)]


def prepare_nanogpt(checkout: Path, work: Path) -> Path:
    """A copy of the checkout with tinyshakespeare in its char-level format: train.bin and
    val.bin (uint16 ids, first 90% / last 10%) and meta.pkl (vocab_size, stoi, itos)."""
    copy = work / "nanogpt"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out-*"))
    data = copy / "data" / "shakespeare_char"
    data.mkdir(parents=True, exist_ok=True)
    text = bench.CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    for name, part in zip(("train", "val"), bench.nanogpt_parts(text), strict=True):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(data / f"{name}.bin")
    itos = dict(enumerate(chars))
    with (data / "meta.pkl").open("wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return copy


def reference(checkout: Path, work: Path, results: list[dict[str, object]]) -> None:
    bench.log(f"\n## nanoGPT's CPU recipe ({bench.load_line()})")
    copy = prepare_nanogpt(checkout, work)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "train.py", *NANOGPT_RECIPE],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        bench.log(f"nanoGPT failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", done.stdout)
    iter_ms = [
        float(ms) for ms in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", done.stdout)
    ]
    val = float(evals[-1][2])
    # The median iteration: evaluation iterations (every 250) and the first are outliers.
    ms = statistics.median(iter_ms[1:])
    row = {
        "part": "reference",
        "val_loss": val,
        "bits_per_char": val / math.log(2),
        "ms_per_iter": ms,
        "tokens_per_sec": NANOGPT_TOKENS_PER_ITER / (ms / 1000),
        "wall_seconds": wall,
        "load_after": os.getloadavg()[0],
    }
    results.append(row)
    bench.log(
        f"validation {row['bits_per_char']:.3f} bits/char (val loss {val:.4f} nats/char) after "
        f"2000 iterations; median {ms:.1f} ms/iteration = {row['tokens_per_sec']:,.0f} tokens/s; "
        f"{wall:.0f} s wall ({bench.load_line()})"
    )


def quality_grid(
    work: Path,
    vocab: int,
    seconds: float,
    families: list[str],
    optimizers: list[str],
    overrides: dict[str, object],
    results: list[dict[str, object]],
) -> None:
    for family in families:
        for optimizer in optimizers:
            grid = {"model_family": family, "optimizer": optimizer, **overrides}
            before = len(results)
            bench.quality(work / f"{family}-{optimizer}", vocab, seconds, grid, results)
            for row in results[before:]:
                row["family"], row["optimizer"] = family, optimizer


def throughput_grid(
    work: Path,
    vocab: int,
    families: list[str],
    optimizers: list[str],
    compile_all: bool,
    results: list[dict[str, object]],
) -> None:
    bench.log(f"\n## Throughput per family ({bench.load_line()})")
    peaks = {
        Precision.FP32: bench.matmul_peak(torch.float32),
        Precision.BF16: bench.matmul_peak(torch.bfloat16),
    }
    bench.log(
        f"matmul peak (1024^3, best of 2 s): fp32 {peaks[Precision.FP32] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks[Precision.BF16] / 1e9:.1f} GFLOP/s"
    )
    # Emulated bf16 (no native instructions) runs at a fraction of a GFLOP/s: not worth a row.
    precisions = [Precision.FP32] + ([Precision.BF16] if cpu_info().native_bf16 else [])
    if len(precisions) == 1:
        bench.log("bf16: this CPU has no native bf16 (emulated, see its peak): fp32 only")
    tok_dir = bench.prepare_tokenizer(work, vocab)
    tokenizer = load_tokenizer(tok_dir)
    # The bench's own cache: nothing evicts, so the token file outlives the block.
    with tokenize_corpus(
        bench.CORPUS,
        tokenizer,
        f"bench-bpe{vocab}",
        bench.bench_cache(work),
        corpus_id=bench.corpus_id(bench.CORPUS),
    ) as cache:
        splits = split_tokens(cache, 1 - bench.TRAIN_FRACTION, tokenizer)
    # Text per token: nanoGPT's tokens are characters, ours byte-level BPE pieces.
    chars_per_token = splits.train_chars / len(splits.train)
    bench.log(f"our tokenizer: {chars_per_token:.3f} characters a token of the training text")
    cases = [(f, o, s) for f in families for o in optimizers for s in SIZES]
    for family, optimizer, (size, context, batch) in cases:
        config = TrainingSpec.model_validate(
            {
                "model_family": family,
                "optimizer": optimizer,
                "model_size": size.value,
                "max_seq_len": context,
                "batch_size": batch,
                "eval_interval": MAX_INTERVAL_STEPS,
                "eval_batches": 1,
                "checkpoint_interval": MAX_INTERVAL_STEPS,
                "warmup_steps": 0,
            }
        )
        spec = model_spec(config, tokenizer.vocab_size, None, None)
        model = build_model(spec, config.model_family, config.seed)
        fpt = flops_per_token(model, spec.n_layer, spec.n_embd, spec.max_seq_len)
        params = sum(p.numel() for p in model.parameters())
        steps = 100 if size is ModelSize.TINY else 12
        default = TrainingSpec()
        compile_too = compile_all or (
            config.model_family is default.model_family and config.optimizer is default.optimizer
        )
        for precision in precisions:
            rate = bench.our_tokens_per_sec(config, splits, tokenizer.vocab_size, precision, steps)
            compiled_rate = None
            if compile_too:
                compiled_rate = bench.our_tokens_per_sec(
                    config, splits, tokenizer.vocab_size, precision, steps, compiled=True
                )
            results.append(
                {
                    "part": "throughput",
                    "family": family,
                    "optimizer": optimizer,
                    "model": size.value,
                    "context": context,
                    "batch": batch,
                    "precision": precision.value,
                    "params": params,
                    "tokens_per_sec": rate,
                    "mfu": fpt * rate / peaks[precision],
                    "compiled_tokens_per_sec": compiled_rate,
                    "chars_per_token": chars_per_token,
                    "load_after": os.getloadavg()[0],
                }
            )
    bench.log(f"(after: {bench.load_line()})")


def num(row: dict[str, object], key: str) -> float:
    return float(str(row[key]))


def tables(results: list[dict[str, object]]) -> None:
    ref = next((r for r in results if r["part"] == "reference"), None)
    bench.log("\n## Tables")
    bench.log(
        "\n| model | optimizer | bits/char, nanoGPT's validation text (last 10%) "
        "| bits/char, our validation split | steps | training s | load after |\n"
        "|---|---|---|---|---|---|---|"
    )
    if ref is not None:
        bench.log(
            f"| nanoGPT CPU recipe (char, 4x128) | adamw | {ref['bits_per_char']:.3f} | | 2000 "
            f"| {ref['wall_seconds']:.0f} (wall) | {ref['load_after']:.2f} |"
        )
    for r in results:
        if r["part"] == "quality":
            bench.log(
                f"| {r['family']} | {r['optimizer']} | {num(r, 'nanogpt_val_bits_per_char'):.3f} "
                f"| {r['bits_per_char']:.3f} | {r['steps']} "
                f"| {r['train_seconds']:.0f} | {r['load_after']:.2f} |"
            )
    bench.log(
        "\n| family | optimizer | model | context x batch | precision | params | eager tokens/s "
        "| MFU (eager) | compiled tokens/s | compiled / eager | best vs nanoGPT tokens/s "
        "| best vs nanoGPT characters/s | load after |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        if r["part"] == "throughput":
            eager = num(r, "tokens_per_sec")
            compiled = r["compiled_tokens_per_sec"]
            best = max(eager, num(r, "compiled_tokens_per_sec") if compiled else 0.0)
            versus = versus_text = ""
            if ref is not None and r["model"] == "tiny":
                ratio = best / num(ref, "tokens_per_sec")
                versus = f"{ratio:.2f}x"
                versus_text = f"{ratio * num(r, 'chars_per_token'):.2f}x"
            compiled_cells = (
                f"{num(r, 'compiled_tokens_per_sec'):,.0f} | "
                f"{num(r, 'compiled_tokens_per_sec') / eager:.2f}x"
                if compiled
                else "| "
            )
            bench.log(
                f"| {r['family']} | {r['optimizer']} | {r['model']} | "
                f"{r['context']} x {r['batch']} | "
                f"{r['precision']} | {num(r, 'params') / 1e6:.2f}M | "
                f"{eager:,.0f} | {num(r, 'mfu'):.1%} | {compiled_cells} | {versus} "
                f"| {versus_text} | {r['load_after']:.2f} |"
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (the reference)")
    parser.add_argument("--seconds", type=float, default=76.0, help="quality: time budget")
    parser.add_argument("--vocab", type=int, default=bench.DEFAULT_VOCAB)
    parser.add_argument("--family", action="append", help="default: gpt2, llama, qwen3")
    parser.add_argument("--optimizer", action="append", help="default: adamw, muon")
    parser.add_argument("--part", action="append", choices=PARTS, help="default: all")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--json", type=Path, help="append results as JSON lines here")
    parser.add_argument(
        "--compile-all", action="store_true", help="throughput: compiled rows for every family"
    )
    args = parser.parse_args(argv)
    if not bench.CORPUS.is_file():
        bench.log(f"missing {bench.CORPUS}: the benchmarks need ../shared/corpora")
        return 2
    parts = args.part or list(PARTS)
    families = args.family or ["gpt2", "llama", "qwen3"]
    optimizers = args.optimizer or ["adamw", "muon"]
    if "reference" in parts and args.nanogpt is None:
        bench.log("no --nanogpt checkout: the reference is left out")
        parts = [p for p in parts if p != "reference"]
    bench.log(f"# bench_models on {os.cpu_count()} CPUs, torch {torch.__version__}")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        if "reference" in parts:
            reference(args.nanogpt.expanduser().resolve(), work, results)
        if "quality" in parts:
            overrides = bench.parse_overrides(args.set)
            quality_grid(work, args.vocab, args.seconds, families, optimizers, overrides, results)
        if "throughput" in parts:
            throughput_grid(
                work / "throughput", args.vocab, families, optimizers, args.compile_all, results
            )
    tables(results)
    if args.json:
        with args.json.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
