"""Corpus to cached tokens once; splits by position with character counts; seeded windows.

Also holds the small corpus and tokenizer helpers the other training tests use.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model_trainer.training import data
from model_trainer.training.data import (
    WindowSampler,
    split_tokens,
    token_dtype,
    tokenize_corpus,
    validation_batches,
)
from model_trainer.training.tokenizer_folder import load_tokenizer_folder

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "then"]


def write_corpus(path: Path, lines: int = 1500, seed: int = 0) -> str:
    """A small, repetitive corpus (easy to learn) with blank lines and one non-ASCII word."""
    rng = np.random.default_rng(seed)
    text = "".join(
        " ".join(str(w) for w in rng.choice(WORDS, size=8)) + (".\n\n" if i % 7 == 0 else ".\n")
        for i in range(lines)
    )
    text += "Fin, café.\n"
    path.write_text(text, encoding="utf-8")
    return text


def train_bpe(folder: Path, text: str, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer saved as `folder/tokenizer.json`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    root = tmp_path_factory.mktemp("data")
    text = write_corpus(root / "corpus.txt")
    return root / "corpus.txt", text, train_bpe(root / "tok", text)


def test_second_call_reuses_the_token_file(
    corpus: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, text, tok_dir = corpus
    tokenizer = load_tokenizer_folder(tok_dir)
    first = tokenize_corpus(path, tokenizer, "tok-1", tmp_path)
    assert not first.from_cache
    assert first.meta.dtype == "uint16"
    assert first.tokens().dtype == np.uint16
    assert first.meta.n_chars == len(text)

    def no_encoding(texts: list[str]) -> list[list[int]]:
        raise AssertionError("re-tokenized although the cache holds the file")

    monkeypatch.setattr(type(tokenizer), "encode_batch", lambda self, texts: no_encoding(texts))
    second = tokenize_corpus(path, tokenizer, "tok-1", tmp_path)
    assert second.from_cache
    assert second.path == first.path
    assert np.array_equal(second.tokens(), first.tokens())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_dtype_follows_the_vocabulary_size(corpus: tuple[Path, str, Path], tmp_path: Path) -> None:
    assert token_dtype(65_536) == "uint16"
    assert token_dtype(65_537) == "uint32"
    path, _, tok_dir = corpus
    big = replace(load_tokenizer_folder(tok_dir), vocab_size=100_000)
    cache = tokenize_corpus(path, big, "big-vocab", tmp_path)
    assert cache.meta.dtype == "uint32"
    assert cache.tokens().dtype == np.uint32
    small = tokenize_corpus(path, load_tokenizer_folder(tok_dir), "small-vocab", tmp_path)
    assert np.array_equal(cache.tokens(), small.tokens())


def test_chunked_encoding_gives_the_tokens_of_the_whole_text(
    corpus: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, text, tok_dir = corpus
    tokenizer = load_tokenizer_folder(tok_dir)
    monkeypatch.setattr(data, "CHUNK_CHARS", 500)  # many chunk boundaries
    monkeypatch.setattr(data, "CHUNKS_PER_BATCH", 3)
    cache = tokenize_corpus(path, tokenizer, "tok-1", tmp_path)
    whole = tokenizer.encode_batch([text])[0]
    assert cache.tokens().tolist() == whole


def test_split_by_position_counts_characters(
    corpus: tuple[Path, str, Path], tmp_path: Path
) -> None:
    path, text, tok_dir = corpus
    tokenizer = load_tokenizer_folder(tok_dir)
    cache = tokenize_corpus(path, tokenizer, "tok-1", tmp_path)
    splits = split_tokens(cache, 0.1, tokenizer)
    tokens = cache.tokens()
    assert len(splits.train) == int(len(tokens) * 0.9)
    assert np.array_equal(np.concatenate([splits.train, splits.validation]), tokens)
    assert splits.train_chars + splits.validation_chars == len(text)
    assert text.endswith(tokenizer.decode(splits.validation.tolist()))
    assert splits.validation_chars == len(tokenizer.decode(splits.validation.tolist()))


def test_windows_are_seeded_and_resumable(corpus: tuple[Path, str, Path], tmp_path: Path) -> None:
    path, _, tok_dir = corpus
    tokenizer = load_tokenizer_folder(tok_dir)
    tokens = tokenize_corpus(path, tokenizer, "tok-1", tmp_path).tokens()
    a = WindowSampler(tokens, seq_len=16, batch_size=4, seed=7)
    b = WindowSampler(tokens, seq_len=16, batch_size=4, seed=7)
    x, y = a.next_batch()
    assert x.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(b.next_batch()[0], x)
    saved = a.state_dict()
    expected = a.next_batch()[0]
    b.load_state_dict(saved)
    assert torch.equal(b.next_batch()[0], expected)

    fixed = validation_batches(tokens, seq_len=16, batch_size=4, n_batches=3)
    assert len(fixed) == 3
    again = validation_batches(tokens, seq_len=16, batch_size=4, n_batches=3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(fixed, again, strict=True))
