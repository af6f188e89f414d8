#!/usr/bin/env python3
"""The whole tokenizer job against the raw library call, same corpus, same machine, same run.

"job" = what the worker does: fetch the corpus from Data Bank into an empty cache, train
(`train_tokenizer`: scan, split, train, stats, save), write the manifest, tar and upload the
folder to Data Bank. "raw" = the bare library call (`bench_tokenizers_raw.raw_seconds`).
Each trial runs in a fresh process; raw and job alternate. A local Data Bank server is started.

    .venv/bin/python scripts/bench_tokenizer_job.py --corpus FILE [--method bpe|unigram]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"


def job_trial(corpus: Path, method: str, vocab: int, bank_url: str, threads: int) -> float:
    from pydantic import SecretStr

    from model_trainer.connections import DataBankUse, databank_client
    from model_trainer.databank.corpus import CorpusFetcher
    from model_trainer.disk_cache import DiskCache
    from model_trainer.tokenization.config import TokenizerTrainConfig
    from model_trainer.tokenization.train import train_tokenizer

    with (
        databank_client(bank_url, SecretStr(KEY), DataBankUse.JOB) as bank,
        tempfile.TemporaryDirectory() as work,
    ):
        file_id = bank.upload_file(corpus).file_id  # not timed: the user's upload
        started = time.perf_counter()
        spm = {"method": "sentencepiece", "model_type": "unigram"}
        fields = {"method": "bpe"} if method == "bpe" else spm
        config = TokenizerTrainConfig.model_validate(
            {**fields, "vocab_size": vocab, "corpus_file_id": file_id}
        )
        out = Path(work) / "tok"
        cache = DiskCache(Path(work) / "cache", max_bytes=1024**4)
        with CorpusFetcher(bank, cache).fetch(file_id) as local:
            train_tokenizer(config, local, out, threads=threads, sample_bytes=100_000_000)
        bank.upload_directory(out, "tokenizer-bench")
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, action="append", required=True)
    parser.add_argument("--method", action="append", choices=["bpe", "unigram"])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    parser.add_argument("--bank", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = args.method or ["bpe"]
    if args.trial:
        corpus, method = args.corpus[0], methods[0]
        if args.trial == "raw":
            sys.path.insert(0, str(ROOT / "scripts"))
            from bench_tokenizers_raw import raw_seconds

            seconds = raw_seconds(method, corpus, args.vocab, args.threads)[0]
        else:
            seconds = job_trial(corpus, method, args.vocab, args.bank, args.threads)
        sys.stdout.write(json.dumps({"seconds": seconds}) + "\n")
        return 0

    sys.path.insert(0, str(ROOT / "server"))
    from tests.databank_fixtures import start_databank

    with tempfile.TemporaryDirectory() as tmp:
        server = start_databank(Path(tmp), API_UPLOAD_KEYS=KEY, MIN_FREE_GB="0")
        try:
            sys.stdout.write(
                f"vocab {args.vocab}, {args.threads} threads, best of {args.repeat}\n\n"
            )
            sys.stdout.write("| corpus | MB | method | raw s | job s | job / raw |\n")
            sys.stdout.write("|---|---:|---|---:|---:|---:|\n")
            for corpus in args.corpus:
                for method in methods:
                    best = {"raw": float("inf"), "job": float("inf")}
                    for _ in range(args.repeat):
                        for kind in ("raw", "job"):
                            cmd = [
                                sys.executable,
                                __file__,
                                "--trial",
                                kind,
                                "--corpus",
                                str(corpus),
                                "--method",
                                method,
                                "--vocab",
                                str(args.vocab),
                                "--threads",
                                str(args.threads),
                                "--bank",
                                server.url,
                            ]
                            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                            line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
                            best[kind] = min(best[kind], float(json.loads(line)["seconds"]))
                    size = corpus.stat().st_size / 1e6
                    ratio = best["job"] / best["raw"]
                    sys.stdout.write(
                        f"| {corpus.name} | {size:.1f} | {method} | {best['raw']:.2f} | "
                        f"{best['job']:.2f} | {ratio:.2f} |\n"
                    )
                    sys.stdout.flush()
        finally:
            server.proc.stop(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
