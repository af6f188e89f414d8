"""Corpus to tokens, once; then training and validation windows from a memory map.

1. `tokenize_corpus` streams the corpus in chunks of whole lines through the tokenizer's
   batch encoder (Rust, parallel) into a flat token file: uint16 when the vocabulary fits,
   uint32 otherwise. The file and its `meta.json` are an entry of the worker's disk cache
   (`disk_cache.DiskCache`, made once and renamed into place, evicted least recently used
   first, never while a job uses it) under a key of corpus SHA-256 + tokenizer id, so a
   retried or repeated run skips this step.
2. `split_tokens` cuts the token stream by position: the first (1 - holdout) is training
   data, the rest validation, and counts the characters each part spells (for bits/char).
3. `WindowSampler` draws random training windows, as nanoGPT's `get_batch` does, from a
   seeded generator whose state goes into checkpoints; `validation_batches` is a fixed set
   of evenly spaced windows, so every periodic validation measures the same thing.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO, get_args

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict

from model_trainer.disk_cache import DiskCache
from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.handle import TokenizerHandle
from model_trainer.training.chat import ChatTemplate, read_conversations
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.training")

# Text handed to the encoder per chunk, and chunks per encode_batch call: big enough for the
# Rust encoder to use every core, small enough that memory stays flat on huge corpora.
CHUNK_CHARS = 256 * 1024
CHUNKS_PER_BATCH = 8
# Decoding a split to count its characters, in pieces of this many tokens.
DECODE_PIECE = 1 << 20

TOKENS_SECTION = "tokens"  # of the worker's disk cache: an entry is a folder of these
TOKENS_BIN, TOKENS_META = "tokens.bin", "meta.json"
# A chat corpus's loss mask beside its tokens: one byte a token, 1 where the loss applies.
TOKENS_MASK = "mask.bin"
# A target the loss ignores (cross-entropy's default ignore_index).
IGNORED = -100
# Conversations rendered per encode_batch call.
CONVERSATIONS_PER_BATCH = 256

TokenArray = npt.NDArray[np.uint16] | npt.NDArray[np.uint32]
# What an evaluation can be asked to score (see `Holdout`).
EvalSplit = Literal["validation", "test", "all"]
EVAL_SPLITS: tuple[EvalSplit, ...] = get_args(EvalSplit)


class TokenFileMeta(BaseModel):
    """The `meta.json` beside a token file in its cache entry."""

    model_config = ConfigDict(extra="forbid")

    corpus_sha256: str  # the corpus id (its Data Bank file id is its SHA-256)
    tokenizer_id: str
    vocab_size: int
    dtype: Literal["uint16", "uint32"]
    n_tokens: int
    n_chars: int
    tokenize_seconds: float
    masked: bool = False  # a chat corpus's: `mask.bin` says which tokens are trained on


MaskArray = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class TokenCache:
    path: Path
    meta: TokenFileMeta
    from_cache: bool

    def tokens(self) -> TokenArray:
        if self.meta.dtype == "uint16":
            return np.memmap(self.path, dtype=np.uint16, mode="r")
        return np.memmap(self.path, dtype=np.uint32, mode="r")

    def mask(self) -> MaskArray | None:
        """1 where the loss applies, for a chat corpus; None: every token is trained on."""
        if not self.meta.masked:
            return None
        return np.memmap(self.path.with_name(TOKENS_MASK), dtype=np.uint8, mode="r")


def token_dtype(vocab_size: int) -> Literal["uint16", "uint32"]:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def cache_key(corpus_sha256: str, tokenizer_id: str) -> str:
    # Ids come from our own API, but a file name must never be a path: keep it readable
    # where it is safe and make it unique with a hash.
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", tokenizer_id)[:40]
    tok_hash = hashlib.sha256(tokenizer_id.encode()).hexdigest()[:12]
    return f"{corpus_sha256}-{readable}-{tok_hash}"


@contextmanager
def tokenize_corpus(
    corpus_path: Path,
    tokenizer: TokenizerHandle,
    tokenizer_id: str,
    cache: DiskCache,
    *,
    corpus_id: str,
) -> Iterator[TokenCache]:
    """The corpus's tokens, from `cache` (tokenized first if no process has yet); the token
    file is kept from eviction until the block ends.

    `corpus_id` is the corpus's Data Bank file id, the SHA-256 of `corpus_path`'s bytes:
    the cache key, trusted as given (the Data Bank fetch verified it).
    """

    def write(dest: Path) -> TokenFileMeta:
        return _write_tokens(corpus_path, tokenizer, tokenizer_id, corpus_id, dest)

    with _cached_tokens(cache, corpus_id, tokenizer_id, write) as tokens:
        yield tokens


@contextmanager
def tokenize_chat_corpus(
    corpus_path: Path,
    tokenizer: TokenizerHandle,
    template: ChatTemplate,
    tokenizer_id: str,
    cache: DiskCache,
    *,
    corpus_id: str,
    assistant_only: bool,
) -> Iterator[TokenCache]:
    """A chat corpus's tokens and loss mask (training/chat.py), cached as `tokenize_corpus`
    caches text's: under the tokenizer and what the loss applies to."""
    key = f"{tokenizer_id}:chat:{'assistant' if assistant_only else 'all'}"

    def write(dest: Path) -> TokenFileMeta:
        return _write_chat_tokens(
            corpus_path, tokenizer, template, key, corpus_id, dest, assistant_only
        )

    with _cached_tokens(cache, corpus_id, key, write) as tokens:
        yield tokens


