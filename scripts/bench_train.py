#!/usr/bin/env python3
"""Training benchmarks (`make bench-train`); results go to docs/benchmarks.md by hand.

throughput  tokens/s and MFU of our loop (`training.loop.train`) next to a bare PyTorch loop
            over the same model class, batch and optimizer, in the same process, alternating
            the two so that a noisy neighbour hurts both alike. MFU is 6 N (+ attention)
            FLOPs per token times tokens/s over the matmul peak measured here and now.
            Cases: tiny (context 64, batch 12) and mini (context 256, batch 16), fp32 and
            bf16, plus what `precision: auto` does on this CPU.
profile     where a step's time goes, for the default family and optimizer (Qwen3 + Muon) at
            the throughput cases' shapes, fp32 and bf16: milliseconds of the forward and
            loss, the backward, Muon's update (its Newton-Schulz iteration) and AdamW's, and
            the forward and backward's share in matmuls and in the head's cross-entropy
            (torch.profiler's self time by operator).
attention   a compiled step (forward + backward, the run's own `loss_function`) with
            transformers' eager attention against PyTorch's fused kernel (`sdpa`), the
            default family at the throughput cases' shapes, fp32 (and bf16 on a CPU with
            native bf16), alternating the two: the figures behind model.ATTENTION.
quality     validation bits per character on tinyshakespeare (first 90% train, the next
            5% validation, the last 5% test: `training.data.Holdout`) after a
            `max_train_seconds` budget (95 s) with the config defaults, using a byte-level
            BPE tokenizer trained on the training 90% only; and the same model scored on
            nanoGPT's validation text (the last 10% of the characters, as its prepare.py
            cuts them: harder text than the 5% after the training part), the figure to set
            beside nanoGPT's.

Usage: .venv/bin/python scripts/bench_train.py [throughput|profile|attention|quality|all]
       [--seconds 95] [--vocab 1024] [--family gpt2|llama|qwen3] [--optimizer adamw|muon]
       [--set field=value ...] [--json results.jsonl] [--compile-cache DIR]
(--family and --optimizer are quality's; they are shorthands for --set model_family=...,
--set optimizer=...)
The machine is shared: the script prints the load average before and after each part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel

from model_trainer.disk_cache import DiskCache
from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.tokenization.transformers_files import write_special_token_files
from model_trainer.training.config import (
    MAX_INTERVAL_STEPS,
    Architecture,
    ModelFamily,
    ModelSize,
    Optimizer,
    Precision,
    TrainingSpec,
)
from model_trainer.training.data import (
    TokenSplits,
    split_tokens,
    tokenize_corpus,
)
from model_trainer.training.evaluate import evaluate_folder
from model_trainer.training.execution import Execution
from model_trainer.training.hardware import NO_GPU, cpu_info
from model_trainer.training.loop import METRICS_FILE, TrainingCallbacks, train
from model_trainer.training.model import (
    build_model,
    flops_per_token,
    model_spec,
)
from model_trainer.training.optimizer import make_optimizer
from model_trainer.training.precision import choose_precision, needs_probe
from model_trainer.training.run import run_training
from model_trainer.training.step import (
    LossFn,
    autocast,
    forward_logits,
    loss_function,
    time_step,
)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
DEFAULT_VOCAB = 1024
TRAIN_FRACTION = 0.9
# (preset, context, batch): the two throughput cases.
THROUGHPUT_CASES = [(ModelSize.TINY, 64, 12), (ModelSize.MINI, 256, 16)]


def log(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def train_bpe(text: str, vocab_size: int, folder: Path) -> Path:
    """Byte-level BPE as GPT-2 has it (the kind the tokenizer service trains)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|pad|>"],
        show_progress=False,
    )
    step = 100_000
    tokenizer.train_from_iterator(
        (text[i : i + step] for i in range(0, len(text), step)), trainer=trainer
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    # The roles the tokenizer job writes, which the loader reads.
    eos = "<|endoftext|>"
    write_special_token_files(folder, {"bos_token": eos, "eos_token": eos, "pad_token": "<|pad|>"})
    return folder


def bench_cache(work: Path) -> DiskCache:
    """The bench's token cache, with room for everything it tokenizes."""
    return DiskCache(work / "cache", max_bytes=1024**4)


def corpus_id(path: Path) -> str:
    """The corpus's Data Bank id: the SHA-256 of its bytes (hashed once, here)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def nanogpt_parts(text: str) -> tuple[str, str]:
    """nanoGPT's cut of tinyshakespeare (its prepare.py): the first 90% of the characters
    to train on, the last 10% to validate on."""
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def prepare_tokenizer(work: Path, vocab: int) -> Path:
    # Train the tokenizer on the training part only: the validation text stays unseen.
    train_text, _ = nanogpt_parts(CORPUS.read_text(encoding="utf-8"))
    return train_bpe(train_text, vocab, work / f"bpe{vocab}")


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0, n: int = 1024) -> float:
    """Best sustained FLOP/s of an n x n matrix product in this dtype."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def reference_tokens_per_sec(
    config: TrainingSpec,
    splits: TokenSplits,
    vocab: int,
    precision: Precision,
    steps: int,
) -> float:
    """A bare loop: same model class, batch, AdamW and clipping; no bookkeeping at all."""
    spec = model_spec(config, vocab, None, None)
    model = build_model(spec, config.model_family, config.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    data = torch.from_numpy(np.asarray(splits.train, dtype=np.int64))
    t, b = config.max_seq_len, config.batch_size

    def step() -> None:
        ix = torch.randint(len(data) - t - 1, (b,))
        x = torch.stack([data[i : i + t] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + t] for i in ix])
        with autocast(precision):
            logits = forward_logits(model, x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm up allocator and kernels, as our loop's first row does
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * t * b / (time.perf_counter() - t0)


def our_tokens_per_sec(
    config: TrainingSpec,
    splits: TokenSplits,
    vocab: int,
    precision: Precision,
    steps: int,
    compiled: bool = False,
) -> float:
    """`training.loop.train` itself; tokens/s from its metrics rows (evaluation excluded;
    compiling, in the first step, too)."""
    spec = model_spec(config, vocab, None, None)
    model = build_model(spec, config.model_family, config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        log_every = max(1, steps // 4)
        train(
            model,
            config.model_copy(update={"max_steps": steps + log_every}),
            splits,
            run_dir,
            execution=Execution(
                precision=precision,
                precision_reason="the benchmark's",
                compiled=compiled,
                compile_reason="the benchmark's",
            ),
            loss_fn=loss_function(model, precision, torch.device("cpu"), compiled=compiled),
            resume=None,
            callbacks=TrainingCallbacks(),
            log_interval=log_every,
        )
        rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    # Skip the first window (warm-up, like the reference's); every window has equal tokens.
    rates = [float(r["tokens_per_sec"]) for r in rows[2:] if r["tokens_per_sec"]]
    return len(rates) / sum(1.0 / r for r in rates)


def throughput(work: Path, vocab: int, rounds: int, results: list[dict[str, object]]) -> None:
    log(f"\n## Throughput ({load_line()})")
    info = cpu_info()
    log(
        f"CPU: {info.model_name}, {info.usable_cpus} usable cores, torch capability "
        f"{info.torch_capability}, native bf16: {info.native_bf16} {info.bf16_flags}; "
        f"torch threads {torch.get_num_threads()}"
    )
    cpu = torch.device("cpu")
    if needs_probe(Precision.AUTO, cpu, info):
        log("precision auto: measured by a probe at each run's start (training/precision.py)")
    else:
        log(f"precision auto: {choose_precision(Precision.AUTO, cpu, info, NO_GPU).reason}")
    peaks = {
        Precision.FP32: matmul_peak(torch.float32),
        Precision.BF16: matmul_peak(torch.bfloat16),
    }
    log(
        f"matmul peak (1024^3, best of 2 s): fp32 {peaks[Precision.FP32] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks[Precision.BF16] / 1e9:.1f} GFLOP/s"
    )
    tok_dir = prepare_tokenizer(work, vocab)
    tokenizer = load_tokenizer(tok_dir)
    # The bench's own cache: nothing evicts, so the token file outlives the block.
    with tokenize_corpus(
        CORPUS, tokenizer, f"bench-bpe{vocab}", bench_cache(work), corpus_id=corpus_id(CORPUS)
    ) as cache:
        splits = split_tokens(cache, 1 - TRAIN_FRACTION, tokenizer)
    log(
        "\n| model | context x batch | precision | params | reference tok/s | ours tok/s "
        "| ours / reference | MFU (ours) |\n|---|---|---|---|---|---|---|---|"
    )
    for size, context, batch in THROUGHPUT_CASES:
        config = TrainingSpec(
            model_size=size,
            max_seq_len=context,
            batch_size=batch,
            eval_interval=MAX_INTERVAL_STEPS,
            eval_batches=1,
            checkpoint_interval=MAX_INTERVAL_STEPS,
            warmup_steps=0,
        )
        spec = model_spec(config, tokenizer.vocab_size, None, None)
        model = build_model(spec, config.model_family, config.seed)
        fpt = flops_per_token(model, spec.n_layer, spec.n_embd, spec.max_seq_len)
        n_params = sum(p.numel() for p in model.parameters())
        steps = 40 if size is ModelSize.TINY else 8
        for precision in (Precision.FP32, Precision.BF16):
            ref: list[float] = []
            ours: list[float] = []
            for _ in range(rounds):  # alternate, so load changes hit both sides
                ref.append(
                    reference_tokens_per_sec(config, splits, tokenizer.vocab_size, precision, steps)
                )
                ours.append(
                    our_tokens_per_sec(config, splits, tokenizer.vocab_size, precision, steps)
                )
            r, o = statistics.median(ref), statistics.median(ours)
            mfu = fpt * o / peaks[precision]
            arch: Architecture = config.resolved()
            log(
                f"| {size.value} ({arch.n_layer}x{arch.n_embd}) | {context} x {batch} | "
                f"{precision.value} | {n_params / 1e6:.2f}M | {r:,.0f} | {o:,.0f} | "
                f"{o / r:.2f} | {mfu:.1%} |"
            )
            results.append(
                {
                    "part": "throughput",
                    "model": size.value,
                    "context": context,
                    "batch": batch,
                    "precision": precision.value,
                    "reference_tokens_per_sec": r,
                    "ours_tokens_per_sec": o,
                    "ratio": o / r,
                    "mfu": mfu,
                    "peak_flops": peaks[precision],
                    "flops_per_token": fpt,
                }
            )
    log(f"(after: {load_line()})")


# torch.profiler's operator names, by what they do (self time: no double counting).
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
CROSS_ENTROPY_OPS = {
    "aten::_log_softmax",
    "aten::_log_softmax_backward_data",
    "aten::nll_loss_forward",
    "aten::nll_loss_backward",
}


def profile(vocab: int, steps: int, results: list[dict[str, object]]) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    log(f"\n## Where a step's time goes ({load_line()})")
    log(
        "\n| model | context x batch | precision | step ms | forward + loss | backward "
        "| Muon | AdamW | matmuls (fwd+bwd) | cross-entropy (fwd+bwd) |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    cpu = torch.device("cpu")
    for size, context, batch in THROUGHPUT_CASES:
        config = TrainingSpec(model_size=size, max_seq_len=context, batch_size=batch)
        for precision in (Precision.FP32, Precision.BF16):
            spec = model_spec(config, vocab, None, None)
            model = build_model(spec, config.model_family, config.seed)
            model.train()
            optimizer = make_optimizer(model, config, precision)
            loss_fn = loss_function(model, precision, cpu, compiled=False)
            tokens = torch.randint(vocab, (batch, context + 1))
            x, y = tokens[:, :-1], tokens[:, 1:]
            seconds: dict[str, list[float]] = {"forward": [], "backward": []}
            seconds.update({name: [] for name in optimizer.parts})
            for i in range(2 + steps):  # two to warm up, not counted
                t0 = time.perf_counter()
                loss = loss_fn(x, y)
                t1 = time.perf_counter()
                torch.autograd.backward(loss)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                t2 = time.perf_counter()
                spent = {"forward": t1 - t0, "backward": t2 - t1}
                for name, part in optimizer.parts.items():
                    t3 = time.perf_counter()
                    part.step()
                    spent[name] = time.perf_counter() - t3
                optimizer.zero_grad(set_to_none=True)
                if i >= 2:
                    for name, value in spent.items():
                        seconds[name].append(value)
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                loss = loss_fn(x, y)
                torch.autograd.backward(loss)
            self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
            total = sum(self_us.values())
            matmul = sum(v for k, v in self_us.items() if k in MATMUL_OPS) / total
            cross_entropy = sum(v for k, v in self_us.items() if k in CROSS_ENTROPY_OPS) / total
            ms = {k: 1000 * statistics.median(v) for k, v in seconds.items()}
            arch: Architecture = config.resolved()
            log(
                f"| {size.value} ({arch.n_layer}x{arch.n_embd}, {config.model_family.value}) | "
                f"{context} x {batch} | {precision.value} | {sum(ms.values()):.1f} | "
                f"{ms['forward']:.1f} | {ms['backward']:.1f} | {ms.get('muon', 0):.1f} | "
                f"{ms['adamw']:.1f} | {matmul:.0%} | {cross_entropy:.0%} |"
            )
            results.append(
                {"part": "profile", "model": size.value, "precision": precision.value}
                | {f"{k}_ms": v for k, v in ms.items()}
                | {"matmul_share": matmul, "cross_entropy_share": cross_entropy}
            )
    log(f"(after: {load_line()})")


def attention(vocab: int, rounds: int, results: list[dict[str, object]]) -> None:
    log(f"\n## Attention in a compiled step ({load_line()})")
    cpu = torch.device("cpu")
    info = cpu_info()
    precisions = [Precision.FP32] + ([Precision.BF16] if info.native_bf16 else [])
    log(
        "\n| model | context x batch | precision | sdpa ms | eager ms | eager / sdpa "
        "| load after |\n|---|---|---|---|---|---|---|"
    )
    for size, context, batch in THROUGHPUT_CASES:
        config = TrainingSpec(model_size=size, max_seq_len=context, batch_size=batch)
        spec = model_spec(config, vocab, None, None)
        tokens = torch.randint(vocab, (batch, context + 1))
        x, y = tokens[:, :-1], tokens[:, 1:]
        for precision in precisions:
            steps: dict[str, tuple[PreTrainedModel, LossFn]] = {}
            for implementation in ("sdpa", "eager"):
                model = build_model(spec, config.model_family, config.seed)
                model.train()
                model.set_attn_implementation(implementation)
                step = loss_function(model, precision, cpu, compiled=True)
                for _ in range(2):  # compiles, then the slow first compiled step
                    time_step(step, model, x, y)
                steps[implementation] = (model, step)
            ms: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(rounds):  # alternate, so load changes hit both sides
                for name, (model, step) in steps.items():
                    times = [time_step(step, model, x, y) for _ in range(5)]
                    ms[name].append(1000 * statistics.median(times))
            sdpa, eager = statistics.median(ms["sdpa"]), statistics.median(ms["eager"])
            arch: Architecture = config.resolved()
            log(
                f"| {size.value} ({arch.n_layer}x{arch.n_embd}, {config.model_family.value}) "
                f"| {context} x {batch} | {precision.value} | {sdpa:.1f} | {eager:.1f} | "
                f"{eager / sdpa:.2f} | {os.getloadavg()[0]:.2f} |"
            )
            results.append(
                {"part": "attention", "model": size.value, "precision": precision.value}
                | {"sdpa_ms": sdpa, "eager_ms": eager}
            )
    log(f"(after: {load_line()})")


def quality(
    work: Path,
    vocab: int,
    seconds: float,
    overrides: dict[str, object],
    results: list[dict[str, object]],
    compile_cache: Path | None = None,
) -> None:
    log(f"\n## Quality per CPU minute ({load_line()})")
    tok_dir = prepare_tokenizer(work, vocab)
    config = TrainingSpec.model_validate(
        {
            "max_train_seconds": seconds,
            "holdout_fraction": 1 - TRAIN_FRACTION,
            **overrides,
        }
    )
    started = time.perf_counter()
    cpu0 = time.process_time()
    result = run_training(
        config,
        CORPUS,
        tok_dir,
        work / "run",
        bench_cache(work),
        cpu=cpu_info(),
        corpus_id=corpus_id(CORPUS),
        tokenizer_id=f"bench-bpe{vocab}",
        compile_cache_dir=compile_cache,
    )
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    assert result.manifest is not None and result.eval is not None
    assert result.artifact_dir is not None
    m, e = result.manifest, result.eval
    _, val_text = nanogpt_parts(CORPUS.read_text(encoding="utf-8"))
    val_path = work / "nanogpt-val.txt"
    val_path.write_text(val_text, encoding="utf-8")
    nano = evaluate_folder(
        result.artifact_dir,
        val_path,
        bench_cache(work),
        work / "nanogpt-val-eval",
        corpus_id=corpus_id(val_path),
        split="all",
    )
    arch = config.resolved()
    muon = f", muon lr {config.muon_lr():g}" if config.optimizer is Optimizer.MUON else ""
    log(
        f"{config.model_family.value}, {config.optimizer.value}{muon}, "
        f"vocab {vocab}, {arch.n_layer} layers x {arch.n_embd} wide, {arch.n_head} heads "
        f"({arch.n_kv_head} key/value), MLP {arch.intermediate_size}, "
        f"context {config.max_seq_len}, batch {config.batch_size}, lr {config.learning_rate:g} "
        f"({config.lr_schedule.value}, warmup {config.warmup_steps}, "
        f"floor x{config.min_lr_ratio}), "
        f"dropout {config.dropout}, precision {m.precision.value}, {m.threads} threads"
    )
    log(
        f"validation: {e.bits_per_char:.4f} bits/char ({e.loss:.4f} nats/token, "
        f"{e.tokens_per_char:.4f} tokens/char over {e.n_chars:,} characters)"
    )
    log(
        f"nanoGPT's validation text (last 10%): {nano.bits_per_char:.4f} bits/char "
        f"({nano.n_chars:,} characters)"
    )
    log(
        f"{m.training.steps} steps, {m.training.tokens_seen:,} tokens ({m.training.epochs:.2f} "
        f"epochs), training {m.timings.train_seconds:.1f} s, whole run {wall:.1f} s wall "
        f"(tokenize {m.timings.tokenize_seconds:.1f} s, "
        f"final eval {m.timings.eval_seconds:.1f} s), "
        f"CPU use {cpu / wall:.2f} cores of {m.threads}"
    )
    log(f"(after: {load_line()})")
    results.append(
        {
            "part": "quality",
            "vocab": vocab,
            "config": config.model_dump(mode="json", exclude_none=True),
            "bits_per_char": e.bits_per_char,
            "nanogpt_val_bits_per_char": nano.bits_per_char,
            "loss": e.loss,
            "tokens_per_char": e.tokens_per_char,
            "steps": m.training.steps,
            "tokens_seen": m.training.tokens_seen,
            "execution": m.execution.model_dump(mode="json"),
            "train_seconds": m.timings.train_seconds,
            "wall_seconds": wall,
            "cpu_cores_used": cpu / wall,
            "load_after": os.getloadavg()[0],
        }
    )


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        out[key] = json.loads(raw) if raw[:1] in '0123456789-[{"tfn' else raw
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=["throughput", "profile", "attention", "quality", "all"],
    )
    parser.add_argument("--seconds", type=float, default=95.0, help="quality: time budget")
    parser.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="BPE vocabulary size")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: alternations")
    parser.add_argument(
        "--family", choices=[f.value for f in ModelFamily], help="quality: model_family"
    )
    parser.add_argument(
        "--optimizer", choices=[o.value for o in Optimizer], help="quality: optimizer"
    )
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--json", type=Path, help="append results as JSON lines here")
    parser.add_argument(
        "--compile-cache",
        type=Path,
        help="quality: inductor's cache and the compile memo, kept between runs as a "
        "worker keeps them (default: inductor's own folder, no memo)",
    )
    args = parser.parse_args(argv)
    if not CORPUS.is_file():
        log(f"missing {CORPUS}: the benchmarks need ../shared/corpora beside the checkout")
        return 2
    results: list[dict[str, object]] = []
    overrides = parse_overrides(args.set)
    if args.family:
        overrides["model_family"] = args.family
    if args.optimizer:
        overrides["optimizer"] = args.optimizer
    runs: dict[str, Callable[[Path], None]] = {
        "throughput": lambda w: throughput(w, args.vocab, args.rounds, results),
        "profile": lambda w: profile(args.vocab, 10, results),
        "attention": lambda w: attention(args.vocab, args.rounds, results),
        "quality": lambda w: quality(
            w, args.vocab, args.seconds, overrides, results, args.compile_cache
        ),
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name, run in runs.items():
            if args.part in (name, "all"):
                run(Path(tmp) / name)
    if args.json:
        with args.json.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return 0 if all(math.isfinite(float(str(r.get("bits_per_char", 0)))) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
