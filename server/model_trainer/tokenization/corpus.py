"""Reading a corpus: streamed in chunks of whole lines, validated, split into train and holdout.

A corpus can be gigabytes, so nothing here holds more than one chunk (a few megabytes) plus
the current line. The work is two passes over the file:

1. `scan_corpus` hashes it, checks that it is UTF-8 (reporting the byte offset of the first
   bad byte), counts lines and writes the holdout lines to a small file, so a bad corpus
   fails in seconds rather than after training; for byte-level BPE it also writes the
   train lines to a file, which the Rust trainer reads faster than Python can feed it;
2. for SentencePiece, `iter_train_batches` streams the corpus again into the trainer,
   without the holdout lines.

Lines are split on "\\n" only (a "\\r" stays part of its line) and handed on without it.
Line `i` belongs to the holdout when a 64-bit mix of (seed, i) is below
`holdout_fraction * 2**64`: the split depends only on the seed and the line numbers, not on
chunk sizes or on reading order, and is computed for a whole chunk at once with numpy.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.stopping import StopCheck, check_stop

CHUNK_BYTES = 4 << 20
# A "line" longer than this is almost certainly not text meant for a tokenizer (a minified
# bundle, a binary blob); refusing it keeps memory bounded by this size.
MAX_LINE_BYTES = 64 << 20

# splitmix64 constants (Steele, Lea, Flood 2014): a cheap, well-mixed 64-bit hash.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class RawChunk:
    offset: int  # byte offset of `raw` in the file
    first_line: int  # 0-based index of the chunk's first line
    raw: bytes  # whole lines, newlines included (the file's last line may lack one)
    line_count: int


@dataclass(frozen=True)
class LineChunk:
    offset: int
    first_line: int
    raw: bytes
    lines: list[str]  # decoded lines, without their "\n"


def read_raw_chunks(
    path: Path, chunk_bytes: int = CHUNK_BYTES, max_line_bytes: int | None = None
) -> Iterator[RawChunk]:
    """The file as undecoded chunks of whole lines; `UserError` once a line being read grows
    past `max_line_bytes` (default `MAX_LINE_BYTES`; a chunk may still hold shorter lines
    up to `chunk_bytes` long)."""
    limit = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    offset = 0
    first_line = 0
    carry = b""
    with path.open("rb") as file:
        while block := file.read(chunk_bytes):
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line ends in this block: keep reading the same line
                if len(data) > limit:
                    raise _line_too_long(first_line, limit)
                carry = data
                continue
            raw, carry = data[:cut], data[cut:]
            count = raw.count(b"\n")
            yield RawChunk(offset, first_line, raw, count)
            offset += cut
            first_line += count
    if carry:  # a last line without "\n"
        yield RawChunk(offset, first_line, carry, 1)


def read_line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineChunk]:
    """The file as chunks of decoded lines; `UserError` at the first non-UTF-8 byte."""
    for chunk in read_raw_chunks(path, chunk_bytes):
        lines = _decode(chunk.raw, chunk.offset, chunk.first_line).split("\n")
        if chunk.raw.endswith(b"\n"):
            lines.pop()  # the empty string after the chunk's last "\n"
        yield LineChunk(chunk.offset, chunk.first_line, chunk.raw, lines)


def _decode(raw: bytes, offset: int, first_line: int) -> str:
    # Chunks end right after a "\n", so a valid multi-byte character never straddles two.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start) + 1
        bad = raw[err.start : err.start + 1].hex()
        raise UserError(
            f"the corpus is not valid UTF-8: byte 0x{bad} at byte offset {offset + err.start} "
            f"(line {line}) {err.reason}. Convert the file to UTF-8 (for example "
            "`iconv -f latin1 -t utf-8`) or remove the bad bytes, and upload it again.",
            ErrorCode.DATA_INVALID,
        ) from None


def _line_too_long(line_index: int, limit: int) -> UserError:
    return UserError(
        f"line {line_index + 1} of the corpus is longer than {_size(limit)} (a file without "
        "line breaks?); tokenizers and models are trained on lines of text: add line breaks "
        "(one document, paragraph or sentence per line, separated by \\n) and upload it again.",
        ErrorCode.DATA_INVALID,
    )


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


@dataclass(frozen=True)
class CorpusCheck:
    size_bytes: int
    lines: int
    longest_line_bytes: int  # "\n" excluded
    seconds: float


def check_corpus(path: Path, max_line_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> CorpusCheck:
    """What every job checks on its corpus before tokenizing or training on it.

    `UserError` (DATA_INVALID) when the file is empty, holds only whitespace, is not UTF-8
    (naming the first bad byte's offset and line), or has a line longer than
    `max_line_bytes` (a file without line breaks). Streams the file in chunks of whole
    lines: memory stays near `chunk_bytes + max_line_bytes` whatever the corpus size.
    """
    started = time.perf_counter()
    size = lines = longest = 0
    has_text = False
    for chunk in read_raw_chunks(path, chunk_bytes, max_line_bytes):
        spans = _line_spans(chunk.raw, chunk.line_count)
        widths = spans[:, 1] - spans[:, 0]
        widest = int(np.argmax(widths))
        if widths[widest] > max_line_bytes:
            raise _line_too_long(chunk.first_line + widest, max_line_bytes)
        longest = max(longest, int(widths[widest]))
        text = _decode(chunk.raw, chunk.offset, chunk.first_line)
        has_text = has_text or not text.isspace()
        size += len(chunk.raw)
        lines += chunk.line_count
    if size == 0:
        raise UserError(
            "the corpus is empty (0 bytes): upload a UTF-8 text file with one document, "
            "paragraph or sentence per line.",
            ErrorCode.DATA_INVALID,
        )
    if not has_text:
        raise UserError(
            f"the corpus has no text: its {size} bytes are all whitespace (spaces, tabs, line "
            "breaks); upload a UTF-8 text file with one document, paragraph or sentence per "
            "line.",
            ErrorCode.DATA_INVALID,
        )
    return CorpusCheck(size, lines, longest, time.perf_counter() - started)


class HoldoutSplitter:
    """Decides, per line index, whether a line belongs to the holdout."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.fraction = fraction
        digest = hashlib.sha256(f"holdout:{seed}".encode()).digest()
        self._key = np.uint64(int.from_bytes(digest[:8], "little"))
        self._threshold = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))

    def holdout_mask(self, first_line: int, count: int) -> npt.NDArray[np.bool_]:
        """True for the holdout lines among `count` lines starting at index `first_line`."""
        if self.fraction <= 0.0:
            return np.zeros(count, dtype=np.bool_)
        # uint64 arithmetic on arrays wraps around, which is what the hash wants.
        z = np.arange(first_line, first_line + count, dtype=np.uint64) * _GOLDEN + self._key
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
        mask: npt.NDArray[np.bool_] = z < self._threshold
        return mask


