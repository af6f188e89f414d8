"""Corpora in JSONL, CSV and Parquet (tokenization/corpus_formats.py), read through `datasets`
offline from small files written here; the requests' corpus_format and text_field."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from model_trainer.api.schemas import TrainRequest
from model_trainer.errors import ErrorCode, UserError
from model_trainer.jobs.payloads import EvaluateRequest
from model_trainer.settings import AppSettings
from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.tokenization.corpus_formats import (
    StructuredFormat,
    iter_documents,
    sniff_format,
    text_corpus_id,
    write_text_corpus,
)

FILE_ID = "a" * 64
NO_CAP = AppSettings().corpus_max_text_bytes
MiB = 1024**2
DOCS = ["first record", "a record\nof two lines", "third, with a comma", "42"]


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _parquet(path: Path, table: Mapping[str, Sequence[object]], row_group_size: int = 2) -> Path:
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)
    return path


def _csv(path: Path) -> Path:
    rows = ["id,text\n", *(f'{i},"{d}"\n' for i, d in enumerate(DOCS))]
    path.write_text("".join(rows), encoding="utf-8")
    return path


def _docs(path: Path, fmt: StructuredFormat, field: str = "text") -> list[str]:
    return list(iter_documents(path, fmt, field, path.parent / "datasets-cache"))


def _user_error(path: Path, fmt: StructuredFormat, field: str = "text") -> UserError:
    with pytest.raises(UserError) as caught:
        _docs(path, fmt, field)
    return caught.value


def test_each_format_gives_its_documents_in_order(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "c.jsonl", [{"id": i, "text": d} for i, d in enumerate(DOCS)])
    parquet = _parquet(tmp_path / "c.parquet", {"id": [0, 1, 2, 3], "text": DOCS})
    assert _docs(jsonl, "jsonl") == DOCS
    assert _docs(parquet, "parquet") == DOCS
    # CSV: a column of digits stays text, and quoted newlines and commas are kept.
    assert _docs(_csv(tmp_path / "c.csv"), "csv") == DOCS
    assert _docs(_csv(tmp_path / "c.csv"), "csv", "id") == ["0", "1", "2", "3"]


def test_auto_recognises_parquet_and_json_lines_and_leaves_text_alone(tmp_path: Path) -> None:
    assert sniff_format(_parquet(tmp_path / "c", {"text": ["x"]})) == "parquet"
    jsonl = tmp_path / "j"
    jsonl.write_text('\n  \n{"text": "x"}\n', encoding="utf-8")
    assert sniff_format(jsonl) == "jsonl"
    for text in ("plain text\n", "{braces} open this line\n", "[1, 2]\n", "", "{}x\n"):
        path = tmp_path / "t"
        path.write_text(text, encoding="utf-8")
        assert sniff_format(path) == "text", text
    assert sniff_format(_csv(tmp_path / "c.csv")) == "text"  # CSV is asked for, never guessed


def test_null_values_are_skipped_and_missing_json_keys_are_nulls(tmp_path: Path) -> None:
    jsonl = _jsonl(
        tmp_path / "c.jsonl", [{"text": "a"}, {"other": 1}, {"text": None}, {"text": "b"}]
    )
    parquet = _parquet(tmp_path / "c.parquet", {"text": ["a", None, "b"]})
    assert _docs(jsonl, "jsonl") == ["a", "b"]
    out = write_text_corpus(
        parquet, "parquet", "text", tmp_path / "out.txt", tmp_path / "ds", NO_CAP
    )
    assert (out.documents, out.skipped_nulls) == (2, 1)


def test_text_file_separates_records_by_newlines_and_keeps_their_own(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "c.jsonl", [{"text": d} for d in [*DOCS, "ends with one\n"]])
    out = write_text_corpus(
        jsonl, "jsonl", "text", tmp_path / "t" / "out.txt", tmp_path / "ds", NO_CAP
    )
    assert out.path.read_text(encoding="utf-8") == "\n".join(DOCS) + "\nends with one\n"
    assert out.documents == 5 and out.size_bytes == out.path.stat().st_size
    assert [p.name for p in out.path.parent.iterdir()] == ["out.txt"]  # no temp file left


def test_an_unknown_field_names_itself_and_the_columns_found(tmp_path: Path) -> None:
    cases: list[tuple[Path, StructuredFormat]] = [
        (_jsonl(tmp_path / "c.jsonl", [{"body": "x", "id": 1}]), "jsonl"),
        (_parquet(tmp_path / "c.parquet", {"body": ["x"], "id": [1]}), "parquet"),
    ]
    for path, fmt in cases:
        error = _user_error(path, fmt, "content")
        assert error.code == ErrorCode.CORPUS_FIELD_NOT_FOUND
        assert "text_field 'content' is not a column" in error.message
        assert "'body', 'id'" in error.message
    error = _user_error(_csv(tmp_path / "c.csv"), "csv", "body")
    assert error.code == ErrorCode.CORPUS_FIELD_NOT_FOUND and "'id', 'text'" in error.message


def test_a_bad_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "no end"\n{"text": "x"}\n', encoding="utf-8")
    error = _user_error(path, "jsonl")
    assert error.code == ErrorCode.CORPUS_UNREADABLE
    assert "cannot be read as jsonl: line 3 is not a JSON object" in error.message


def test_unreadable_parquet_and_csv_are_user_errors(tmp_path: Path) -> None:
    not_parquet = tmp_path / "c.parquet"
    not_parquet.write_bytes(b"PAR1 then nothing a parquet reader wants")
    error = _user_error(not_parquet, "parquet")
    assert error.code == ErrorCode.CORPUS_UNREADABLE and "as parquet" in error.message
    ragged = tmp_path / "c.csv"
    ragged.write_text("id,text\n1,a\n2,b,c\n", encoding="utf-8")
    error = _user_error(ragged, "csv")
    assert error.code == ErrorCode.CORPUS_UNREADABLE and "line 3" in error.message
    empty = tmp_path / "e.jsonl"
    empty.write_text("", encoding="utf-8")
    assert _user_error(empty, "jsonl").code == ErrorCode.CORPUS_UNREADABLE


def test_a_value_that_is_not_text_is_refused_with_its_record(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": "b"}, {"text": ["c", "d"]}])
    error = _user_error(path, "jsonl")
    assert error.code == ErrorCode.CORPUS_FIELD_NOT_TEXT
    assert "record 3" in error.message and "'text'" in error.message
    numbers = _parquet(tmp_path / "n.parquet", {"n": [1, 2]})
    assert _user_error(numbers, "parquet", "n").code == ErrorCode.CORPUS_FIELD_NOT_TEXT


def test_records_stream_lazily_past_a_block_of_the_file(tmp_path: Path) -> None:
    """A file larger than datasets' JSON block (10 MiB) whose last line is broken: the first
    records arrive before the reader gets there, so nothing waits for the whole file, and
    reading on reaches the bad line and names it."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "x" * 1000}) + "\n"
    count = (24 << 20) // len(line)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count // 1000):
            out.write(line * 1000)
        out.write('{"text": broken\n')
    documents = iter_documents(path, "jsonl", "text", tmp_path / "ds")
    assert [len(d) for d in islice(documents, 3)] == [1000, 1000, 1000]
    with pytest.raises(UserError) as caught:
        for _ in documents:
            pass
    assert f"line {count // 1000 * 1000 + 1} is not a JSON object" in caught.value.message


