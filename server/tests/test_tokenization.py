"""Training tokenizers for real on small corpora, and loading them the ways users will.

Each method trains once per module (a few hundred kilobytes, vocabularies of hundreds);
the artifacts are then opened with `tokenizers`, `sentencepiece` and `transformers`.
"""

from __future__ import annotations

import json
import os
import random
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sentencepiece as spm

from model_trainer.errors import UserError
from model_trainer.tokenization import (
    TokenizerTrainConfig,
    TokenizerTrainResult,
    TrainingStopped,
    load_tokenizer,
    train_tokenizer,
)
from model_trainer.tokenization.config import Method
from model_trainer.tokenization.corpus import HoldoutSplitter, read_line_chunks

if TYPE_CHECKING:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "tinyshakespeare.txt"
CORPUS_ID = "0" * 64
EOT, PAD, UNK = "<|endoftext|>", "<|pad|>", "<unk>"
TRICKY = [
    "plain text",
    " leading space",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnewlines\n\nblank line above",
    "unicode: café naïve größe 東京 🙂 \u200b zero-width",
    "    indented code = {'a': [1, 2, 3]}",
    "",
]

Train = Callable[..., tuple[TokenizerTrainResult, Path]]


def write_corpus(path: Path, lines: int = 3000, seed: int = 0) -> Path:
    """Sentences over a small made-up vocabulary, with some indentation and non-ASCII words."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "in", "est", "qu", "ph"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(400)]
    words += ["café", "naïve", "東京", "größe", "smörgåsbord", "🙂"]
    out = []
    for _ in range(lines):
        indent = " " * rng.choice([0, 0, 0, 2, 4])
        sentence = " ".join(rng.choices(words, k=rng.randint(4, 14)))
        out.append(indent + sentence.capitalize() + rng.choice([".", "!", "?", ",", ":"]))
        if rng.random() < 0.05:
            out.append("")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Train:
    """Train (once per distinct request in this module) and return the result and folder."""
    done: dict[str, tuple[TokenizerTrainResult, Path]] = {}

    def run(**fields: object) -> tuple[TokenizerTrainResult, Path]:
        config = TokenizerTrainConfig.model_validate(
            {"corpus_file_id": CORPUS_ID, "vocab_size": 600, "holdout_fraction": 0.05, **fields}
        )
        key = config.canonical_json()
        if key not in done:
            out = tmp_path_factory.mktemp("tok")
            result = train_tokenizer(config, corpus, out, threads=2, sample_bytes=10**9)
            done[key] = (result, out)
        return done[key]

    return run


def holdout_lines(corpus: Path, seed: int = 42, fraction: float = 0.05) -> list[str]:
    splitter = HoldoutSplitter(seed, fraction)
    return [
        line
        for chunk in read_line_chunks(corpus)
        for line, held in zip(
            chunk.lines, splitter.holdout_mask(chunk.first_line, len(chunk.lines)), strict=True
        )
        if held
    ]


def _transformers() -> tuple[type[AutoTokenizer], type[PreTrainedTokenizerFast]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    return AutoTokenizer, PreTrainedTokenizerFast


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "bpe"},
        {"method": "sentencepiece", "model_type": "unigram"},
        {"method": "sentencepiece", "model_type": "bpe"},
    ],
    ids=["bpe", "spm-unigram", "spm-bpe"],
)
def test_trains_and_writes_a_complete_folder(train: Train, fields: dict[str, object]) -> None:
    result, folder = train(**fields)
    expected = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    expected |= {"manifest.json"}
    if fields["method"] == "sentencepiece":
        expected.add("tokenizer.model")
    assert {p.name for p in folder.iterdir()} == expected  # the work folder is gone
    assert set(result.files) == expected
    assert result.vocab_size == 600
    assert result.tokenizer_id == result.config.tokenizer_id()

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "tokenizer"
    assert manifest["tokenizer_id"] == result.tokenizer_id
    assert manifest["config"] == result.config.model_dump(mode="json")
    assert manifest["corpus"]["sha256"] == result.corpus.sha256
    assert manifest["library_versions"]["tokenizers"]
    assert set(manifest["timings"]) >= {"split_seconds", "train_seconds", "stats_seconds"}
    assert (manifest["sampling"] is None) == (fields["method"] == "bpe")

    handle = load_tokenizer(folder)
    assert handle.vocab_size == 600
    if fields["method"] == "bpe":
        assert (handle.eos_id, handle.pad_id, handle.unk_id) == (0, 1, None)
        assert result.special_token_ids == {"bos_token": 0, "eos_token": 0, "pad_token": 1}
    else:
        assert (handle.unk_id, handle.eos_id, handle.pad_id) == (0, 1, 2)
        assert result.special_token_ids["unk_token"] == 0


def test_bpe_round_trips_exactly(train: Train, corpus: Path) -> None:
    _, folder = train(method="bpe")
    handle = load_tokenizer(folder)
    texts = holdout_lines(corpus)[:300] + TRICKY + ["\n".join(TRICKY)]
    for text, ids in zip(texts, handle.encode_batch(texts), strict=True):
        assert handle.decode(ids) == text
    # The special tokens are single tokens in text too, and decode back.
    ids = handle.encode_batch(["a<|endoftext|>b"])[0]
    assert handle.eos_id in ids
    assert handle.decode(ids) == "a<|endoftext|>b"


def test_bpe_loads_in_transformers(train: Train, corpus: Path) -> None:
    auto_tokenizer, fast_tokenizer = _transformers()
    _, folder = train(method="bpe")
    auto = auto_tokenizer.from_pretrained(str(folder))
    assert (auto.eos_token, auto.eos_token_id) == ("<|endoftext|>", 0)
    assert (auto.bos_token, auto.pad_token, auto.pad_token_id) == ("<|endoftext|>", "<|pad|>", 1)
    assert auto.unk_token is None
    sample = holdout_lines(corpus)[:50] + TRICKY
    handle = load_tokenizer(folder)
    for text, ids in zip(sample, handle.encode_batch(sample), strict=True):
        assert auto(text)["input_ids"] == ids  # nothing added around the text
        assert auto.decode(ids) == text

    fast = fast_tokenizer(
        tokenizer_file=str(folder / "tokenizer.json"),
        **json.loads((folder / "special_tokens_map.json").read_text()),
    )
    assert (fast.eos_token_id, fast.pad_token_id) == (0, 1)
    assert fast.decode(fast("  x\ny")["input_ids"]) == "  x\ny"
    assert fast_tokenizer.from_pretrained(str(folder)).pad_token_id == 1


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_files_agree_and_round_trip(
    train: Train, corpus: Path, model_type: str
) -> None:
    _, folder = train(method="sentencepiece", model_type=model_type)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert sp.get_piece_size() == 600
    assert (sp.unk_id(), sp.eos_id(), sp.pad_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert sp.id_to_piece(1) == "<|endoftext|>"

    handle = load_tokenizer(folder)
    texts = holdout_lines(corpus)[:300] + TRICKY
    differing = 0
    for text, ids in zip(texts, handle.encode_batch(texts), strict=True):
        reference = sp.encode(text)
        differing += ids != reference
        # No normalization configured: both round trip exactly (byte fallback, kept spaces).
        assert handle.decode(ids) == text
        assert sp.decode(reference) == text
    # Unigram may break exact score ties differently; the text is the same either way.
    assert differing <= len(texts) // 100


def test_sentencepiece_loads_in_transformers(train: Train, corpus: Path) -> None:
    auto_tokenizer, fast_tokenizer = _transformers()
    _, folder = train(method="sentencepiece")
    auto = auto_tokenizer.from_pretrained(str(folder))
    assert (auto.unk_token_id, auto.eos_token_id, auto.pad_token_id) == (0, 1, 2)
    assert auto.eos_token == auto.bos_token == EOT
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in [*holdout_lines(corpus)[:50], *TRICKY]:
        ids = auto(text)["input_ids"]
        assert auto.decode(ids) == text
        assert sp.decode(ids) == text
    fast = fast_tokenizer(tokenizer_file=str(folder / "tokenizer.json"), unk_token=UNK)
    assert fast.unk_token_id == 0


def test_sentencepiece_round_trips_up_to_normalization(train: Train) -> None:
    _, folder = train(method="sentencepiece", nfkc=True, lowercase=True, vocab_size=450)
    handle = load_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in [
        _fullwidth("Full width") + " and the \ufb01 ligature",
        "MiXeD CaSe Größe",
        *TRICKY,
    ]:
        normalized = unicodedata.normalize("NFKC", text).casefold()
        ids = handle.encode_batch([text])[0]
        assert ids == sp.encode(text)
        assert handle.decode(ids) == sp.decode(ids)
        assert handle.decode(ids).casefold() == normalized.replace("ß", "ss")


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def test_stats_are_sane(train: Train, corpus: Path) -> None:
    held = holdout_lines(corpus)
    for fields in ({"method": "bpe"}, {"method": "sentencepiece"}):
        result, _ = train(**fields)
        stats = result.stats
        assert stats is not None
        assert result.corpus.holdout_lines == stats.holdout_lines == len(held)
        assert stats.holdout_chars == sum(map(len, held))
        assert stats.holdout_words == sum(len(line.split()) for line in held)
        assert 0.05 < stats.tokens_per_char < 1.0
        assert 1.0 <= stats.tokens_per_word < 6.0
        assert stats.chars_per_token == pytest.approx(1 / stats.tokens_per_char)
        assert stats.unknown_token_rate == 0.0
        assert 0.0 < stats.vocab_used_fraction <= 1.0
        assert stats.vocab_used <= result.vocab_size
        assert not stats.truncated
    bpe, _ = train(method="bpe")
    assert bpe.stats is not None
    assert bpe.stats.character_coverage == 1.0
    assert bpe.stats.byte_fallback_rate == 0.0


def test_stats_count_what_sentencepiece_cannot_cover(train: Train) -> None:
    # Without byte fallback, characters outside the vocabulary become the unknown piece.
    result, folder = train(method="sentencepiece", byte_fallback=False, vocab_size=300)
    stats = result.stats
    assert stats is not None
    assert stats.byte_fallback_rate == 0.0
    handle = load_tokenizer(folder)
    ids = handle.encode_batch(["Ω never seen"])[0]
    assert handle.unk_id in ids
    assert 0.99 < stats.character_coverage <= 1.0


def test_a_character_only_the_holdout_has_is_not_covered(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", lines=1500)
    lines = corpus.read_text(encoding="utf-8").split("\n")[:-1]
    held = HoldoutSplitter(42, 0.1).holdout_mask(0, len(lines))
    corpus.write_text(
        "".join(f"{line} Ж\n" if h else f"{line}\n" for line, h in zip(lines, held, strict=True)),
        encoding="utf-8",
    )
    config = TokenizerTrainConfig(
        method="sentencepiece", vocab_size=400, corpus_file_id=CORPUS_ID, holdout_fraction=0.1
    )
    result = train_tokenizer(config, corpus, tmp_path / "out", threads=1, sample_bytes=10**9)
    stats = result.stats
    assert stats is not None
    assert stats.uncovered_chars == ["Ж"]
    # Ж is 2 of ~3 tokens per line that has it (space piece and two UTF-8 bytes).
    assert 0.0 < stats.byte_fallback_rate < 0.2
    missing = stats.holdout_lines / stats.holdout_chars  # one Ж per holdout line
    assert stats.character_coverage == pytest.approx(1.0 - missing)


def test_sentencepiece_samples_large_corpora(tmp_path: Path, corpus: Path) -> None:
    config = TokenizerTrainConfig(
        method="sentencepiece", vocab_size=400, corpus_file_id=CORPUS_ID, holdout_fraction=0.0
    )
    size = corpus.stat().st_size
    result = train_tokenizer(config, corpus, tmp_path / "out", threads=1, sample_bytes=size // 4)
    sampling = result.sampling
    assert sampling is not None
    assert sampling.sampled
    assert sampling.input_sentence_size is not None
    assert 0 < sampling.input_sentence_size < result.corpus.train_lines // 3
    assert result.stats is None  # no holdout, no stats
    assert result.corpus.holdout_lines == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sampling"]["sampled"] is True


def test_bpe_without_holdout_trains_on_the_corpus_itself(tmp_path: Path, corpus: Path) -> None:
    config = TokenizerTrainConfig(
        method="bpe", vocab_size=400, corpus_file_id=CORPUS_ID, holdout_fraction=0.0
    )
    result = train_tokenizer(config, corpus, tmp_path / "out", threads=1, sample_bytes=10**9)
    assert result.vocab_size == 400
    assert result.stats is None
    assert result.corpus.train_lines == result.corpus.lines


@pytest.mark.parametrize("method", ["bpe", "sentencepiece"])
def test_vocab_too_large_for_the_corpus_says_what_to_change(tmp_path: Path, method: Method) -> None:
    corpus = write_corpus(tmp_path / "small.txt", lines=60)
    config = TokenizerTrainConfig(method=method, vocab_size=20_000, corpus_file_id=CORPUS_ID)
    with pytest.raises(UserError, match=r"too small for vocab_size 20000.*Set vocab_size to \d+"):
        train_tokenizer(config, corpus, tmp_path / "out", threads=1, sample_bytes=10**9)


def test_bad_corpora_fail_before_training(tmp_path: Path) -> None:
    config = TokenizerTrainConfig(method="sentencepiece", vocab_size=300, corpus_file_id=CORPUS_ID)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("naïve\n".encode("latin-1"))
    with pytest.raises(UserError, match="byte offset 2 "):
        train_tokenizer(config, bad, tmp_path / "a", threads=1, sample_bytes=10**9)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        train_tokenizer(config, empty, tmp_path / "b", threads=1, sample_bytes=10**9)


@pytest.mark.parametrize(
    ("method", "stop_at_check", "phase"),
    # The small corpus is one chunk. Checks come from the scan, then (SentencePiece only)
    # the trainer's input, raised inside the library's training call, then between phases.
    [
        ("bpe", 1, "corpus scan"),
        ("bpe", 2, "training"),
        ("bpe", 3, "holdout stats"),
        ("sentencepiece", 1, "corpus scan"),
        ("sentencepiece", 2, "training input"),
        ("sentencepiece", 3, "training"),
        ("sentencepiece", 4, "holdout stats"),
    ],
)
def test_should_stop_interrupts_the_job(
    tmp_path: Path, corpus: Path, method: Method, stop_at_check: int, phase: str
) -> None:
    checks = 0

    def should_stop() -> bool:
        nonlocal checks
        checks += 1
        return checks >= stop_at_check

    config = TokenizerTrainConfig(method=method, vocab_size=400, corpus_file_id=CORPUS_ID)
    out = tmp_path / "out"
    with pytest.raises(TrainingStopped) as caught:
        train_tokenizer(config, corpus, out, threads=1, sample_bytes=10**9, should_stop=should_stop)
    assert caught.value.phase == phase
    assert list(out.iterdir()) == []  # no artifact files, and the work folder is removed


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared/corpora/tinyshakespeare.txt absent")
def test_tinyshakespeare_holdout_round_trips(tmp_path: Path) -> None:
    for method in ("bpe", "sentencepiece"):
        config = TokenizerTrainConfig(method=method, vocab_size=1000, corpus_file_id=CORPUS_ID)
        out = tmp_path / method
        result = train_tokenizer(config, SHAKESPEARE, out, threads=2, sample_bytes=10**9)
        assert result.stats is not None
        assert 0.2 < result.stats.tokens_per_char < 0.5
        held = holdout_lines(SHAKESPEARE, fraction=0.01)
        assert len(held) == result.corpus.holdout_lines
        handle = load_tokenizer(out)
        for text, ids in zip(held, handle.encode_batch(held), strict=True):
            assert handle.decode(ids) == text
