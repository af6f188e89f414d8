"""Corpora in any common format: plain text, JSON lines, CSV or Parquet, read as text documents.

Plain text is what every downstream step reads (the holdout split by line, the tokenizers'
trainers, the token cache), and it stays on its fast path: nothing here touches it. A
structured corpus (JSONL, CSV, Parquet) names the column that holds the text (`text_field`,
default `text`); `write_text_corpus` streams its records through Hugging Face `datasets`
(`load_dataset(..., streaming=True)`, local files only, offline) into a plain text file once,
each record followed by a newline, and the jobs go on with that file. Memory stays bounded by
one batch of records whatever the corpus size.

`corpus_format: auto` sniffs the content: the Parquet magic `PAR1` is Parquet, a first
non-blank line that parses as a JSON object is JSON lines, anything else is text. CSV is never
guessed (any text with commas would look like it): ask for `csv`.

The user's mistakes are `UserError`s raised before anything is trained: a `text_field` that is
not a column (the message lists the columns found), a file that does not parse (the line of
the first bad JSON record, pandas' line for CSV, pyarrow's reason for Parquet), a value that
is not a string (a number, a list...). Null values (a missing field in a JSON record, an empty
Parquet cell) are skipped and counted: datasets fills a column a record lacks with null, so
refusing nulls would refuse ragged JSON lines that are otherwise fine.

Bombs: a few KB of Parquet can stand for gigabytes of text (one long value, dictionary-encoded
and repeated; or compressed pages of repeated text). `write_text_corpus` writes at most
`max_text_bytes` (setting `app.corpus_max_text_bytes`): a Parquet file is measured before any
of its text is decoded (`parquet_text_bytes`), every format is counted while it streams, and
past the cap the conversion stops, its partial file is removed and the job fails as a user
error (`CORPUS_TEXT_TOO_LARGE`) naming the cap.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Literal, Protocol, get_args

from pydantic import Field

from model_trainer.errors import ErrorCode, UserError
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.tokenization")

CorpusFormat = Literal["auto", "text", "jsonl", "csv", "parquet"]
ResolvedFormat = Literal["text", "jsonl", "csv", "parquet"]
StructuredFormat = Literal["jsonl", "csv", "parquet"]
STRUCTURED_FORMATS: tuple[StructuredFormat, ...] = get_args(StructuredFormat)
DEFAULT_TEXT_FIELD = "text"
# A column name, not an expression: letters, digits, "_", and inner spaces, dots or dashes.
TEXT_FIELD_PATTERN = r"^[A-Za-z0-9_](?:[A-Za-z0-9_ .-]{0,62}[A-Za-z0-9_])?$"

# The two request fields, as the tokenizer, training and evaluation requests declare them.
CorpusFormatField = Annotated[
    CorpusFormat,
    Field(
        description="How to read the corpus: `text` (one document per line), `jsonl`, `csv`, "
        "`parquet`, or `auto` (Parquet and JSON lines are recognised by their content; CSV "
        "must be asked for)."
    ),
]
# A training run may also read a chat corpus (training/chat.py): JSON lines, each with a
# `messages` list, rendered with the base model's chat template.
RunCorpusFormat = Literal["auto", "text", "jsonl", "csv", "parquet", "chat"]
RunCorpusFormatField = Annotated[
    RunCorpusFormat,
    Field(
        description="How to read the corpus: as for tokenizers (`text`, `jsonl`, `csv`, "
        "`parquet`, `auto`), or `chat` (fine-tuning only: JSON lines with a `messages` list "
        "of {role, content}, formatted with the base model's chat template)."
    ),
]
TextFieldName = Annotated[
    str,
    Field(
        pattern=TEXT_FIELD_PATTERN,
        description="The column of a JSONL, CSV or Parquet corpus that holds the text.",
    ),
]

PARQUET_MAGIC = b"PAR1"
# Records per batch read from `datasets`: big enough to amortise its per-batch cost.
BATCH_RECORDS = 1024
# How far `sniff_format` reads for the first non-blank line.
SNIFF_BYTES = 1 << 20

# Rows per batch when `parquet_text_bytes` measures a column: read in its dictionary form, a
# batch holds indices and lengths (4 bytes each), not text.
PARQUET_MEASURE_ROWS = 64 * 1024
# The setting that caps a structured corpus's text, as an operator sets it.
MAX_TEXT_SETTING = "APP__CORPUS_MAX_TEXT_BYTES"

# Part of `text_corpus_id`: bump it when the text written for a record changes.
TEXT_SCHEME = "model-trainer/corpus-text/v1"

_BUILDERS: dict[StructuredFormat, str] = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}


def check_format_fields(corpus_format: CorpusFormat, text_field: str) -> None:
    """The requests' rule (a `ValueError` for their validators): `text_field` names a column,
    so it means nothing for a corpus asked to be read as plain text."""
    if corpus_format == "text" and text_field != DEFAULT_TEXT_FIELD:
        raise ValueError(
            "text_field applies to structured corpora (jsonl, csv, parquet, or auto); "
            "remove it for corpus_format 'text'"
        )


def sniff_format(path: Path) -> Literal["text", "jsonl", "parquet"]:
    """What `corpus_format: auto` reads `path` as (see the module docstring)."""
    with path.open("rb") as file:
        if file.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
            return "parquet"
        file.seek(0)
        read = 0
        while read < SNIFF_BYTES and (line := file.readline(SNIFF_BYTES)):
            read += len(line)
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith(b"{"):
                return "text"
            try:
                record = json.loads(stripped)
            except ValueError:  # cut at SNIFF_BYTES, or text that starts with "{"
                return "text"
            return "jsonl" if isinstance(record, dict) else "text"
    return "text"


def resolve_format(path: Path, corpus_format: CorpusFormat) -> ResolvedFormat:
    return sniff_format(path) if corpus_format == "auto" else corpus_format


def text_corpus_id(file_id: str, corpus_format: StructuredFormat, text_field: str) -> str:
    """The id of the text a structured corpus gives for a field: the token cache's key and the
    converted file's name (the same file read for another field is another text)."""
    key = f"{TEXT_SCHEME}\n{file_id}\n{corpus_format}\n{text_field}"
    return hashlib.sha256(key.encode()).hexdigest()


