"""What to train: the body of `POST /tokenizers/train`, and the tokenizer id derived from it.

Options that only one method understands are `None` in the request and filled with that
method's default during validation; sending one to the other method is a 422 that names the
field, rather than a value silently ignored. So the validated config is always complete, and
`canonical_json()` (every field, sorted keys) hashes to the same `tokenizer_id` whether a
default was written out or left implicit.

- `model_type`, `byte_fallback`: SentencePiece only (defaults `unigram`, `true`).
- `min_frequency`: byte-level BPE only (default 2).
- `special_tokens.unk`: SentencePiece needs an unknown piece (default `<unk>`); byte-level
  BPE represents every byte and has none, so it must stay unset for `bpe`.
- `corpus_format`, `text_field`: how to read the corpus (`tokenization.corpus_formats`).
- `lowercase` for SentencePiece uses its `nfkc_cf` rule (NFKC with case folding), so it
  requires `nfkc`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from model_trainer.tokenization.corpus_formats import (
    DEFAULT_TEXT_FIELD,
    CorpusFormatField,
    TextFieldName,
    check_format_fields,
)
from service_common.databank_contract import FILE_ID_PATTERN

Method = Literal["bpe", "sentencepiece"]
SpmModelType = Literal["unigram", "bpe"]

# Both methods start from the 256 byte values (byte-level BPE's alphabet, SentencePiece's
# byte fallback pieces), so a useful vocabulary is bigger than that plus the special tokens.
BYTE_TOKENS = 256
MAX_VOCAB_SIZE = 262_144
# Part of the hashed text: bump it when training changes in a way that should give
# existing requests new ids (and so new tokenizers) instead of the cached ones.
ID_SCHEME = "model-trainer/tokenizer/v1"

_T = TypeVar("_T")

_SPECIAL_SHAPE = r"^\S{1,64}$"


class SpecialTokens(BaseModel):
    model_config = ConfigDict(extra="forbid")

    end_of_text: str = Field(
        default="<|endoftext|>",
        pattern=_SPECIAL_SHAPE,
        description="Separates documents; also used as the beginning-of-sequence token.",
    )
    pad: str = Field(default="<|pad|>", pattern=_SPECIAL_SHAPE)
    unk: str | None = Field(
        default=None,
        pattern=_SPECIAL_SHAPE,
        description="SentencePiece only (default `<unk>`); byte-level BPE has no unknown token.",
    )

    def in_order(self) -> list[str]:
        """The tokens as they get the first ids: unknown (if any), end of text, padding."""
        return [t for t in (self.unk, self.end_of_text, self.pad) if t is not None]


class TokenizerTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Method = Field(description="`bpe` (byte-level, Hugging Face) or `sentencepiece`.")
    model_type: SpmModelType | None = Field(
        default=None,
        validate_default=True,
        description="SentencePiece algorithm: `unigram` (default) or `bpe`.",
    )
    vocab_size: int = Field(
        default=32_000,
        ge=128,
        le=MAX_VOCAB_SIZE,
        description="Tokens in the vocabulary, special and byte tokens included.",
    )
    min_frequency: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        validate_default=True,
        description="BPE only: a pair is merged only if it occurs this often (default 2).",
    )
    byte_fallback: bool | None = Field(
        default=None,
        validate_default=True,
        description="SentencePiece only (default true): unseen characters become byte pieces "
        "instead of the unknown piece.",
    )
    corpus_file_id: str = Field(
        pattern=FILE_ID_PATTERN, description="Data Bank id of the corpus (64 hex characters)."
    )
    corpus_format: CorpusFormatField = "auto"
    text_field: TextFieldName = DEFAULT_TEXT_FIELD
    holdout_fraction: float = Field(
        default=0.01,
        ge=0.0,
        le=0.5,
        description="Share of the corpus lines kept out of training to measure the tokenizer.",
    )
    seed: int = Field(
        default=42, ge=0, le=2**63 - 1, description="Picks the holdout lines (and samples)."
    )
    nfkc: bool = Field(default=False, description="Apply Unicode NFKC normalization.")
    lowercase: bool = Field(default=False, description="Lowercase the text (case-fold).")
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens, validate_default=True)

    @field_validator("model_type")
    @classmethod
    def _model_type_for_method(
        cls, value: SpmModelType | None, info: ValidationInfo
    ) -> SpmModelType | None:
        unigram: SpmModelType = "unigram"
        return _sentencepiece_only(value, unigram, "model_type", info)

    @field_validator("min_frequency")
    @classmethod
    def _min_frequency_for_method(cls, value: int | None, info: ValidationInfo) -> int | None:
        method = info.data.get("method")
        if method == "sentencepiece" and value is not None:
            raise ValueError(
                "min_frequency applies only to method 'bpe'; remove it for 'sentencepiece'"
            )
        if method == "bpe" and value is None:
            return 2
        return value

    @field_validator("byte_fallback")
    @classmethod
    def _byte_fallback_for_method(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        return _sentencepiece_only(value, True, "byte_fallback", info)

    @field_validator("lowercase")
    @classmethod
    def _lowercase_needs_nfkc(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("method") == "sentencepiece" and not info.data.get("nfkc"):
            raise ValueError(
                "sentencepiece lowercases only together with NFKC (its 'nfkc_cf' rule): "
                "set nfkc to true, or lowercase to false"
            )
        return value

    @field_validator("special_tokens")
    @classmethod
    def _special_tokens_for_method(
        cls, value: SpecialTokens, info: ValidationInfo
    ) -> SpecialTokens:
        method = info.data.get("method")
        if method == "bpe" and value.unk is not None:
            raise ValueError(
                "byte-level BPE encodes every byte, so it has no unknown token: "
                "remove special_tokens.unk"
            )
        if method == "sentencepiece" and value.unk is None:
            value = value.model_copy(update={"unk": "<unk>"})
        tokens = value.in_order()
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"special tokens must be different from each other: {tokens}")
        if any(t.startswith("<0x") for t in tokens):
            raise ValueError("special tokens may not look like byte pieces ('<0x..>')")
        # The vocabulary must hold the bytes, the special tokens and at least one learned token.
        vocab_size = info.data.get("vocab_size")
        needed = BYTE_TOKENS + len(tokens) + 1
        uses_bytes = method == "bpe" or info.data.get("byte_fallback") is True
        if uses_bytes and isinstance(vocab_size, int) and vocab_size < needed:
            what = "byte-level BPE" if method == "bpe" else "sentencepiece with byte_fallback"
            raise ValueError(
                f"vocab_size {vocab_size} is too small for {what}: it needs {BYTE_TOKENS} byte "
                f"tokens and {len(tokens)} special tokens, so vocab_size must be at least {needed}"
            )
        return value

    @model_validator(mode="after")
    def _format_fields(self) -> Self:
        check_format_fields(self.corpus_format, self.text_field)
        return self

    def canonical_json(self) -> str:
        """Every field (defaults filled in), sorted keys, no whitespace: the hashed form.

        The corpus format fields came later; at their defaults they are left out, so a
        request that does not use them keeps the id it had before they existed.
        """
        fields = self.model_dump(mode="json")
        for name, default in (("corpus_format", "auto"), ("text_field", DEFAULT_TEXT_FIELD)):
            if fields[name] == default:
                del fields[name]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def tokenizer_id(self) -> str:
        """`tok-` and 16 hex digits of SHA-256 over the canonical JSON: equal requests, one id."""
        digest = hashlib.sha256(f"{ID_SCHEME}\n{self.canonical_json()}".encode()).hexdigest()
        return f"tok-{digest[:16]}"


def _sentencepiece_only(
    value: _T | None, default: _T, field: str, info: ValidationInfo
) -> _T | None:
    method = info.data.get("method")
    if method == "bpe" and value is not None:
        raise ValueError(f"{field} applies only to method 'sentencepiece'; remove it for 'bpe'")
    if method == "sentencepiece" and value is None:
        return default
    return value