@contextmanager
def _cached_tokens(
    cache: DiskCache, corpus_id: str, tokenizer_id: str, write: Callable[[Path], TokenFileMeta]
) -> Iterator[TokenCache]:
    made: list[TokenFileMeta] = []

    def make(dest: Path) -> None:
        made.append(write(dest))

    with cache.use(TOKENS_SECTION, cache_key(corpus_id, tokenizer_id), make) as entry:
        if made:
            yield TokenCache(path=entry / TOKENS_BIN, meta=made[0], from_cache=False)
            return
        meta = TokenFileMeta.model_validate_json((entry / TOKENS_META).read_text("utf-8"))
        log.info(
            "token cache hit: %d tokens",
            meta.n_tokens,
            extra=log_fields("tokens_cached", corpus_sha256=corpus_id, tokenizer_id=tokenizer_id),
        )
        yield TokenCache(path=entry / TOKENS_BIN, meta=meta, from_cache=True)


def _write_tokens(
    corpus_path: Path, tokenizer: TokenizerHandle, tokenizer_id: str, corpus_id: str, dest: Path
) -> TokenFileMeta:
    """Tokenize into the folder `dest` (the cache renames it into place once complete)."""
    dest.mkdir()
    dtype = token_dtype(tokenizer.vocab_size)
    started = time.perf_counter()
    n_tokens = n_chars = 0
    with (dest / TOKENS_BIN).open("wb") as out, _open_text(corpus_path) as text:
        for batch in _batches(_line_chunks(text, CHUNK_CHARS), CHUNKS_PER_BATCH):
            for ids in tokenizer.encode_batch(batch):
                np.asarray(ids, dtype=dtype).tofile(out)
                n_tokens += len(ids)
            n_chars += sum(len(chunk) for chunk in batch)
        out.flush()
        os.fsync(out.fileno())
    if n_tokens == 0:
        raise UserError(f"corpus {corpus_path.name} is empty: nothing to train on")
    meta = TokenFileMeta(
        corpus_sha256=corpus_id,
        tokenizer_id=tokenizer_id,
        vocab_size=tokenizer.vocab_size,
        dtype=dtype,
        n_tokens=n_tokens,
        n_chars=n_chars,
        tokenize_seconds=round(time.perf_counter() - started, 3),
    )
    (dest / TOKENS_META).write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    log.info(
        "tokenized %d characters into %d tokens in %.2f s",
        n_chars,
        n_tokens,
        meta.tokenize_seconds,
        extra=log_fields("tokens_written", corpus_sha256=corpus_id, tokenizer_id=tokenizer_id),
    )
    return meta


