#!/usr/bin/env python3
"""Fine-tuning a ~100M-parameter Llama-shaped base model (`make bench-finetune`): LoRA
against full fine-tuning, one fresh process each, in the same run of this script.

No pretrained model is at hand offline, so the base is built here: a LlamaForCausalLM of
12 layers x 768 wide (12 heads, SwiGLU 2048 wide, untied head) with random weights and a
byte-level BPE tokenizer trained on the first 90% of tinyshakespeare, saved with
`save_pretrained` as any transformers folder is. Each method then fine-tunes it through the
worker's code path (`training.run.run_training`, the base model's folder as a run's
`base_model` folder) for the same time budget on tinyshakespeare, and reports what the
issue asks: tokens/s, peak memory (the process's maximum resident set), the size of a
checkpoint (LoRA's holds the adapter and its optimizer state; full's every weight and
AdamW's two moments) and of the artifact, and validation loss and bits/char of the base
model before training and of the fine-tuned one. A base of random weights starts at the
uniform loss (ln vocabulary): "before" says what training from it gained, not what a
pretrained model would.

Usage: .venv/bin/python scripts/bench_finetune.py [--seconds 300] [--vocab 8192]
       [--methods lora full] [--json .stack/bench/finetune.jsonl]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_grid import cpu_flags
from bench_train import (  # the sibling script's helpers
    CORPUS,
    bench_cache,
    corpus_id,
    load_line,
    log,
    nanogpt_parts,
    train_bpe,
)
from transformers import LlamaConfig, LlamaForCausalLM

from model_trainer.training.checkpoint import checkpoint_path
from model_trainer.training.config import TrainingSpec
from model_trainer.training.hardware import cpu_info
from model_trainer.training.run import run_training

WIDTH, LAYERS, HEADS, MLP = 768, 12, 12, 2048
FAKE_FILE_ID = "f" * 64  # the base model's id in the run's spec (no Data Bank here)


def build_base(work: Path, vocab: int) -> Path:
    """The random-weight Llama and its tokenizer as one transformers folder."""
    folder = work / "base"
    train_text, _ = nanogpt_parts(CORPUS.read_text(encoding="utf-8"))
    train_bpe(train_text, vocab, folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=WIDTH,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            intermediate_size=MLP,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        )
    )
    model.save_pretrained(folder)
    return folder


def one(work: Path, base: Path, method: str, seconds: float, out: Path) -> None:
    """Fine-tune `base` with `method` (in this process) and append its figures to `out`."""
    spec = TrainingSpec.model_validate(
        {
            "base_model": FAKE_FILE_ID,
            "method": method,
            "max_train_seconds": seconds,
            "max_seq_len": 256,
            "batch_size": 8,
            "holdout_fraction": 0.1,
            "eval_interval": 50,
            "eval_batches": 4,
            "checkpoint_interval": 100_000,  # one checkpoint, at the end
            **({"lora": {"r": 16, "alpha": 32}} if method == "lora" else {}),
        }
    )
    started = time.perf_counter()
    result = run_training(
        spec,
        CORPUS,
        base,
        work / f"run-{method}",
        bench_cache(work),
        cpu=cpu_info(),
        corpus_id=corpus_id(CORPUS),
        tokenizer_id=f"bench-finetune-{base.name}",
    )
    wall = time.perf_counter() - started
    manifest, after = result.manifest, result.eval
    if manifest is None or after is None or manifest.fine_tuning is None:
        raise SystemExit(f"{method}: the run ended {result.outcome.value}, no evaluation")
    before = manifest.fine_tuning.base_eval
    if before is None:
        raise SystemExit(f"{method}: no evaluation of the base model")
    artifact = result.artifact_dir
    row = {
        "method": method,
        "n_params": manifest.n_params,
        "trainable_params": manifest.fine_tuning.trainable_params,
        "precision": manifest.precision.value,
        "threads": manifest.threads,
        "steps": manifest.training.steps,
        "tokens_per_sec": manifest.training.tokens_per_sec,
        "train_seconds": manifest.timings.train_seconds,
        "wall_seconds": wall,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "checkpoint_bytes": checkpoint_path(work / f"run-{method}", "last").stat().st_size,
        "artifact_bytes": sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
        if artifact
        else None,
        "before": {"loss": before.loss, "bits_per_char": before.bits_per_char},
        "after": {"loss": after.loss, "bits_per_char": after.bits_per_char},
        "load_after": load_line(),
    }
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--methods", nargs="+", default=["lora", "full"])
    parser.add_argument("--json", type=Path, default=Path(".stack/bench/finetune.jsonl"))
    # Internal: one method in this process (the parent starts one per method).
    parser.add_argument("--one", nargs=2, metavar=("WORK", "METHOD"))
    args = parser.parse_args(argv)
    if args.one:
        work = Path(args.one[0])
        one(work, work / "base", args.one[1], args.seconds, args.json)
        return 0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    log(f"cpu flags: {' '.join(cpu_flags())}; {load_line()}")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        base = build_base(work, args.vocab)
        weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        log(f"base model: {LAYERS} x {WIDTH} Llama, vocab {args.vocab}, {weights:,} bytes")
        before = args.json.read_text().count("\n") if args.json.exists() else 0
        for method in args.methods:
            command = [sys.executable, __file__, "--one", str(work), method]
            command += ["--seconds", str(args.seconds), "--json", str(args.json)]
            subprocess.run(command, check=True)
        rows = [json.loads(x) for x in args.json.read_text().splitlines()[before:]]
    log(
        "\n| method | params trained | steps | tokens/s | peak RSS | checkpoint | artifact "
        "| val loss before -> after | bits/char before -> after |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        log(
            f"| {r['method']} | {r['trainable_params'] / 1e6:.2f}M of {r['n_params'] / 1e6:.1f}M "
            f"| {r['steps']} | {r['tokens_per_sec'] or 0:.0f} "
            f"| {r['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"| {r['checkpoint_bytes'] / 2**20:.1f} MiB | {r['artifact_bytes'] / 2**20:.0f} MiB "
            f"| {r['before']['loss']:.3f} -> {r['after']['loss']:.3f} "
            f"| {r['before']['bits_per_char']:.3f} -> {r['after']['bits_per_char']:.3f} |"
        )
    log(f"({load_line()}; precision {rows[0]['precision']}, {rows[0]['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
