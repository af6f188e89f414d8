"""What the CLI prints: rich tables and text for people, JSON for scripts, the live bar."""

from __future__ import annotations

import datetime as dt
import re
import sys

from pydantic import BaseModel, JsonValue
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from model_trainer.api.schemas import (
    CorpusInfo,
    EvalInfo,
    RunComparison,
    RunInfo,
    SweepInfo,
    TokenizerInfo,
)
from model_trainer.cli.client import dumps

PIPE_WIDTH = 4096

# What must not reach a terminal as sent: C0 controls (ESC opens an escape sequence, CR
# overwrites a line), DEL, C1 controls (U+009B is a CSI on its own) and the bidirectional
# overrides that reorder what is shown. Model output, special tokens, corpus names and error
# messages are anyone's text.
_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNSAFE_IN_TEXT = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")  # keeps \t, \n
_UNSAFE_IN_CELL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` with each control character shown as its escape (`\x1b`), never sent as is;
    `one_line` escapes tabs and newlines too (a table cell)."""
    pattern = _UNSAFE_IN_CELL if one_line else _UNSAFE_IN_TEXT
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def json_printable(text: str) -> str:
    """JSON text with the characters `printable` escapes written as `\\uXXXX` (encoders
    leave C1 controls and bidi overrides raw): the same JSON value, safe on a terminal. A
    raw tab or newline can only be the layout's (encoders escape those within strings)."""
    return _UNSAFE_IN_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _row(table: Table, *cells: str) -> None:
    """A table row of plain text: escaped, and never read as rich markup (`[red]`)."""
    table.add_row(*(Text(printable(cell, one_line=True)) for cell in cells))


def id_column(table: Table, header: str, ids: list[str]) -> None:
    """An id column that is never wrapped nor cut (ids are copied): the others shrink."""
    table.add_column(header, no_wrap=True, min_width=max([len(header), *map(len, ids)]))


class Output:
    """Where a command's result goes: JSON on stdout with `--json`, else rich text; progress
    and errors on stderr so that stdout stays the result alone."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        # Into a pipe or file, tables take the width they need: nothing cut at 80 columns.
        width = None if sys.stdout.isatty() else PIPE_WIDTH
        self.out = Console(highlight=False, soft_wrap=True, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def json(self, value: JsonValue) -> None:
        self.json_text(dumps(value))

    def model(self, value: BaseModel) -> None:
        self.json_text(value.model_dump_json(indent=2))

    def json_text(self, text: str) -> None:
        """JSON text on stdout (one document or line), control characters escaped."""
        sys.stdout.write(json_printable(text) + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        """Plain text on stdout, no markup or wrapping (ids that scripts cut out), control
        characters escaped."""
        sys.stdout.write(printable(text) + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """A progress note for people, on stderr; silent with --json."""
        if not self.as_json:
            self.err.print(printable(text), markup=False)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _request_field(request: dict[str, JsonValue] | None, name: str) -> str:
    value = (request or {}).get(name)
    return "-" if value is None else str(value)


def _labelled(name: str | None, tags: list[str]) -> str:
    """A list's name column: the name, then the tags in brackets."""
    shown = name or "-"
    return f"{shown} [{', '.join(tags)}]" if tags else shown


def _label_rows(table: Table, name: str | None, tags: list[str], metadata: dict[str, str]) -> None:
    if name is not None:
        _row(table, "name", name)
    if tags:
        _row(table, "tags", ", ".join(tags))
    for key, value in metadata.items():
        _row(table, f"metadata.{key}", value)


def corpus_table(items: list[CorpusInfo]) -> Table:
    table = Table()
    id_column(table, "file_id", [c.file_id for c in items])
    for header in ("name", "bytes", "lines", "uploaded"):
        table.add_column(header)
    for c in items:
        _row(table, c.file_id, c.name, f"{c.size:,}", f"{c.lines:,}", when(c.created_at))
    return table


def tokenizer_table(items: list[TokenizerInfo]) -> Table:
    table = Table()
    id_column(table, "tokenizer_id", [t.tokenizer_id for t in items])
    for header in ("name", "status", "method", "vocab", "created", "message"):
        table.add_column(header)
    for t in items:
        method = _request_field(t.request, "method")
        kind = _request_field(t.request, "model_type")
        _row(
            table,
            t.tokenizer_id,
            _labelled(t.name, t.tags),
            t.status.value,
            method if kind == "-" else f"{method}/{kind}",
            _request_field(t.request, "vocab_size"),
            when(t.created_at),
            t.message or "",
        )
    return table


def tokenizer_details(t: TokenizerInfo) -> Table:
    table = Table.grid(padding=(0, 2))
    _row(table, "tokenizer_id", t.tokenizer_id)
    _label_rows(table, t.name, t.tags, t.metadata)
    _row(table, "status", t.status.value)
    _row(table, "message", t.message or "-")
    _row(table, "created", when(t.created_at))
    for name in ("method", "model_type", "vocab_size", "corpus_file_id"):
        _row(table, name, _request_field(t.request, name))
    for name, value in (t.stats or {}).items():
        _row(table, f"stats.{name}", str(value))
    for name, seconds in (t.timings or {}).items():
        _row(table, f"timings.{name}", f"{seconds:.2f}s")
    if t.file_id:
        _row(table, "file_id", t.file_id)
    if t.error:
        _row(table, "error", f"{t.error.kind}/{t.error.code}: {t.error.message}")
    return table


def steps(run: RunInfo) -> str:
    p = run.progress
    return f"{p.step}/{p.total_steps}" if p.total_steps else str(p.step)


def run_table(items: list[RunInfo]) -> Table:
    table = Table()
    id_column(table, "run_id", [r.run_id for r in items])
    for header in ("name", "status", "size", "step", "train loss", "val loss", "created"):
        table.add_column(header)
    for r in items:
        _row(
            table,
            r.run_id,
            _labelled(r.name, r.tags),
            r.status.value,
            _request_field(r.request, "model_size"),
            steps(r),
            number(r.progress.train_loss),
            number(r.progress.val_loss),
            when(r.created_at),
        )
    return table


def run_details(run: RunInfo) -> Table:
    p = run.progress
    table = Table.grid(padding=(0, 2))
    _row(table, "run_id", run.run_id)
    _label_rows(table, run.name, run.tags, run.metadata)
    _row(table, "status", run.status.value)
    _row(table, "message", run.message or "-")
    _row(table, "created", when(run.created_at))
    for name in (
        "model_size",
        "max_seq_len",
        "batch_size",
        "device",
        "corpus_file_id",
        "tokenizer_id",
    ):
        _row(table, name, _request_field(run.request, name))
    if run.waiting_for:
        _row(table, "waiting for", run.waiting_for)
    _row(table, "step", steps(run))
    _row(table, "train loss", number(p.train_loss))
    _row(table, "val loss", number(p.val_loss))
    if not run.status.terminal:  # live figures: an ended run has no speed and no ETA
        _row(table, "tokens/s", number(p.tokens_per_sec, 0))
        _row(table, "eta", duration(p.eta_seconds))
    if p.resumed_from_step is not None:
        _row(table, "resumed from step", str(p.resumed_from_step))
    _row(table, "attempts", str(run.attempts))
    if run.file_id:
        _row(table, "artifact file_id", run.file_id)
    if run.error:
        _row(table, "error", f"{run.error.kind}/{run.error.code}: {run.error.message}")
    return table


def eval_summary(info: EvalInfo) -> str:
    where = info.split or (f"corpus {info.corpus_file_id}" if info.corpus_file_id else "?")
    if info.status.value != "completed":
        return f"evaluation {info.eval_id} on {where}: {info.status.value} ({info.message or '-'})"
    return (
        f"evaluation on {where}: loss {number(info.loss)}, "
        f"perplexity {number(info.perplexity, 2)}, "
        f"bits/char {number(info.bits_per_char)}, tokens/char {number(info.tokens_per_char)}"
    )


class RunProgressBar:
    """A live bar for one run: step/total, losses, tokens/s and the server's ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RunProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, run: RunInfo) -> None:
        p = run.progress
        description = f"{run.run_id} {run.status.value}"
        if self._task is None:
            self._task = self._progress.add_task(
                description, total=p.total_steps, steps="-", loss="-", val="-", rate="-", eta="-"
            )
        self._progress.update(
            self._task,
            description=description,
            total=p.total_steps,
            completed=p.step,
            steps=steps(run),
            loss=number(p.train_loss),
            val=number(p.val_loss),
            rate="-" if run.status.terminal else number(p.tokens_per_sec, 0),
            eta="-" if run.status.terminal else duration(p.eta_seconds),
        )


def comparison_tables(comparison: RunComparison) -> list[Table]:
    """`run compare`: final figures per run, the settings that differ, and the samples."""
    runs = comparison.runs
    figures = Table(title="final figures")
    id_column(figures, "run_id", [r.run_id for r in runs])
    for header in (
        "name",
        "status",
        "steps",
        "val loss",
        "bits/char",
        "perplexity",
        "tokens/s",
        "seconds",
    ):
        figures.add_column(header)
    for r in runs:
        f = r.final
        _row(
            figures,
            r.run_id,
            _labelled(r.name, r.tags),
            r.status.value,
            str(f.steps),
            number(f.val_loss),
            number(f.bits_per_char),
            number(f.perplexity, 2),
            number(f.tokens_per_sec, 0),
            number(f.train_seconds, 1),
        )
    tables = [figures]
    if comparison.differing:
        differing = Table(title="settings that differ")
        differing.add_column("setting")
        for r in runs:
            differing.add_column(r.name or r.run_id, overflow="fold")
        for d in comparison.differing:
            _row(differing, d.field, *(str(d.values.get(r.run_id, "-")) for r in runs))
        tables.append(differing)
    if any(r.sample is not None for r in runs):
        samples = Table(title="samples")
        id_column(samples, "run_id", [r.run_id for r in runs])
        samples.add_column("text", overflow="fold")
        for r in runs:
            if r.sample is not None:
                s = r.sample
                text = printable(s.prompt + s.text) if s.text is not None else f"({s.note})"
                _row(samples, r.run_id, text)
        tables.append(samples)
    return tables


def sweep_table(items: list[SweepInfo]) -> Table:
    table = Table()
    id_column(table, "sweep_id", [s.sweep_id for s in items])
    for header in ("name", "status", "trials", "stopped", "best run", "created"):
        table.add_column(header)
    for s in items:
        p = s.progress
        _row(
            table,
            s.sweep_id,
            _labelled(s.name, s.tags),
            s.status.value,
            f"{p.finished}/{len(p.trials)}",
            str(p.stopped),
            s.best_run_id or "-",
            when(s.created_at),
        )
    return table


def sweep_leaderboard(info: SweepInfo) -> Table:
    """The trials best first; a trial stopped by successive halving says at which rung."""
    trials = {t.run_id: t for t in info.progress.trials}
    ordered = [trials[r] for r in info.leaderboard if r in trials]
    ordered += [t for t in info.progress.trials if t.run_id not in info.leaderboard]
    table = Table(title=f"{info.resource} budget {info.budget:g}; rungs {info.rungs or '-'}")
    table.add_column("#")
    id_column(table, "run_id", [t.run_id for t in ordered])
    for header in ("settings", "status", "bits/char", "val loss", "steps", "seconds"):
        table.add_column(header)
    for t in ordered:
        status = (
            f"stopped at rung {t.stopped_at_rung}" if t.stopped_at_rung is not None else t.status
        )
        _row(
            table,
            str(t.index),
            t.run_id,
            ", ".join(f"{k}={v}" for k, v in t.params.items()),
            status,
            number(t.bits_per_char),
            number(t.val_loss),
            str(t.steps),
            number(t.train_seconds, 1),
        )
    return table
