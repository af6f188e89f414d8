"""SentencePiece training through the `sentencepiece` Python library (no `spm_*` binaries).

Input is a sentence iterator, so the corpus is streamed (SentencePiece keeps at most
`input_sentence_size` sentences, sampled uniformly with shuffling, when that is set), and the
model comes back as bytes through `model_writer` instead of files under a prefix.

Options chosen for a text generator's tokenizer rather than SentencePiece's MT defaults:
- `remove_extra_whitespaces=False`: runs of spaces (code indentation) survive the round trip;
- `byte_fallback` (configurable, on by default): no character is ever unknown;
- `max_sentence_length` raised from 4 kB to the corpus reader's line limit, so long lines
  are trained on instead of silently dropped;
- the unknown, end-of-text and padding pieces get ids 0, 1, 2; no beginning-of-sentence
  piece (the end-of-text token separates documents).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import sentencepiece as spm
from pydantic import BaseModel, ConfigDict

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.tokenization.corpus import MAX_LINE_BYTES
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.tokenization")

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class SamplingInfo(BaseModel):
    """Whether SentencePiece trained on a sample of the train lines, and how big it was."""

    model_config = ConfigDict(extra="forbid")

    sampled: bool
    sample_bytes: int  # the threshold above which the corpus is sampled
    train_lines: int
    train_bytes: int
    input_sentence_size: int | None  # lines kept by SentencePiece when sampled


def plan_sampling(train_lines: int, train_bytes: int, sample_bytes: int) -> SamplingInfo:
    """Sample about `sample_bytes` of text when the train split is bigger than that."""
    if train_bytes <= sample_bytes or train_lines == 0:
        return SamplingInfo(
            sampled=False,
            sample_bytes=sample_bytes,
            train_lines=train_lines,
            train_bytes=train_bytes,
            input_sentence_size=None,
        )
    # SentencePiece samples by line count; scale by the average line length.
    sentences = max(1, int(train_lines * sample_bytes / train_bytes))
    return SamplingInfo(
        sampled=True,
        sample_bytes=sample_bytes,
        train_lines=train_lines,
        train_bytes=train_bytes,
        input_sentence_size=sentences,
    )


def normalization_rule(config: TokenizerTrainConfig) -> str:
    """SentencePiece's built-in rule for the config's NFKC / lowercase options."""
    if config.nfkc:
        return "nfkc_cf" if config.lowercase else "nfkc"
    return "identity"  # lowercase without nfkc is rejected by the config


class _ModelWriter:
    """Receives the serialized model from the trainer (its `model_writer` protocol)."""

    def __init__(self) -> None:
        self.proto = b""

    def write(self, data: bytes) -> None:
        self.proto = data


class _GuardedSentences:
    """Wraps the sentence iterator and keeps any exception it raised.

    SentencePiece turns an exception from the iterator into `RuntimeError("INTERNAL: ...")`;
    keeping the original lets `UserError` and `TrainingStopped` reach the caller unchanged.
    """

    def __init__(self, sentences: Iterator[str]) -> None:
        self._sentences = sentences
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._sentences)
        except StopIteration:
            raise
        except BaseException as err:
            self.error = err
            raise


@dataclass(frozen=True)
class SentencePieceModel:
    """A trained model: its serialized proto (the `tokenizer.model` file) and a processor."""

    proto: bytes
    processor: spm.SentencePieceProcessor

    @classmethod
    def from_proto(cls, proto: bytes) -> SentencePieceModel:
        return cls(proto=proto, processor=spm.SentencePieceProcessor(model_proto=proto))

    def piece_size(self) -> int:
        return self.processor.get_piece_size()


def train_sentencepiece(
    config: TokenizerTrainConfig,
    sentences: Iterator[str],
    *,
    threads: int,
    sampling: SamplingInfo,
) -> SentencePieceModel:
    special = config.special_tokens
    if special.unk is None or config.model_type is None or config.byte_fallback is None:
        raise ValueError("train_sentencepiece needs a sentencepiece config")
    spm.set_random_generator_seed(config.seed % 2**32)
    guarded = _GuardedSentences(sentences)
    writer = _ModelWriter()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=guarded,
            model_writer=writer,
            model_type=config.model_type,
            vocab_size=config.vocab_size,
            num_threads=threads,
            byte_fallback=config.byte_fallback,
            normalization_rule_name=normalization_rule(config),
            remove_extra_whitespaces=False,
            max_sentence_length=MAX_LINE_BYTES,
            input_sentence_size=sampling.input_sentence_size or 0,
            shuffle_input_sentence=True,
            unk_id=0,
            eos_id=1,
            pad_id=2,
            bos_id=-1,
            unk_piece=special.unk,
            eos_piece=special.end_of_text,
            pad_piece=special.pad,
            # Errors come back as exceptions; INFO lines would break the JSON log on stderr.
            minloglevel=2,
        )
    except RuntimeError as err:
        if guarded.error is not None:
            raise guarded.error from None
        raise _user_error(str(err), config) from err
    if not writer.proto:
        raise RuntimeError("sentencepiece returned no model")
    model = SentencePieceModel.from_proto(writer.proto)
    log.info(
        "sentencepiece %s trained: %d pieces",
        config.model_type,
        model.piece_size(),
        extra=log_fields("tokenizer_sentencepiece_trained"),
    )
    return model


def _user_error(message: str, config: TokenizerTrainConfig) -> Exception:
    """The trainer's complaints that mean "change the request", as messages that say how."""
    if match := _TOO_HIGH.search(message):
        most = int(match.group(2))
        return UserError(
            f"the corpus is too small for vocab_size {config.vocab_size}: SentencePiece can "
            f"build at most {most} pieces from it. Set vocab_size to {most} or less, or train "
            "on more text.",
            ErrorCode.DATA_INVALID,
        )
    if match := _TOO_SMALL.search(message):
        needed = int(match.group(2))
        return UserError(
            f"vocab_size {config.vocab_size} is smaller than the {needed} pieces SentencePiece "
            "must keep for this corpus (its distinct characters, plus byte and special pieces). "
            f"Set vocab_size above {needed}.",
            ErrorCode.DATA_INVALID,
        )
    if "!sentences_.empty()" in message:
        return UserError(
            "no training text left after the holdout split: lower holdout_fraction or train "
            "on more text.",
            ErrorCode.DATA_INVALID,
        )
    return RuntimeError(f"sentencepiece training failed: {message}")
