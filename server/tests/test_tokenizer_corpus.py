"""Reading a corpus: UTF-8 errors with their offset, empty corpora, the holdout split, and
the check every job makes before using one (`check_corpus`)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization import corpus
from model_trainer.tokenization.corpus import (
    CHUNK_BYTES,
    HoldoutSplitter,
    check_corpus,
    iter_train_batches,
    read_line_chunks,
    scan_corpus,
)


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    return path


def _scan(path: Path, fraction: float = 0.0, seed: int = 1) -> corpus.CorpusScan:
    return scan_corpus(path, HoldoutSplitter(seed, fraction), path.with_suffix(".holdout"))


def test_non_utf8_names_the_byte_offset_and_line(tmp_path: Path) -> None:
    good = "héllo wörld\n" * 3000  # several chunks' worth with a small chunk size below
    bad_offset = len(good.encode())
    path = _write(tmp_path, good.encode() + b"caf\xe9 au lait\nmore\n")
    with pytest.raises(UserError) as caught:
        _scan(path)
    message = caught.value.message
    assert caught.value.code == ErrorCode.DATA_INVALID
    assert f"byte offset {bad_offset + 3}" in message
    assert "line 3001" in message
    assert "0xe9" in message
    assert "UTF-8" in message
    # The offset does not depend on how the file is chunked.
    with pytest.raises(UserError) as small_chunks:
        for _ in read_line_chunks(path, chunk_bytes=1000):
            pass
    assert f"byte offset {bad_offset + 3}" in small_chunks.value.message


def test_truncated_character_at_the_end_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, b"ok\n" + "é".encode()[:1])
    with pytest.raises(UserError, match="byte offset 3 "):
        _scan(path)


@pytest.mark.parametrize("data", [b"", b"\n\n", b"  \n\t\n   "])
def test_empty_corpus_is_the_users_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UserError, match="the corpus is empty"):
        _scan(_write(tmp_path, data))


def test_corpus_entirely_in_the_holdout_is_the_users_error(tmp_path: Path) -> None:
    path = _write(tmp_path, b"one line only\n")
    seed = next(s for s in range(1000) if HoldoutSplitter(s, 0.5).holdout_mask(0, 1)[0])
    with pytest.raises(UserError, match="lower holdout_fraction"):
        _scan(path, fraction=0.5, seed=seed)


def test_overlong_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 5000)
    path = _write(tmp_path, b"short\n" + b"x" * 20_000 + b"\n")
    with pytest.raises(UserError, match="line 2 of the corpus is longer than"):
        for _ in read_line_chunks(path, chunk_bytes=1000):
            pass


def test_lines_split_on_newline_only_and_last_line_kept(tmp_path: Path) -> None:
    path = _write(tmp_path, "a\r\nb\x0bc\u2028d\n\nlast".encode())
    lines = [line for chunk in read_line_chunks(path) for line in chunk.lines]
    assert lines == ["a\r", "b\x0bc\u2028d", "", "last"]


def test_holdout_is_deterministic_and_about_the_right_size(tmp_path: Path) -> None:
    count = 20_000
    path = _write(tmp_path, "".join(f"line {i}\n" for i in range(count)).encode())
    scan = _scan(path, fraction=0.1, seed=7)
    assert scan.lines == count
    assert abs(scan.holdout_lines - count * 0.1) < 4 * (count * 0.1 * 0.9) ** 0.5
    assert scan.train_lines + scan.holdout_lines == count
    holdout = path.with_suffix(".holdout").read_text().splitlines()
    assert len(holdout) == scan.holdout_lines

    # Same seed, same lines, however the file is chunked; the train batches are the rest.
    splitter = HoldoutSplitter(7, 0.1)
    again = [
        line
        for chunk in read_line_chunks(path, chunk_bytes=777)
        for line, held in zip(
            chunk.lines, splitter.holdout_mask(chunk.first_line, len(chunk.lines)), strict=True
        )
        if held
    ]
    assert again == holdout
    train = [line for batch in iter_train_batches(path, splitter) for line in batch]
    assert len(train) == scan.train_lines
    assert set(train).isdisjoint(holdout)

    # Another seed picks other lines; fraction 0 picks none.
    other = _scan(path, fraction=0.1, seed=8)
    other_lines = path.with_suffix(".holdout").read_text().splitlines()
    assert other.holdout_lines > 0
    assert set(other_lines) != set(holdout)
    assert _scan(path, fraction=0.0).holdout_lines == 0


def test_scan_can_write_the_train_lines(tmp_path: Path) -> None:
    lines = [f"line {i} é" for i in range(5000)] + ["", "  ", "last, no newline"]
    path = _write(tmp_path, "\n".join(lines).encode())
    train_path = tmp_path / "train.txt"
    splitter = HoldoutSplitter(3, 0.2)
    scan = scan_corpus(path, splitter, tmp_path / "holdout.txt", train_path)
    held = splitter.holdout_mask(0, len(lines))
    expected = [line for line, h in zip(lines, held, strict=True) if not h]
    written = train_path.read_bytes().decode()
    assert written.split("\n")[: len(expected)] == expected
    assert written.rstrip("\n").count("\n") + 1 == len(expected) == scan.train_lines
    holdout = (tmp_path / "holdout.txt").read_text().split("\n")[:-1]
    assert holdout == [line for line, h in zip(lines, held, strict=True) if h]


def test_scan_reports_hash_and_sizes(tmp_path: Path) -> None:
    import hashlib

    data = "één\ntwee\n\ndrie".encode()
    scan = _scan(_write(tmp_path, data))
    assert scan.sha256 == hashlib.sha256(data).hexdigest()
    assert scan.size_bytes == len(data)
    assert scan.lines == 4
    assert scan.train_bytes == len(data)


# -- check_corpus: what every job checks before tokenizing or training --------------------


def test_check_passes_a_real_corpus_and_reports_it(tmp_path: Path) -> None:
    lines = [f"line {i}: naïve café 日本語" for i in range(20_000)] + ["", "last\r"]
    data = "\n".join(lines).encode()  # the last line has no "\n"
    checked = check_corpus(_write(tmp_path, data), max_line_bytes=1024, chunk_bytes=4096)
    assert checked.size_bytes == len(data)
    assert checked.lines == len(lines)
    assert checked.longest_line_bytes == max(len(line.encode()) for line in lines)


def test_check_refuses_an_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"the corpus is empty \(0 bytes\)") as caught:
        check_corpus(_write(tmp_path, b""), max_line_bytes=1024)
    assert caught.value.code == ErrorCode.DATA_INVALID


@pytest.mark.parametrize("data", [b"\n", b"\n\n\n", b"  \n\t\n   ", "\u3000\n\u00a0 \r\n".encode()])
def test_check_refuses_a_whitespace_only_corpus(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UserError, match=f"its {len(data)} bytes are all whitespace") as caught:
        check_corpus(_write(tmp_path, data), max_line_bytes=1024)
    assert caught.value.code == ErrorCode.DATA_INVALID


def test_check_refuses_non_utf8_naming_the_byte(tmp_path: Path) -> None:
    good = "ok line\n" * 1000
    path = _write(tmp_path, good.encode() + b"caf\xe9\n")
    for chunk_bytes in (100, 4096, CHUNK_BYTES):
        with pytest.raises(UserError, match="not valid UTF-8") as caught:
            check_corpus(path, max_line_bytes=1024, chunk_bytes=chunk_bytes)
        assert caught.value.code == ErrorCode.DATA_INVALID
        assert f"byte offset {len(good) + 3} (line 1001)" in caught.value.message


def test_check_refuses_a_huge_file_without_line_breaks(tmp_path: Path) -> None:
    path = _write(tmp_path, b"word " * 1_000_000)  # 5 MB, one line
    with pytest.raises(UserError, match="line 1 of the corpus is longer than 1 KiB") as caught:
        check_corpus(path, max_line_bytes=1024)
    assert caught.value.code == ErrorCode.DATA_INVALID
    assert "add line breaks" in caught.value.message


@pytest.mark.parametrize("chunk_bytes", [512, 4096, CHUNK_BYTES])
def test_check_refuses_one_long_line_among_short_ones(tmp_path: Path, chunk_bytes: int) -> None:
    short = b"a short line\n" * 50
    path = _write(tmp_path, short + b"x" * 1025 + b"\n" + short)
    with pytest.raises(UserError, match="line 51 of the corpus is longer than 1 KiB"):
        check_corpus(path, max_line_bytes=1024, chunk_bytes=chunk_bytes)
    exactly = _write(tmp_path, short + b"x" * 1024 + b"\n" + short)
    assert check_corpus(exactly, max_line_bytes=1024, chunk_bytes=chunk_bytes).lines == 101


def test_check_streams_the_file(tmp_path: Path) -> None:
    """Memory stays near chunk + line limit, for a big corpus and for one without breaks."""
    good = _write(tmp_path, b"a line of ordinary text, like most\n" * 1_000_000)  # 35 MB
    flat = tmp_path / "flat.txt"
    flat.write_bytes(b"x" * (32 << 20))
    for path in (good, flat):
        tracemalloc.start()
        try:
            check_corpus(path, max_line_bytes=1 << 20, chunk_bytes=1 << 20)
        except UserError:
            assert path == flat
        else:
            assert path == good
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 12 << 20, (path.name, peak)
