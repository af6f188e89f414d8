#!/usr/bin/env python3
"""Time the raw tokenizer libraries against `train_tokenizer` on the same corpus.

    .venv/bin/python scripts/bench_tokenizers_raw.py --corpus ../shared/corpora/tinyshakespeare.txt

"raw" is the one library call with the same training options `train_tokenizer` uses
(file input, read by the library itself); "library" is `train_tokenizer` (scan, holdout
split, train, holdout stats, save). Every trial runs in a fresh process, as a worker job
does, alternating raw and library so that load from other processes on the machine hits
both alike; the table reports the fastest and the median of `--repeat` trials, in wall
time and in CPU time (all threads of the trial process), which other processes' load on a
shared machine disturbs much less. `raw_seconds()` is importable for a benchmark of the
whole job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("bpe", "unigram")


Seconds = tuple[float, float]  # wall, CPU


def raw_seconds(method: str, corpus: Path, vocab_size: int, threads: int) -> Seconds:
    """Seconds for the bare library call; `method` is `bpe` or `unigram` (SentencePiece)."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    if method == "bpe":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=["<|endoftext|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        started, cpu = time.perf_counter(), time.process_time()
        tokenizer.train([str(corpus)], trainer)
        return time.perf_counter() - started, time.process_time() - cpu

    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as out:
        started, cpu = time.perf_counter(), time.process_time()
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(out) / "m"),
            model_type=method,
            vocab_size=vocab_size,
            num_threads=threads,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            max_sentence_length=64 << 20,
            unk_id=0,
            eos_id=1,
            pad_id=2,
            bos_id=-1,
            eos_piece="<|endoftext|>",
            pad_piece="<|pad|>",
            minloglevel=2,
        )
        return time.perf_counter() - started, time.process_time() - cpu


def library_seconds(method: str, corpus: Path, vocab_size: int, threads: int) -> Seconds:
    """Seconds for `train_tokenizer` (everything but fetching, tarring and uploading)."""
    sys.path.insert(0, str(ROOT / "server"))
    from model_trainer.tokenization import TokenizerTrainConfig, train_tokenizer

    if method == "bpe":
        config = TokenizerTrainConfig(method="bpe", vocab_size=vocab_size, corpus_file_id="0" * 64)
    else:
        config = TokenizerTrainConfig(
            method="sentencepiece",
            model_type="unigram",
            vocab_size=vocab_size,
            corpus_file_id="0" * 64,
        )
    with tempfile.TemporaryDirectory() as out:
        started, cpu = time.perf_counter(), time.process_time()
        train_tokenizer(config, corpus, Path(out), threads=threads, sample_bytes=100_000_000)
        return time.perf_counter() - started, time.process_time() - cpu


def _trial(kind: str, method: str, corpus: Path, vocab_size: int, threads: int) -> Seconds:
    """Run one trial in a fresh interpreter and return its seconds."""
    command = [
        sys.executable,
        __file__,
        "--trial",
        kind,
        "--methods",
        method,
        "--corpus",
        str(corpus),
        "--vocab",
        str(vocab_size),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall, cpu = json.loads(done.stdout.strip().splitlines()[-1])
    if not isinstance(wall, float) or not isinstance(cpu, float):
        raise RuntimeError(f"trial printed {done.stdout!r}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, action="append", required=True)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--trial", choices=("raw", "library"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]

    if args.trial is not None:
        run = raw_seconds if args.trial == "raw" else library_seconds
        wall, cpu = run(methods[0], args.corpus[0], args.vocab, args.threads)
        sys.stdout.write(json.dumps([wall, cpu]) + "\n")
        return

    sys.stdout.write(
        f"vocab {args.vocab}, {args.threads} threads; best (median) of {args.repeat} trials\n\n"
        "| corpus | MB | method | raw wall s | train_tokenizer wall s | wall ratio "
        "| raw CPU s | train_tokenizer CPU s | CPU ratio |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    for corpus in args.corpus:
        megabytes = corpus.stat().st_size / 1e6
        for method in methods:
            raw: list[Seconds] = []
            lib: list[Seconds] = []
            for _ in range(args.repeat):
                raw.append(_trial("raw", method, corpus, args.vocab, args.threads))
                lib.append(_trial("library", method, corpus, args.vocab, args.threads))
            cells = []
            for kind in (0, 1):  # wall, CPU
                raw_s = [t[kind] for t in raw]
                lib_s = [t[kind] for t in lib]
                cells += [
                    f"{min(raw_s):.2f} ({statistics.median(raw_s):.2f})",
                    f"{min(lib_s):.2f} ({statistics.median(lib_s):.2f})",
                    f"{min(lib_s) / min(raw_s):.2f}",
                ]
            sys.stdout.write(
                f"| {corpus.name} | {megabytes:.1f} | {method} | {' | '.join(cells)} |\n"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