def iter_documents(
    path: Path, corpus_format: StructuredFormat, text_field: str, cache_dir: Path
) -> Iterator[str]:
    """The text of each record of a structured corpus, streamed (nulls skipped).

    `cache_dir` takes the lock files `datasets` writes even when streaming (kept out of the
    user's Hugging Face cache). Raises `UserError` as the module docstring says.
    """
    reader = _RecordReader(path, corpus_format, text_field, cache_dir)
    yield from reader.documents()


@dataclass(frozen=True)
class TextCorpus:
    """A structured corpus written out as plain text (`write_text_corpus`)."""

    path: Path
    documents: int
    skipped_nulls: int
    size_bytes: int


def write_text_corpus(
    path: Path,
    corpus_format: StructuredFormat,
    text_field: str,
    out_path: Path,
    cache_dir: Path,
    max_text_bytes: int,
) -> TextCorpus:
    """Stream the records of `path` into the text file `out_path`, one record after another,
    each ending with a newline (records may hold newlines of their own); at most
    `max_text_bytes` of it (the module's docstring, "Bombs").

    Written to a temporary file and renamed: `out_path` exists only complete, so a job that
    finds it can use it, and two jobs converting at once each rename a whole, equal file; a
    conversion that fails leaves nothing behind.
    """
    reader = _RecordReader(path, corpus_format, text_field, cache_dir, max_text_bytes)
    documents = size = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for document in reader.documents():
                data = document.encode("utf-8")
                if not data.endswith(b"\n"):
                    data += b"\n"
                size += len(data)
                if size > max_text_bytes:
                    raise text_too_large(corpus_format, max_text_bytes)
                out.write(data)
                documents += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, out_path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    log.info(
        "%s corpus: %d records of %r written as text (%d bytes), %d null values skipped",
        corpus_format,
        documents,
        text_field,
        size,
        reader.skipped_nulls,
        extra=log_fields("corpus_converted", corpus_format=corpus_format),
    )
    return TextCorpus(out_path, documents, reader.skipped_nulls, size)