def _write_chat_tokens(
    corpus_path: Path,
    tokenizer: TokenizerHandle,
    template: ChatTemplate,
    tokenizer_id: str,
    corpus_id: str,
    dest: Path,
    assistant_only: bool,
) -> TokenFileMeta:
    """Render and tokenize each conversation into `dest`: tokens and their loss mask."""
    dest.mkdir()
    dtype = token_dtype(tokenizer.vocab_size)
    started = time.perf_counter()
    n_tokens = n_chars = trained = 0
    with (dest / TOKENS_BIN).open("wb") as out, (dest / TOKENS_MASK).open("wb") as mask_out:
        conversations = read_conversations(corpus_path)
        while batch := list(itertools.islice(conversations, CONVERSATIONS_PER_BATCH)):
            pieces = [p for c in batch for p in template.segments(c.messages, assistant_only)]
            for (text, trains), ids in zip(
                pieces, tokenizer.encode_batch([t for t, _ in pieces]), strict=True
            ):
                np.asarray(ids, dtype=dtype).tofile(out)
                np.full(len(ids), 1 if trains else 0, dtype=np.uint8).tofile(mask_out)
                n_tokens += len(ids)
                trained += len(ids) if trains else 0
                n_chars += len(text)
        for f in (out, mask_out):
            f.flush()
            os.fsync(f.fileno())
    if trained == 0:
        raise UserError(
            f"chat corpus {corpus_path.name} has no assistant message to train on"
            if n_tokens
            else f"chat corpus {corpus_path.name} is empty: nothing to train on"
        )
    meta = TokenFileMeta(
        corpus_sha256=corpus_id,
        tokenizer_id=tokenizer_id,
        vocab_size=tokenizer.vocab_size,
        dtype=dtype,
        n_tokens=n_tokens,
        n_chars=n_chars,
        tokenize_seconds=round(time.perf_counter() - started, 3),
        masked=True,
    )
    (dest / TOKENS_META).write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    log.info(
        "rendered and tokenized the chat corpus: %d tokens, %d of them trained on (%.2f s)",
        n_tokens,
        trained,
        meta.tokenize_seconds,
        extra=log_fields("chat_tokens_written", corpus_sha256=corpus_id),
    )
    return meta


def _open_text(path: Path) -> TextIO:
    # newline="" keeps "\r\n" as two characters, so character counts match the file.
    return path.open("r", encoding="utf-8", newline="")


def _line_chunks(text: TextIO, size: int) -> Iterator[str]:
    """Pieces of about `size` characters, each cut just after a newline.

    The cut is placed before a non-space character so that the encoder's pre-tokenizer sees
    the same words and whitespace runs as it would in the whole text: chunking must not
    change the tokens.
    """
    carry = ""
    try:
        while block := text.read(size):
            buf = carry + block
            cut = _safe_cut(buf)
            if cut <= 0 and len(buf) < 8 * size:
                carry = buf  # no safe place yet: read more
                continue
            cut = cut if cut > 0 else len(buf)  # a single enormous line: cut anyway
            yield buf[:cut]
            carry = buf[cut:]
    except UnicodeDecodeError as exc:
        raise UserError(f"corpus is not UTF-8 text ({exc.reason})") from exc
    if carry:
        yield carry


def _safe_cut(buf: str) -> int:
    i = buf.rfind("\n")
    while i >= 0 and (i + 1 >= len(buf) or buf[i + 1].isspace()):
        i = buf.rfind("\n", 0, i)
    return i + 1


