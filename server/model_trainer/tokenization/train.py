"""Train a tokenizer from a local corpus file into a folder: the worker job's library core.

    scan (hash, UTF-8 check, holdout split) -> train -> holdout stats -> save

Files in `out_dir`:
- both methods: `tokenizer.json` (Hugging Face `tokenizers`), `tokenizer_config.json` and
  `special_tokens_map.json` (transformers' `AutoTokenizer`), `manifest.json`;
- SentencePiece also `tokenizer.model` (`sentencepiece.SentencePieceProcessor`).

The user's mistakes (bad corpus, vocabulary too big for it) raise `UserError`; anything
else propagates as a system error. `should_stop` is polled between phases and while the
corpus streams; when it answers true, `TrainingStopped` is raised. The job around this
fetches the corpus, reports status, tars and uploads the folder.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from tokenizers import Tokenizer

from model_trainer.manifest import MANIFEST_JSON, library_versions, write_manifest
from model_trainer.tokenization.bpe_trainer import train_bpe
from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.tokenization.corpus import (
    CorpusScan,
    HoldoutSplitter,
    iter_train_batches,
    scan_corpus,
)
from model_trainer.tokenization.sentencepiece_convert import to_tokenizers
from model_trainer.tokenization.sentencepiece_trainer import (
    SamplingInfo,
    SentencePieceModel,
    plan_sampling,
    train_sentencepiece,
)
from model_trainer.tokenization.stats import DEFAULT_STATS_MAX_BYTES, TokenizerStats, compute_stats
from model_trainer.tokenization.stopping import StopCheck, check_stop
from model_trainer.tokenization.transformers_files import (
    TOKENIZER_JSON,
    special_tokens_map,
    write_transformers_files,
)
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.tokenization")

SENTENCEPIECE_MODEL = "tokenizer.model"
MANIFEST_VERSION = 1


class TrainTimings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split_seconds: float  # hash, UTF-8 check and holdout split (the scan pass)
    train_seconds: float  # the trainer, including its streamed read of the corpus
    stats_seconds: float
    save_seconds: float
    total_seconds: float


class TokenizerTrainResult(BaseModel):
    """Everything `manifest.json` records, and what the job reports as progress."""

    model_config = ConfigDict(extra="forbid")

    tokenizer_id: str
    config: TokenizerTrainConfig
    vocab_size: int
    special_token_ids: dict[str, int]  # role (eos_token, pad_token, ...) -> id
    corpus: CorpusScan
    sampling: SamplingInfo | None  # SentencePiece only
    stats: TokenizerStats | None  # None when the holdout is empty
    timings: TrainTimings
    threads: int
    library_versions: dict[str, str]
    files: list[str]  # written to out_dir, manifest.json included


def train_tokenizer(
    config: TokenizerTrainConfig,
    corpus_path: Path,
    out_dir: Path,
    *,
    threads: int,
    sample_bytes: int,
    should_stop: StopCheck | None = None,
    stats_max_bytes: int = DEFAULT_STATS_MAX_BYTES,
) -> TokenizerTrainResult:
    """Train, measure and save the tokenizer `config` describes on the corpus at `corpus_path`.

    `threads` (>= 1) bounds the trainers' parallelism; SentencePiece samples about
    `sample_bytes` of text when the train split is larger.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "training %s tokenizer (vocab %d) on %s",
        config.method,
        config.vocab_size,
        corpus_path.name,
        extra=log_fields("tokenizer_train_started"),
    )
    # The work files are as big as the corpus (the holdout, up to half of it, and for BPE
    # a copy of the train lines): keep them beside the output, on the disk that has room
    # for artifacts, not in a possibly small /tmp. They are gone when this returns.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work:
        holdout_path = Path(work) / "holdout.txt"
        # Byte-level BPE trains from a file of the train lines (the corpus itself when
        # nothing is held out); SentencePiece streams them from the corpus instead.
        copy_train = config.method == "bpe" and config.holdout_fraction > 0
        train_path = Path(work) / "train.txt" if copy_train else None
        splitter = HoldoutSplitter(config.seed, config.holdout_fraction)
        mark = time.perf_counter()
        scan = scan_corpus(corpus_path, splitter, holdout_path, train_path, should_stop)
        split_seconds = time.perf_counter() - mark
        log.info(
            "corpus scanned: %d bytes, %d lines, %d in the holdout",
            scan.size_bytes,
            scan.lines,
            scan.holdout_lines,
            extra=log_fields("tokenizer_corpus_scanned", duration_ms=_ms(split_seconds)),
        )

        mark = time.perf_counter()
        if config.method == "bpe":
            trained = _train_bpe(config, train_path or corpus_path, threads=threads)
        else:
            batches = iter_train_batches(corpus_path, splitter, should_stop)
            trained = _train_sentencepiece(
                config, batches, scan, threads=threads, sample_bytes=sample_bytes
            )
        tokenizer = trained.tokenizer
        train_seconds = time.perf_counter() - mark
        check_stop(should_stop, "training")

        mark = time.perf_counter()
        unk = config.special_tokens.unk
        stats = compute_stats(
            tokenizer,
            holdout_path,
            unk_id=None if unk is None else tokenizer.token_to_id(unk),
            byte_ids=trained.byte_ids,
            max_bytes=stats_max_bytes,
            should_stop=should_stop,
        )
        stats_seconds = time.perf_counter() - mark
        check_stop(should_stop, "holdout stats")

    mark = time.perf_counter()
    files = _save(config, tokenizer, trained.spm_model, out_dir)
    finished = time.perf_counter()
    result = TokenizerTrainResult(
        tokenizer_id=config.tokenizer_id(),
        config=config,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        special_token_ids=_special_token_ids(config, tokenizer),
        corpus=scan,
        sampling=trained.sampling,
        stats=stats,
        timings=TrainTimings(
            split_seconds=split_seconds,
            train_seconds=train_seconds,
            stats_seconds=stats_seconds,
            save_seconds=finished - mark,
            total_seconds=finished - started,
        ),
        threads=threads,
        library_versions=library_versions(),
        files=[*files, MANIFEST_JSON],
    )
    write_manifest(out_dir, _manifest(result))  # once, the folder's last file
    log.info(
        "tokenizer %s trained: %d tokens",
        result.tokenizer_id,
        result.vocab_size,
        extra=log_fields("tokenizer_train_finished", duration_ms=_ms(finished - started)),
    )
    return result