def text_too_large(corpus_format: StructuredFormat, max_text_bytes: int) -> UserError:
    return UserError(
        f"the {corpus_format} corpus decodes to more than {max_text_bytes:,} bytes of text, "
        f"the cap ({MAX_TEXT_SETTING}={max_text_bytes}): upload a smaller corpus, or ask the "
        "operator to raise the cap.",
        ErrorCode.CORPUS_TEXT_TOO_LARGE,
    )


def parquet_text_bytes(path: Path, text_field: str, limit: int) -> int:
    """The bytes of text the string column `text_field` of the Parquet file `path` decodes
    to, measured without decoding it; counting stops once past `limit` (0 for a column that
    is not text: the reader refuses it with its record).

    First the metadata: a column chunk's uncompressed size is its text plus a few bytes a
    value when plain-encoded, and never less than the text it holds plainly, so past `limit`
    the file is refused before any page is read. A dictionary-encoded chunk says nothing
    there (one long value repeated a million times is a few KB): it is read in dictionary
    form, and each row's length looked up in its dictionary, so no row's text is built.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path, read_dictionary=[text_field])
    meta = file.metadata
    columns = [meta.schema.column(i).path for i in range(meta.num_columns)]
    index = columns.index(text_field)
    stored = sum(
        int(meta.row_group(g).column(index).total_uncompressed_size)
        for g in range(meta.num_row_groups)
    )
    if stored > limit:
        return stored
    total = 0
    for batch in file.iter_batches(batch_size=PARQUET_MEASURE_ROWS, columns=[text_field]):
        values = batch.column(0)
        if pa.types.is_dictionary(values.type):
            if not _is_text(pa, values.type.value_type):
                return 0
            lengths = pc.binary_length(values.dictionary).take(values.indices)
        elif _is_text(pa, values.type):
            lengths = pc.binary_length(values)
        else:
            return 0
        total += int(pc.sum(lengths).as_py() or 0)
        if total > limit:
            break
    return total


def _is_text(pa: ModuleType, value_type: object) -> bool:
    types = pa.types
    return bool(types.is_string(value_type) or types.is_large_string(value_type))


class _RecordReader:
    """One pass over a structured corpus with `datasets`, its errors turned into `UserError`s.
    Given `max_text_bytes`, a Parquet corpus past it is refused before its text is read."""

    def __init__(
        self,
        path: Path,
        corpus_format: StructuredFormat,
        text_field: str,
        cache_dir: Path,
        max_text_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.corpus_format: StructuredFormat = corpus_format
        self.text_field = text_field
        self.cache_dir = cache_dir
        self.max_text_bytes = max_text_bytes
        self.skipped_nulls = 0

    def documents(self) -> Iterator[str]:
        columns = self._columns()
        if self.text_field not in columns:
            found = ", ".join(repr(c) for c in columns) or "none"
            raise UserError(
                f"text_field {self.text_field!r} is not a column of this {self.corpus_format} "
                f"corpus; its columns: {found}. Set text_field to the column that holds the "
                "text.",
                ErrorCode.CORPUS_FIELD_NOT_FOUND,
            )
        if self.corpus_format == "parquet" and self.max_text_bytes is not None:
            self._check_parquet_size(self.max_text_bytes)
        record = 0
        for batch in self._batches(columns):
            values = batch.get(self.text_field)
            if not isinstance(values, list):
                raise TypeError(f"datasets gave {type(values).__name__} for a column batch")
            for value in values:
                record += 1
                if value is None:
                    self.skipped_nulls += 1
                elif isinstance(value, str):
                    yield value
                else:
                    raise UserError(
                        f"record {record} of the corpus has a value of type {type(value).__name__} "
                        f"in text_field {self.text_field!r} ({_preview(value)}), not text: the "
                        "column must hold strings (null values are skipped).",
                        ErrorCode.CORPUS_FIELD_NOT_TEXT,
                    )

    def _check_parquet_size(self, max_text_bytes: int) -> None:
        try:
            measured = parquet_text_bytes(self.path, self.text_field, max_text_bytes)
        except (ValueError, OSError) as exc:
            raise self._unreadable(exc) from None
        if measured > max_text_bytes:
            raise text_too_large(self.corpus_format, max_text_bytes)

    def _columns(self) -> list[str]:
        """The corpus's column names: from the schema where the format has one (Parquet),
        else from the first record (JSON lines and CSV are only known by reading)."""
        dataset = self._load()
        try:
            names = dataset.column_names
            if names is None:
                first = next(iter(dataset.iter(batch_size=1)), None)
                names = list(first) if isinstance(first, dict) else []
        except (ValueError, OSError, ImportError) as exc:
            raise self._unreadable(exc) from None
        if not names:
            raise self._no_records()
        return [str(name) for name in names]

    def _batches(self, columns: list[str]) -> Iterator[Mapping[str, object]]:
        dataset = self._load(columns)
        batches = iter(dataset.iter(batch_size=BATCH_RECORDS))
        while True:
            try:
                batch = next(batches, None)
            except (ValueError, OSError) as exc:
                raise self._unreadable(exc) from None
            if batch is None:
                return
            if not isinstance(batch, dict):
                raise TypeError(f"datasets gave a {type(batch).__name__} for a batch")
            yield batch

    def _load(self, columns: list[str] | None = None) -> _StreamedDataset:
        """The corpus as a streamed `datasets.IterableDataset` (nothing is read yet); given
        the corpus's `columns`, one that yields only the text field."""
        datasets = _offline_datasets()
        options: dict[str, object] = {}
        if self.corpus_format == "csv":
            # No "NA"/"null"/"" -> null guessing: the word "NA" in a corpus is a word.
            options["keep_default_na"] = False
            if columns is not None:
                # Every column read as a string: a text column of digits stays text.
                string = datasets.Value("string")
                options["features"] = datasets.Features({name: string for name in columns})
        elif self.corpus_format == "parquet" and columns is not None:
            options["columns"] = [self.text_field]  # read only the text column's pages
            # Batches of records, not of whole row groups (datasets' default): a row group
            # may hold millions of them.
            options["batch_size"] = BATCH_RECORDS
        try:
            dataset: _StreamedDataset = datasets.load_dataset(
                _BUILDERS[self.corpus_format],
                data_files=str(self.path),
                split="train",
                streaming=True,
                cache_dir=str(self.cache_dir),
                **options,
            )
        except StopIteration:  # datasets' JSON schema inference on a file without records
            raise self._no_records() from None
        except (ValueError, OSError) as exc:
            raise self._unreadable(exc) from None
        if self.corpus_format != "parquet" and columns is not None:
            dataset = dataset.select_columns([self.text_field])
        return dataset

    def _no_records(self) -> UserError:
        return UserError(
            f"the {self.corpus_format} corpus has no records: upload a file with at least "
            f"one record holding a {self.text_field!r} column.",
            ErrorCode.CORPUS_UNREADABLE,
        )

    def _unreadable(self, exc: BaseException) -> UserError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
        if self.corpus_format == "jsonl":
            # pyarrow names a row within a block; find the file's line ourselves.
            bad = first_bad_json_line(self.path)
            if bad is not None:
                reason = f"line {bad[0]} is not a JSON object ({bad[1]})"
        return UserError(
            f"the corpus cannot be read as {self.corpus_format}: {reason}. Fix the file (or "
            "set corpus_format to the format it has) and upload it again.",
            ErrorCode.CORPUS_UNREADABLE,
        )


class _StreamedDataset(Protocol):
    """What this module uses of `datasets.IterableDataset` (datasets ships no type hints)."""

    @property
    def column_names(self) -> list[str] | None: ...

    def iter(self, batch_size: int) -> Iterator[object]: ...

    def select_columns(self, column_names: list[str]) -> _StreamedDataset: ...


def _offline_datasets() -> ModuleType:
    """`datasets`, imported on first use (a second of imports the API never needs), offline.

    Its offline switch is read at import: set it first, so a local file can never turn into
    a hub request. `load_settings` sets it too, for processes that import `datasets` earlier.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return importlib.import_module("datasets")


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """The first line of a JSON-lines file that is not a JSON object, and why (1-based).

    Only for the error message: `datasets` (pyarrow) reports a row within a block, not the
    file's line. Blank lines are allowed, as `datasets` allows them.
    """
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                return number, str(exc)
            if not isinstance(record, dict):
                return number, f"a JSON {type(record).__name__}, not an object"
    return None


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