def _batches(chunks: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class Holdout:
    """Where each split starts and ends in a token stream (the module docstring's table)."""

    n_tokens: int
    validation_start: int
    test_start: int

    @classmethod
    def of(cls, n_tokens: int, holdout_fraction: float) -> Holdout:
        validation_start = int(n_tokens * (1.0 - holdout_fraction))
        test_start = validation_start + (n_tokens - validation_start) // 2
        return cls(n_tokens, validation_start, test_start)

    def bounds(self, split: EvalSplit) -> tuple[int, int]:
        """[start, end) of `split`; training's part is [0, validation_start)."""
        match split:
            case "validation":
                return self.validation_start, self.test_start
            case "test":
                return self.test_start, self.n_tokens
            case "all":
                return 0, self.n_tokens


def eval_tokens(tokens: TokenArray, holdout: Holdout, split: EvalSplit) -> TokenArray:
    """The tokens to score for `split`: the split itself, one token early.

    Scoring predicts every token but the first of what it is given; starting at the token
    before the split (when there is one) makes every token of the split scored, and the
    characters counted exactly those of the split.
    """
    start, end = holdout.bounds(split)
    return tokens[max(0, start - 1) : end]


@dataclass(frozen=True)
class TokenSplits:
    train: TokenArray
    validation: TokenArray
    test: TokenArray
    train_chars: int
    validation_chars: int
    test_chars: int
    # A chat corpus's loss masks of the train and validation parts (None: plain text).
    train_mask: MaskArray | None = None
    validation_mask: MaskArray | None = None


def split_tokens(
    cache: TokenCache, holdout_fraction: float, tokenizer: TokenizerHandle
) -> TokenSplits:
    """The train, validation and test parts of the cached token stream (see `Holdout`)."""
    tokens = cache.tokens()
    holdout = Holdout.of(len(tokens), holdout_fraction)
    validation = tokens[holdout.validation_start : holdout.test_start]
    test = tokens[holdout.test_start :]
    validation_chars = count_chars(validation, tokenizer)
    test_chars = count_chars(test, tokenizer)
    mask = cache.mask()
    return TokenSplits(
        train=tokens[: holdout.validation_start],
        validation=validation,
        test=test,
        train_chars=cache.meta.n_chars - validation_chars - test_chars,
        validation_chars=validation_chars,
        test_chars=test_chars,
        train_mask=mask[: holdout.validation_start] if mask is not None else None,
        validation_mask=mask[holdout.validation_start : holdout.test_start]
        if mask is not None
        else None,
    )


def count_chars(tokens: TokenArray, tokenizer: TokenizerHandle) -> int:
    """Characters spelled by `tokens` (exact for lossless tokenizers such as byte-level BPE)."""
    return sum(
        len(tokenizer.decode(tokens[i : i + DECODE_PIECE].tolist()))
        for i in range(0, len(tokens), DECODE_PIECE)
    )


class WindowSampler:
    """Random training windows of `seq_len + 1` tokens (inputs and next-token targets)."""

    def __init__(
        self,
        data: TokenArray,
        seq_len: int,
        batch_size: int,
        seed: int,
        mask: MaskArray | None = None,
    ) -> None:
        """`mask`: a chat corpus's (1 where the loss applies); targets where it is 0 are
        `IGNORED`, and a batch with no target left is drawn again."""
        if mask is not None and not mask.any():
            raise UserError(
                "the training split holds no assistant tokens to train on: lower "
                "holdout_fraction, or add conversations",
                ErrorCode.CONFIG_INVALID,
            )
        self.mask = mask
        if len(data) < seq_len + 1:
            raise UserError(
                f"the training split has {len(data)} tokens, fewer than one window of "
                f"max_seq_len + 1 = {seq_len + 1}: use a larger corpus or a smaller max_seq_len",
                ErrorCode.CONFIG_INVALID,
            )
        self.data = data
        self.seq_len = seq_len
        self.batch_size = batch_size
        # A generator of its own, so the batch sequence depends only on the seed and the
        # number of batches drawn, and resumes exactly from a checkpoint.
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.data) - self.seq_len
        while True:
            starts = torch.randint(high, (self.batch_size,), generator=self.generator).numpy()
            rows = starts[:, None] + self._offsets
            windows = torch.from_numpy(self.data[rows].astype(np.int64))
            targets = _masked(windows[:, 1:], self.mask, rows[:, 1:])
            if self.mask is None or bool((targets != IGNORED).any()):
                return windows[:, :-1], targets

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def _masked(
    targets: torch.Tensor, mask: MaskArray | None, rows: npt.NDArray[np.int64]
) -> torch.Tensor:
    """`targets` with the ones the loss does not apply to set to `IGNORED`."""
    if mask is None:
        return targets
    keep = torch.from_numpy(mask[rows].astype(np.bool_))
    return targets.masked_fill(~keep, IGNORED)


def validation_batches(
    data: TokenArray,
    seq_len: int,
    batch_size: int,
    n_batches: int,
    mask: MaskArray | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of windows spread evenly over the validation split (`mask`: as the
    sampler's)."""
    if len(data) < seq_len + 1:
        raise UserError(
            f"the validation split has {len(data)} tokens, fewer than one window of "
            f"max_seq_len + 1 = {seq_len + 1}: raise holdout_fraction or lower max_seq_len",
            ErrorCode.CONFIG_INVALID,
        )
    n_windows = n_batches * batch_size
    starts = np.linspace(0, len(data) - seq_len - 1, n_windows).astype(np.int64)
    rows = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)
    windows = torch.from_numpy(data[rows].astype(np.int64))
    targets = _masked(windows[:, 1:], mask, rows[:, 1:])
    if mask is not None and not bool((targets != IGNORED).any()):
        raise UserError(
            "the validation windows hold no assistant tokens: raise holdout_fraction or "
            "eval_batches",
            ErrorCode.CONFIG_INVALID,
        )
    return [
        (windows[i : i + batch_size, :-1], targets[i : i + batch_size])
        for i in range(0, n_windows, batch_size)
    ]
