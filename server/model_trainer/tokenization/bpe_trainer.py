"""Byte-level BPE with Hugging Face `tokenizers` (the GPT-2 scheme).

Text is seen as UTF-8 bytes, each mapped to a printable character, so the 256 byte values
are the alphabet and nothing is ever unknown. The ByteLevel pre-tokenizer splits on GPT-2's
regex without adding a prefix space, and the ByteLevel decoder maps the bytes back, so
decode(encode(text)) == text exactly (when no normalization is configured).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.config import TokenizerTrainConfig
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.tokenization")


def train_bpe(config: TokenizerTrainConfig, train_file: Path, *, threads: int) -> Tokenizer:
    """Train on a text file; `UserError` when it cannot fill the vocabulary.

    The Rust trainer reads the file itself (line by line, each line with its newline), which
    keeps the whole count phase out of Python.
    """
    _limit_threads(threads)
    tokenizer = Tokenizer(models.BPE())
    normalizer = _normalizer(config)
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # trim_offsets=False: offsets keep the spaces a token carries.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency or 2,
        special_tokens=config.special_tokens.in_order(),  # ids 0, 1, ... in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(train_file)], trainer)
    learned = tokenizer.get_vocab_size(with_added_tokens=True)
    log.info(
        "byte-level BPE trained: %d tokens",
        learned,
        extra=log_fields("tokenizer_bpe_trained"),
    )
    if learned < config.vocab_size:
        raise UserError(
            f"the corpus is too small for vocab_size {config.vocab_size}: byte-level BPE found "
            f"only {learned} tokens in it with min_frequency {config.min_frequency}. Set "
            f"vocab_size to {learned} or less, lower min_frequency, or train on more text.",
            ErrorCode.DATA_INVALID,
        )
    return tokenizer


def _normalizer(config: TokenizerTrainConfig) -> normalizers.Normalizer | None:
    steps: list[normalizers.Normalizer] = []
    if config.nfkc:
        steps.append(normalizers.NFKC())
    if config.lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps) if steps else None


def _limit_threads(threads: int) -> None:
    # tokenizers runs on rayon's global pool, sized from this variable when the pool is
    # first used in the process. The worker forks one process per job, so each job sets
    # it before anything parallel has run; in a long-lived process the first size sticks.
    os.environ["RAYON_NUM_THREADS"] = str(threads)
