"""Corpus to cached tokens once; splits by position with character counts; seeded windows;
the tokenizer folder loader.

Also holds the small corpus and tokenizer helpers the other training tests use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model_trainer.disk_cache import DiskCache
from model_trainer.errors import UserError
from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.tokenization.transformers_files import (
    SPECIAL_TOKENS_MAP_JSON,
    TOKENIZER_CONFIG_JSON,
    write_special_token_files,
)
from model_trainer.training import data
from model_trainer.training.data import (
    EVAL_SPLITS,
    Holdout,
    WindowSampler,
    eval_tokens,
    split_tokens,
    token_dtype,
    tokenize_corpus,
    validation_batches,
)

EOS, PAD = "<|endoftext|>", "<|pad|>"
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


def file_id(path: Path) -> str:
    """The corpus id a run is given: its Data Bank file id, the SHA-256 of its bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_bpe(folder: Path, text: str, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer folder as the tokenizer job writes one: `tokenizer.json`
    plus the files that give the special tokens their roles."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS, PAD],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    write_special_token_files(folder, {"bos_token": EOS, "eos_token": EOS, "pad_token": PAD})
    return folder


def token_cache(root: Path) -> DiskCache:
    """A worker's disk cache under `root`, with room for everything a test tokenizes."""
    return DiskCache(root / "cache", 1024**3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    root = tmp_path_factory.mktemp("data")
    text = write_corpus(root / "corpus.txt")
    return root / "corpus.txt", text, train_bpe(root / "tok", text)


def test_second_call_reuses_the_token_file(
    corpus: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, text, tok_dir = corpus
    tokenizer = load_tokenizer(tok_dir)
    cache = token_cache(tmp_path)
    with tokenize_corpus(path, tokenizer, "tok-1", cache, corpus_id=file_id(path)) as first:
        assert not first.from_cache
        assert first.meta.dtype == "uint16"
        assert first.tokens().dtype == np.uint16
        assert first.meta.n_chars == len(text)

    def no_encoding(texts: list[str]) -> list[list[int]]:
        raise AssertionError("re-tokenized although the cache holds the file")

    monkeypatch.setattr(type(tokenizer), "encode_batch", lambda self, texts: no_encoding(texts))
    with tokenize_corpus(path, tokenizer, "tok-1", cache, corpus_id=file_id(path)) as second:
        assert second.from_cache
        assert second.path == first.path
        assert second.meta == first.meta
        assert np.array_equal(second.tokens(), first.tokens())
    # One entry, complete: the tokens and their meta in one folder, no temp files anywhere.
    assert [p.name for p in (cache.root / data.TOKENS_SECTION).iterdir()] == [
        first.path.parent.name
    ]
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["meta.json", "tokens.bin"]
    assert not any((cache.root / ".scratch").rglob("*.*"))


def test_an_empty_corpus_leaves_no_token_file(
    corpus: tuple[Path, str, Path], tmp_path: Path
) -> None:
    _, _, tok_dir = corpus
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cache = token_cache(tmp_path)
    with (
        pytest.raises(UserError, match="is empty"),
        tokenize_corpus(empty, load_tokenizer(tok_dir), "tok-1", cache, corpus_id=file_id(empty)),
    ):
        pass
    assert cache.nbytes() == 0
    assert not any((cache.root / ".scratch").rglob("*.*"))


def test_dtype_follows_the_vocabulary_size(corpus: tuple[Path, str, Path], tmp_path: Path) -> None:
    assert token_dtype(65_536) == "uint16"
    assert token_dtype(65_537) == "uint32"
    path, _, tok_dir = corpus
    big = replace(load_tokenizer(tok_dir), vocab_size=100_000)
    cache = token_cache(tmp_path)
    small_tokenizer = load_tokenizer(tok_dir)
    with (
        tokenize_corpus(path, big, "big-vocab", cache, corpus_id=file_id(path)) as wide,
        tokenize_corpus(path, small_tokenizer, "small", cache, corpus_id=file_id(path)) as small,
    ):
        assert wide.meta.dtype == "uint32"
        assert wide.tokens().dtype == np.uint32
        assert np.array_equal(wide.tokens(), small.tokens())


def test_chunked_encoding_gives_the_tokens_of_the_whole_text(
    corpus: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, text, tok_dir = corpus
    tokenizer = load_tokenizer(tok_dir)
    monkeypatch.setattr(data, "CHUNK_CHARS", 500)  # many chunk boundaries
    monkeypatch.setattr(data, "CHUNKS_PER_BATCH", 3)
    whole = tokenizer.encode_batch([text])[0]
    with tokenize_corpus(
        path, tokenizer, "tok-1", token_cache(tmp_path), corpus_id=file_id(path)
    ) as cache:
        assert cache.tokens().tolist() == whole


def test_split_by_position_counts_characters(
    corpus: tuple[Path, str, Path], tmp_path: Path
) -> None:
    path, text, tok_dir = corpus
    tokenizer = load_tokenizer(tok_dir)
    with tokenize_corpus(
        path, tokenizer, "tok-1", token_cache(tmp_path), corpus_id=file_id(path)
    ) as cache:
        splits = split_tokens(cache, 0.1, tokenizer)
        tokens = cache.tokens()
    assert len(splits.train) == int(len(tokens) * 0.9)
    # Validation is the first half of the held-out tail, test the rest.
    assert len(splits.validation) == (len(tokens) - len(splits.train)) // 2
    parts = [splits.train, splits.validation, splits.test]
    assert np.array_equal(np.concatenate(parts), tokens)
    assert splits.train_chars + splits.validation_chars + splits.test_chars == len(text)
    assert text.endswith(tokenizer.decode(splits.test.tolist()))
    assert splits.validation_chars == len(tokenizer.decode(splits.validation.tolist()))
    assert splits.test_chars == len(tokenizer.decode(splits.test.tolist()))


@pytest.mark.parametrize("n_tokens", [0, 1, 2, 3, 10, 11, 1000, 12_345])
@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.25, 0.5])
def test_validation_and_test_do_not_overlap_and_cover_the_holdout(
    n_tokens: int, fraction: float
) -> None:
    holdout = Holdout.of(n_tokens, fraction)
    v_start, v_end = holdout.bounds("validation")
    t_start, t_end = holdout.bounds("test")
    assert v_start == int(n_tokens * (1 - fraction))  # training keeps [0, v_start)
    assert v_end == t_start  # adjacent, never overlapping
    assert t_end == n_tokens  # together exactly the held-out tail
    assert 0 <= t_end - t_start - (v_end - v_start) <= 1  # halves (test takes an odd one)
    assert holdout.bounds("all") == (0, n_tokens)


def test_eval_tokens_start_one_early_so_every_split_token_is_scored() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    holdout = Holdout.of(len(tokens), 0.2)  # train 0..79, validation 80..89, test 90..99
    scored = {split: eval_tokens(tokens, holdout, split).tolist() for split in EVAL_SPLITS}
    # The first token only gives context; the rest are the split's, each scored once.
    assert scored["validation"] == list(range(79, 90))
    assert scored["test"] == list(range(89, 100))
    assert scored["all"] == list(range(100))
    assert set(scored["validation"][1:]).isdisjoint(scored["test"][1:])


def test_the_loader_reads_the_special_tokens_from_the_folder_files(tmp_path: Path) -> None:
    folder = train_bpe(tmp_path / "tok", "some text to learn a few merges from\n" * 20)
    # Roles deliberately not the usual spellings' guesses: the files decide, not the names.
    write_special_token_files(folder, {"eos_token": PAD, "pad_token": EOS, "unk_token": EOS})
    handle = load_tokenizer(folder)
    assert handle.eos_id == handle.token_to_id(PAD)
    assert handle.pad_id == handle.token_to_id(EOS)
    assert handle.unk_id == handle.token_to_id(EOS)
    assert handle.bos_id is None
    # transformers' own form ({"content": ...}) in tokenizer_config.json wins over the map.
    config = {"eos_token": {"content": EOS, "special": True}, "pad_token": PAD}
    (folder / TOKENIZER_CONFIG_JSON).write_text(json.dumps(config))
    handle = load_tokenizer(folder)
    assert (handle.eos_id, handle.pad_id) == (handle.token_to_id(EOS), handle.token_to_id(PAD))


def test_the_loader_refuses_a_folder_without_special_token_roles(tmp_path: Path) -> None:
    folder = train_bpe(tmp_path / "tok", "some text to learn a few merges from\n" * 20)
    (folder / TOKENIZER_CONFIG_JSON).unlink()
    (folder / SPECIAL_TOKENS_MAP_JSON).write_text(json.dumps({"eos_token": EOS}))
    with pytest.raises(UserError, match="does not name its pad_token") as missing_pad:
        load_tokenizer(folder)
    assert SPECIAL_TOKENS_MAP_JSON in str(missing_pad.value)
    (folder / SPECIAL_TOKENS_MAP_JSON).unlink()
    with pytest.raises(UserError, match="eos_token and pad_token"):
        load_tokenizer(folder)
    (folder / SPECIAL_TOKENS_MAP_JSON).write_text(
        json.dumps({"eos_token": "<|missing|>", "pad_token": PAD})
    )
    with pytest.raises(UserError, match="not in the vocabulary"):
        load_tokenizer(folder)


def test_windows_are_seeded_and_resumable(corpus: tuple[Path, str, Path], tmp_path: Path) -> None:
    path, _, tok_dir = corpus
    tokenizer = load_tokenizer(tok_dir)
    with tokenize_corpus(
        path, tokenizer, "tok-1", token_cache(tmp_path), corpus_id=file_id(path)
    ) as cache:
        tokens = cache.tokens()
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