@dataclass(frozen=True)
class _Trained:
    tokenizer: Tokenizer  # the tokenizer.json pipeline, for either method
    spm_model: SentencePieceModel | None
    sampling: SamplingInfo | None
    byte_ids: frozenset[int]  # SentencePiece's byte-fallback pieces


def _train_bpe(config: TokenizerTrainConfig, train_file: Path, *, threads: int) -> _Trained:
    tokenizer = train_bpe(config, train_file, threads=threads)
    return _Trained(tokenizer, spm_model=None, sampling=None, byte_ids=frozenset())


def _train_sentencepiece(
    config: TokenizerTrainConfig,
    batches: Iterator[list[str]],
    scan: CorpusScan,
    *,
    threads: int,
    sample_bytes: int,
) -> _Trained:
    sampling = plan_sampling(scan.train_lines, scan.train_bytes, sample_bytes)
    model = train_sentencepiece(
        config, chain.from_iterable(batches), threads=threads, sampling=sampling
    )
    tokenizer = to_tokenizers(model, config.model_type or "unigram")
    return _Trained(tokenizer, model, sampling, _byte_piece_ids(tokenizer))


def _save(
    config: TokenizerTrainConfig,
    tokenizer: Tokenizer,
    spm_model: SentencePieceModel | None,
    out_dir: Path,
) -> list[str]:
    tokenizer.save(str(out_dir / TOKENIZER_JSON))
    files = [TOKENIZER_JSON]
    if spm_model is not None:
        (out_dir / SENTENCEPIECE_MODEL).write_bytes(spm_model.proto)
        files.append(SENTENCEPIECE_MODEL)
    return files + write_transformers_files(config, out_dir)


def _manifest(result: TokenizerTrainResult) -> dict[str, object]:
    """`manifest.json`'s content: the request, corpus, stats, timings and versions."""
    return {
        "kind": "tokenizer",
        "manifest_version": MANIFEST_VERSION,
        **result.model_dump(mode="json"),
    }


def _special_token_ids(config: TokenizerTrainConfig, tokenizer: Tokenizer) -> dict[str, int]:
    ids: dict[str, int] = {}
    for role, token in special_tokens_map(config).items():
        token_id = tokenizer.token_to_id(token)
        if token_id is None:  # the trainers always add them: a bug, not the user's problem
            raise RuntimeError(f"special token {token!r} ({role}) missing from the vocabulary")
        ids[role] = token_id
    return ids


def _byte_piece_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids of SentencePiece's byte-fallback pieces <0x00>..<0xFF> (none without fallback)."""
    found = (tokenizer.token_to_id(f"<0x{value:02X}>") for value in range(256))
    return frozenset(i for i in found if i is not None)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