def test_reading_never_touches_the_network(tmp_path: Path) -> None:
    """In a fresh process whose every socket connection and name lookup raises (an audit
    hook), each structured format is read: datasets must work from the local file alone."""
    jsonl = _jsonl(tmp_path / "c.jsonl", [{"text": "a"}])
    parquet = _parquet(tmp_path / "c.parquet", {"text": ["b"]})
    csv = _csv(tmp_path / "c.csv")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path

        def deny(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
                raise RuntimeError(f"network use: {{event}} {{args}}")

        sys.addaudithook(deny)
        from model_trainer.tokenization.corpus_formats import iter_documents

        cache = Path({str(tmp_path / "ds")!r})
        for path, fmt in (({str(jsonl)!r}, "jsonl"), ({str(parquet)!r}, "parquet"),
                          ({str(csv)!r}, "csv")):
            print(fmt, list(iter_documents(Path(path), fmt, "text", cache))[:1])
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ["jsonl ['a']", "parquet ['b']", "csv ['first record']"]


# Converts corpora in a fresh process, as a job does, each in a child forked from it once
# the libraries are imported, and reports each child's peak RSS (what the job's process would
# hold): {"peak": bytes, "error": [code, message] or None} a line. VmHWM, reset in the child
# to what it inherited (clear_refs 5), not getrusage: Linux carries ru_maxrss across fork and
# exec, so that would include the peak of the process that forked it.
_CONVERT = textwrap.dedent(
    """
    import json, os, re, sys
    from pathlib import Path
    from model_trainer.errors import UserError
    from model_trainer.tokenization.corpus_formats import write_text_corpus

    def convert(src, fmt, out, cache, cap):
        Path("/proc/self/clear_refs").write_text("5")
        error = None
        try:
            write_text_corpus(Path(src), fmt, "text", Path(out), Path(cache), int(cap))
        except UserError as exc:
            error = [exc.code, exc.message]
        status = Path("/proc/self/status").read_text()
        peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
        return {"peak": peak, "error": error}

    for job in json.loads(sys.argv[1]):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, json.dumps(convert(*job)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            print(answer.read(), flush=True)
        assert os.waitpid(pid, 0)[1] == 0
    """
)


def _convert_each(
    jobs: list[tuple[Path, StructuredFormat, Path, int]],
) -> list[dict[str, object]]:
    """`write_text_corpus(src, fmt, "text", out, cache, cap)` for each (src, fmt, out, cap)."""
    arguments = [
        (str(src), fmt, str(out), str(src.parent / "ds"), cap) for src, fmt, out, cap in jobs
    ]
    done = subprocess.run(
        [sys.executable, "-c", _CONVERT, json.dumps(arguments)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()[-len(jobs) :]]


@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary", "plain-zstd"])
def test_a_parquet_bomb_is_refused_before_its_text_is_decoded(
    tmp_path: Path, dictionary: bool
) -> None:
    """A few KB of Parquet that decode to 256 MiB of text (one 1 MiB value 256 times, as a
    dictionary or as zstd-compressed plain pages), against a cap of 4 MiB (more than the
    dictionary's own size: the rows are what is counted): refused as a user error naming the
    cap, with no file left, in a process whose peak memory is that of converting a tiny
    corpus (plus a margin far under the 256 MiB it would decode to)."""
    bomb = tmp_path / "bomb.parquet"
    value = "x" * MiB
    pq.write_table(
        pa.table({"text": [value] * 256}), bomb, compression="zstd", use_dictionary=dictionary
    )
    assert bomb.stat().st_size < 64 * 1024
    small = _parquet(tmp_path / "small.parquet", {"text": DOCS})
    out = tmp_path / "out" / "text.txt"

    baseline, refused = _convert_each(
        [
            (small, "parquet", tmp_path / "small" / "text.txt", 4 * MiB),
            (bomb, "parquet", out, 4 * MiB),
        ]
    )

    assert baseline["error"] is None
    assert refused["error"] == [
        ErrorCode.CORPUS_TEXT_TOO_LARGE,
        "the parquet corpus decodes to more than 4,194,304 bytes of text, the cap "
        "(APP__CORPUS_MAX_TEXT_BYTES=4194304): upload a smaller corpus, or ask the operator "
        "to raise the cap.",
    ]
    assert list(out.parent.iterdir()) == []
    peak, base = refused["peak"], baseline["peak"]
    assert isinstance(peak, int) and isinstance(base, int)
    assert peak < base + 32 * MiB, (peak, base)


def test_a_json_lines_corpus_stops_at_the_cap_while_streaming(tmp_path: Path) -> None:
    """JSON lines have no metadata to read first: the text is counted as it is written, the
    conversion stops at the cap and its partial file is removed."""
    jsonl = _jsonl(tmp_path / "big.jsonl", [{"text": "y" * 1000}] * 4000)  # 4 MB of text
    out = tmp_path / "out" / "text.txt"
    with pytest.raises(UserError) as caught:
        write_text_corpus(jsonl, "jsonl", "text", out, tmp_path / "ds", MiB)
    assert caught.value.code == ErrorCode.CORPUS_TEXT_TOO_LARGE
    assert caught.value.failure == "user"
    assert "(APP__CORPUS_MAX_TEXT_BYTES=1048576)" in caught.value.message
    assert list(out.parent.iterdir()) == []
    # Under the cap, the same corpus converts whole.
    whole = write_text_corpus(jsonl, "jsonl", "text", out, tmp_path / "ds", 8 * MiB)
    assert whole.documents == 4000 and whole.size_bytes == 4000 * 1001


def test_text_ids_differ_by_field_and_format() -> None:
    ids = {
        text_corpus_id(FILE_ID, "jsonl", "text"),
        text_corpus_id(FILE_ID, "jsonl", "body"),
        text_corpus_id(FILE_ID, "csv", "text"),
        text_corpus_id("b" * 64, "jsonl", "text"),
    }
    assert len(ids) == 4 and FILE_ID not in ids


def test_requests_validate_the_format_fields() -> None:
    base = {"method": "bpe", "vocab_size": 512, "corpus_file_id": FILE_ID}
    plain = TokenizerTrainConfig.model_validate(base)
    assert (plain.corpus_format, plain.text_field) == ("auto", "text")
    # Ids of requests that leave the new fields at their defaults did not change.
    assert "corpus_format" not in plain.canonical_json()
    as_jsonl = TokenizerTrainConfig.model_validate({**base, "corpus_format": "jsonl"})
    assert as_jsonl.tokenizer_id() != plain.tokenizer_id()
    for bad in ("", "a" * 65, "../x", "a b ", "text\n", "col;drop"):
        with pytest.raises(ValidationError):
            TokenizerTrainConfig.model_validate({**base, "text_field": bad})
    assert TokenizerTrainConfig.model_validate({**base, "text_field": "body text"}).text_field
    with pytest.raises(ValidationError, match="remove it for corpus_format 'text'"):
        TokenizerTrainConfig.model_validate({**base, "corpus_format": "text", "text_field": "b"})
    with pytest.raises(ValidationError):
        TokenizerTrainConfig.model_validate({**base, "corpus_format": "xml"})

    run = {"corpus_file_id": FILE_ID, "tokenizer_id": "tok-1"}
    parsed = TrainRequest.model_validate({**run, "corpus_format": "csv", "text_field": "t"})
    assert (parsed.corpus_format, parsed.text_field) == ("csv", "t")
    with pytest.raises(ValidationError, match="remove it for corpus_format 'text'"):
        TrainRequest.model_validate({**run, "corpus_format": "text", "text_field": "body"})

    other = EvaluateRequest.model_validate({"corpus_file_id": FILE_ID, "text_field": "body"})
    assert other.text_field == "body"
    with pytest.raises(ValidationError, match="go with corpus_file_id"):
        EvaluateRequest.model_validate({"split": "test", "text_field": "body"})