class CorpusScan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    size_bytes: int
    lines: int
    train_lines: int
    train_bytes: int  # UTF-8 bytes of the train lines, newlines included
    holdout_lines: int
    holdout_bytes: int


def scan_corpus(
    path: Path,
    splitter: HoldoutSplitter,
    holdout_path: Path,
    train_path: Path | None = None,
    should_stop: StopCheck | None = None,
) -> CorpusScan:
    """Pass 1: hash and validate the corpus, and write its holdout lines to `holdout_path`
    (and, when `train_path` is given, the other lines there, as they are in the corpus).

    Works on bytes: lines are located with numpy and only holdout lines are sliced out, so
    the cost is a read, a hash and a UTF-8 check per chunk (and a copy, for `train_path`).
    """
    sha = hashlib.sha256()
    size = lines = holdout_lines = holdout_bytes = 0
    has_text = train_has_text = False
    with ExitStack() as files:
        holdout = files.enter_context(holdout_path.open("wb"))
        train = files.enter_context(train_path.open("wb")) if train_path else None
        for chunk in read_raw_chunks(path):
            check_stop(should_stop, "corpus scan")
            sha.update(chunk.raw)
            _decode(chunk.raw, chunk.offset, chunk.first_line)  # validation only
            size += len(chunk.raw)
            lines += chunk.line_count
            has_text = has_text or bool(chunk.raw.strip())
            mask = splitter.holdout_mask(chunk.first_line, chunk.line_count)
            spans = _line_spans(chunk.raw, chunk.line_count)
            held = spans[mask].tolist()
            if held:
                text = b"\n".join(chunk.raw[start:end] for start, end in held) + b"\n"
                holdout.write(text)
                holdout_lines += len(held)
                holdout_bytes += len(text)
            if train is not None:
                _write_all_but(train, chunk.raw, held)
            if not train_has_text:  # usually settled by the first train line
                kept = (chunk.raw[int(start) : int(end)] for start, end in spans[~mask])
                train_has_text = any(line.strip() for line in kept)
    if not has_text:
        raise UserError(
            "the corpus is empty (no text, only whitespace or nothing at all): "
            "upload a UTF-8 text file with one document, paragraph or sentence per line.",
            ErrorCode.DATA_INVALID,
        )
    if not train_has_text:
        raise UserError(
            f"all {lines} text lines of the corpus went to the holdout: lower "
            "holdout_fraction (0 keeps every line for training) or train on more text.",
            ErrorCode.DATA_INVALID,
        )
    return CorpusScan(
        sha256=sha.hexdigest(),
        size_bytes=size,
        lines=lines,
        train_lines=lines - holdout_lines,
        train_bytes=size - holdout_bytes,
        holdout_lines=holdout_lines,
        holdout_bytes=holdout_bytes,
    )


def _write_all_but(out: BinaryIO, raw: bytes, held: list[list[int]]) -> None:
    """Write `raw` without the held-out lines (spans without their newline)."""
    view = memoryview(raw)
    position = 0
    for start, end in held:
        out.write(view[position:start])
        position = end + 1
    out.write(view[position:])


def _line_spans(raw: bytes, line_count: int) -> npt.NDArray[np.int64]:
    """(start, end) byte offsets of each line in `raw`, newline excluded."""
    ends = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord("\n"))
    if len(ends) < line_count:  # the file's last line, without "\n"
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1))
    spans: npt.NDArray[np.int64] = np.stack([starts, ends], axis=1).astype(np.int64)
    return spans


def iter_train_batches(
    path: Path, splitter: HoldoutSplitter, should_stop: StopCheck | None = None
) -> Iterator[list[str]]:
    """Pass 2: the non-empty train lines, one list per chunk (trainers take batches)."""
    for chunk in read_line_chunks(path):
        check_stop(should_stop, "training input")
        if splitter.fraction <= 0.0:
            yield list(filter(None, chunk.lines))
            continue
        keep = (~splitter.holdout_mask(chunk.first_line, len(chunk.lines))).tolist()
        yield list(filter(None, compress(chunk.lines, keep)))
