"""The tokenizer request body: per-method defaults, field-named errors, a stable id."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from model_trainer.tokenization.config import TokenizerTrainConfig

CORPUS_ID = "ab" * 32


def _config(**fields: object) -> TokenizerTrainConfig:
    return TokenizerTrainConfig.model_validate({"corpus_file_id": CORPUS_ID, **fields})


def _error_fields(**fields: object) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        _config(**fields)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


def test_bpe_defaults() -> None:
    config = _config(method="bpe")
    assert config.vocab_size == 32_000
    assert config.min_frequency == 2
    assert config.model_type is None
    assert config.byte_fallback is None
    assert config.holdout_fraction == 0.01
    assert config.seed == 42
    assert config.special_tokens.in_order() == ["<|endoftext|>", "<|pad|>"]


def test_sentencepiece_defaults() -> None:
    config = _config(method="sentencepiece")
    assert config.model_type == "unigram"
    assert config.byte_fallback is True
    assert config.min_frequency is None
    assert config.special_tokens.unk == "<unk>"
    assert config.special_tokens.in_order() == ["<unk>", "<|endoftext|>", "<|pad|>"]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (
            {"method": "bpe", "model_type": "unigram"},
            "model_type",
            "only to method 'sentencepiece'",
        ),
        ({"method": "bpe", "byte_fallback": True}, "byte_fallback", "remove it for 'bpe'"),
        ({"method": "sentencepiece", "min_frequency": 3}, "min_frequency", "only to method 'bpe'"),
        ({"method": "bpe", "special_tokens": {"unk": "<unk>"}}, "special_tokens", "no unknown"),
        ({"method": "sentencepiece", "lowercase": True}, "lowercase", "set nfkc to true"),
        ({"method": "bpe", "vocab_size": 200}, "special_tokens", "at least 259"),
        ({"method": "bpe", "vocab_size": 100}, "vocab_size", "greater than or equal to 128"),
        ({"method": "bpe", "vocab_size": 10**7}, "vocab_size", "less than or equal"),
        ({"method": "wordpiece"}, "method", "'bpe' or 'sentencepiece'"),
        ({"method": "bpe", "corpus_file_id": "XYZ"}, "corpus_file_id", "match pattern"),
        ({"method": "bpe", "holdout_fraction": 0.9}, "holdout_fraction", "0.5"),
        ({"method": "bpe", "colour": "red"}, "colour", "Extra inputs"),
        (
            {"method": "bpe", "special_tokens": {"pad": "<|endoftext|>"}},
            "special_tokens",
            "different from each other",
        ),
        ({"method": "bpe", "special_tokens": {"pad": "a b"}}, "special_tokens.pad", "pattern"),
    ],
)
def test_invalid_bodies_name_the_field(fields: dict[str, object], field: str, words: str) -> None:
    errors = _error_fields(**fields)
    assert any(loc == field and words in msg for loc, msg in errors), errors


def test_sentencepiece_without_byte_fallback_allows_small_vocab() -> None:
    config = _config(method="sentencepiece", byte_fallback=False, vocab_size=128)
    assert config.vocab_size == 128
    assert _error_fields(method="sentencepiece", vocab_size=200)[0][0] == "special_tokens"


def test_same_request_same_id_whether_defaults_are_written_or_not() -> None:
    implicit = _config(method="sentencepiece")
    explicit = _config(
        method="sentencepiece",
        model_type="unigram",
        byte_fallback=True,
        vocab_size=32_000,
        holdout_fraction=0.01,
        seed=42,
        special_tokens={"unk": "<unk>", "end_of_text": "<|endoftext|>", "pad": "<|pad|>"},
    )
    assert implicit.canonical_json() == explicit.canonical_json()
    assert implicit.tokenizer_id() == explicit.tokenizer_id()
    assert implicit.tokenizer_id().startswith("tok-")
    assert len(implicit.tokenizer_id()) == 4 + 16


def test_id_changes_with_the_request() -> None:
    base = _config(method="bpe", vocab_size=1000)
    others = [
        _config(method="bpe", vocab_size=1000, seed=43),
        _config(method="bpe", vocab_size=1001),
        _config(method="bpe", vocab_size=1000, corpus_file_id="cd" * 32),
        _config(method="sentencepiece", vocab_size=1000),
        _config(method="bpe", vocab_size=1000, nfkc=True),
    ]
    ids = {base.tokenizer_id(), *(o.tokenizer_id() for o in others)}
    assert len(ids) == 1 + len(others)


def test_canonical_json_is_sorted_and_complete() -> None:
    config = _config(method="bpe")
    parsed = json.loads(config.canonical_json())
    assert list(parsed) == sorted(parsed)
    assert parsed["min_frequency"] == 2
    assert parsed["special_tokens"] == {
        "end_of_text": "<|endoftext|>",
        "pad": "<|pad|>",
        "unk": None,
    }
    # A validated config survives a JSON round trip (the worker gets the payload as JSON).
    again = TokenizerTrainConfig.model_validate_json(config.model_dump_json())
    assert again.tokenizer_id() == config.tokenizer_id()
