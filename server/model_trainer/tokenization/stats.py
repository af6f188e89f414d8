"""How well a trained tokenizer does on text it has not seen: the holdout lines.

Everything is measured with the `tokenizer.json` pipeline (the one model training uses),
line by line without the newline (the unit both trainers learned from), streaming the
holdout file in batches through the Rust batch encoder; token counts go into one bincount
over the vocabulary, from which the totals, the unknown and byte-fallback rates and the
vocabulary used are read off.

Character coverage is the share of holdout characters that a vocabulary piece covers, as
opposed to the unknown token or byte-fallback pieces. It is 1.0 for byte-level BPE, whose
alphabet is the bytes; for SentencePiece each distinct character is encoded on its own.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from tokenizers import Tokenizer

from model_trainer.tokenization.corpus import read_line_chunks
from model_trainer.tokenization.stopping import StopCheck, check_stop

# Stats on more than this much holdout text would take longer than they are worth.
DEFAULT_STATS_MAX_BYTES = 32 << 20
_UNCOVERED_EXAMPLES = 20


class TokenizerStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holdout_lines: int
    holdout_chars: int
    holdout_words: int  # whitespace-separated
    token_count: int
    tokens_per_char: float
    tokens_per_word: float
    chars_per_token: float
    unknown_token_rate: float  # share of tokens that are the unknown token
    byte_fallback_rate: float  # share of tokens that are byte pieces (SentencePiece)
    character_coverage: float  # share of characters covered by a vocabulary piece
    distinct_chars: int
    uncovered_chars: list[str]  # the most frequent characters not covered
    vocab_used: int  # distinct ids that occur
    vocab_used_fraction: float
    measured_bytes: int  # holdout bytes measured (all of it unless `truncated`)
    truncated: bool


def compute_stats(
    tokenizer: Tokenizer,
    holdout_path: Path,
    *,
    unk_id: int | None,
    byte_ids: frozenset[int],
    max_bytes: int = DEFAULT_STATS_MAX_BYTES,
    should_stop: StopCheck | None = None,
) -> TokenizerStats | None:
    """Stats over the first `max_bytes` of the holdout; `None` when the holdout is empty."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    counts: npt.NDArray[np.int64] = np.zeros(vocab_size, dtype=np.int64)
    chars: Counter[str] = Counter()
    lines = words = measured = 0
    truncated = False
    for chunk in read_line_chunks(holdout_path, chunk_bytes=1 << 20):
        check_stop(should_stop, "holdout stats")
        if measured >= max_bytes:
            truncated = True
            break
        measured += len(chunk.raw)
        lines += len(chunk.lines)
        words += sum(map(len, map(str.split, chunk.lines)))
        chars.update("".join(chunk.lines))
        encodings = tokenizer.encode_batch_fast(chunk.lines, add_special_tokens=False)
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    if lines == 0:
        return None

    total_chars = chars.total()
    tokens = int(counts.sum())
    unknown = int(counts[unk_id]) if unk_id is not None else 0
    fallback = int(counts[sorted(byte_ids)].sum()) if byte_ids else 0
    uncovered = _uncovered(tokenizer, chars, unk_id, byte_ids)
    uncovered_count = sum(chars[c] for c in uncovered)
    used = int(np.count_nonzero(counts))
    return TokenizerStats(
        holdout_lines=lines,
        holdout_chars=total_chars,
        holdout_words=words,
        token_count=tokens,
        tokens_per_char=_ratio(tokens, total_chars),
        tokens_per_word=_ratio(tokens, words),
        chars_per_token=_ratio(total_chars, tokens),
        unknown_token_rate=_ratio(unknown, tokens),
        byte_fallback_rate=_ratio(fallback, tokens),
        character_coverage=1.0 - _ratio(uncovered_count, total_chars),
        distinct_chars=len(chars),
        uncovered_chars=uncovered[:_UNCOVERED_EXAMPLES],
        vocab_used=used,
        vocab_used_fraction=_ratio(used, vocab_size),
        measured_bytes=measured,
        truncated=truncated,
    )


def _uncovered(
    tokenizer: Tokenizer, chars: Counter[str], unk_id: int | None, byte_ids: frozenset[int]
) -> list[str]:
    """The characters encoded (on their own) with the unknown token or byte pieces, commonest
    first."""
    fallback = set(byte_ids)
    if unk_id is not None:
        fallback.add(unk_id)
    if not fallback:
        return []  # byte-level: every character is a sequence of alphabet symbols
    distinct = [c for c, _ in chars.most_common()]
    encodings = tokenizer.encode_batch_fast(distinct, add_special_tokens=False)
    return [c for c, e in zip(distinct, encodings, strict=True) if fallback.intersection(e.ids)]


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
