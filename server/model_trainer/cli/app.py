"""The `modeltrainer` commands (typer): corpus, tokenizer and run."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, ParamSpec, TypeVar

import typer
from pydantic import BaseModel, ConfigDict, JsonValue

from model_trainer.api.generation import GenerateResponse  # the server's own answer model
from model_trainer.api.schemas import (
    ArtifactPointer,
    CorpusInfo,
    CorpusList,
    EvalAccepted,
    EvalInfo,
    LogLines,
    ModelList,
    RunAccepted,
    RunComparison,
    RunInfo,
    RunList,
    SweepAccepted,
    SweepInfo,
    SweepList,
    TokenizerAccepted,
    TokenizerInfo,
    TokenizerList,
)
from model_trainer.cli.client import ApiClient, CliError, ExitCode, databank_error, parse
from model_trainer.cli.config import CliSettings, load_cli_settings
from model_trainer.cli.render import (
    Output,
    RunProgressBar,
    comparison_tables,
    corpus_table,
    eval_summary,
    printable,
    run_details,
    run_table,
    steps,
    sweep_leaderboard,
    sweep_table,
    tokenizer_details,
    tokenizer_table,
)
from model_trainer.connections import DataBankUse, databank_client
from model_trainer.databank.archive import safe_extract
from model_trainer.databank.client import DataBankClient
from model_trainer.databank.errors import DataBankError
from model_trainer.errors import UnsafeArchiveError
from model_trainer.settings import AppSettings
from model_trainer.store.base_models import ModelInfo
from model_trainer.store.records import Status
from model_trainer.tokenization.corpus_formats import PARQUET_MAGIC
from model_trainer.training.config import ModelFamily, ModelSize, Optimizer

HELP = (
    "Train tokenizers and small language models (GPT-2, LLaMA, Qwen3) through a Model "
    "Trainer API.\n\n"
    "Settings come from flags, then the environment (MODEL_TRAINER_URL, "
    "MODEL_TRAINER_API_KEY, DATA_BANK_URL, DATA_BANK_API_KEY), then the --env-file given, "
    "then the project's .stack/client.env (written by `make start`); never a .env of the "
    "current folder.\n\n"
    "[bold]Exit codes[/bold]: 0 success; 1 failure (a job failed or was cancelled, a server "
    "error, a refused API key); 2 usage error; 3 not found (404); 4 conflict or refused "
    "(409, 422); 5 unavailable (503, or nothing answers at the URL)."
)

app = typer.Typer(help=HELP, rich_markup_mode="rich", no_args_is_help=True, add_completion=True)
corpus_app = typer.Typer(help="Corpora: upload to Data Bank, list.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train and inspect tokenizers.", no_args_is_help=True)
run_app = typer.Typer(help="Train, follow, evaluate and download models.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(run_app, name="run")
sweep_app = typer.Typer(
    help="Sweeps: many runs over a search space, the worse stopped early.", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")
model_app = typer.Typer(
    help="Base models to fine-tune: upload a transformers model folder, list.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")

# How often --wait and --follow ask the API (seconds).
POLL_INTERVAL_SEC = 1.0
# `run cancel` stops waiting after this long without a sign of the run's worker: over the
# server's default heartbeat TTL (60 s; a live worker beats every 5 s).
CANCEL_STALL_SEC = 90.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass
class Options:
    settings: CliSettings
    output: Output
    poll_interval: float

    def api(self) -> ApiClient:
        key = self.settings.api_key
        return ApiClient(self.settings.api_url, key.get_secret_value() if key else None)

    def bank(self) -> DataBankClient:
        return databank_client(
            self.settings.data_bank_url, self.settings.data_bank_api_key, DataBankUse.CLI
        )


# Set by the global options callback for the command that runs after it.
_current: contextvars.ContextVar[Options | None] = contextvars.ContextVar(
    "modeltrainer_options", default=None
)


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print machine-readable JSON instead of text (also before the command)."
    ),
]


def _options(as_json: bool = False) -> Options:
    """The global options, with JSON output when the command's own --json asks for it
    (`modeltrainer run list --json` is `modeltrainer --json run list`)."""
    options = _current.get()
    if options is None:
        raise CliError("internal: global options missing")
    if as_json and not options.output.as_json:
        options = dataclasses.replace(options, output=Output(as_json=True))
        _current.set(options)  # errors of this command are JSON too (see `handled`)
    return options


def handled(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a `CliError` into its message on stderr (JSON with --json) and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            options = _current.get()
            if options is not None and options.output.as_json:
                sys.stderr.write(json.dumps(exc.as_json()) + "\n")
            else:
                typer.echo(f"Error: {printable(exc.message)}", err=True)
            raise typer.Exit(int(exc.exit_code)) from exc

    return wrapper


@app.callback()
def global_options(
    url: Annotated[
        str | None,
        typer.Option("--url", help="API URL [env MODEL_TRAINER_URL]", show_default=False),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="API key [env MODEL_TRAINER_API_KEY]")
    ] = None,
    data_bank_url: Annotated[
        str | None, typer.Option("--data-bank-url", help="Data Bank URL [env DATA_BANK_URL]")
    ] = None,
    data_bank_key: Annotated[
        str | None, typer.Option("--data-bank-key", help="Data Bank key [env DATA_BANK_API_KEY]")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print machine-readable JSON instead of text (also after the command).",
        ),
    ] = False,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.05, hidden=True)
    ] = POLL_INTERVAL_SEC,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            exists=True,
            dir_okay=False,
            help="read settings from this file (KEY=value lines) too",
        ),
    ] = None,
) -> None:
    settings = load_cli_settings(
        api_url=url,
        api_key=api_key,
        data_bank_url=data_bank_url,
        data_bank_api_key=data_bank_key,
        env_file=env_file,
    )
    _current.set(Options(settings=settings, output=Output(as_json), poll_interval=poll_interval))


# -- corpus -------------------------------------------------------------------------------


@corpus_app.command("upload")
@handled
def corpus_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[
        str | None, typer.Option("--name", help="the name `corpus list` shows (the file's)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a corpus through the API (`POST /corpora`: checked, stored in Data Bank, listed
    by `corpus list`); prints its file_id. A Parquet file, or one over the API's upload limit,
    goes to Data Bank directly (usable all the same, but not listed)."""
    o = _options(as_json)
    if _is_parquet(file):
        # The API takes UTF-8 text only (JSONL and CSV are): Parquet goes to Data Bank.
        _upload_to_databank(o, file, "a Parquet file (the API's upload takes text)")
        return
    api = o.api()
    try:
        response = api.upload(
            "/corpora", file, {"name": (name or file.name)[:200]}, _content_type(file)
        )
    except CliError as exc:
        if exc.status != 413:
            raise
        _upload_to_databank(o, file, f"over the API's upload limit ({exc.message})")
        return
    info = parse(CorpusInfo, response)
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.line(info.file_id)


def _is_parquet(file: Path) -> bool:
    with file.open("rb") as handle:
        return handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC


def _upload_to_databank(o: Options, file: Path, why: str) -> None:
    o.output.note(f"{file}: {why}; uploading to Data Bank directly (`corpus list` omits it)")
    try:
        with o.bank() as bank:
            info = bank.upload_file(file, content_type=_content_type(file))
    except DataBankError as exc:
        raise databank_error(exc, f"upload {file}") from exc
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.line(info.file_id)


def _content_type(file: Path) -> str:
    # Informational only: jobs read the content (corpus_format), not the type.
    types = {
        ".jsonl": "application/jsonl",
        ".csv": "text/csv",
        ".parquet": "application/vnd.apache.parquet",
    }
    return types.get(file.suffix.lower(), "text/plain")


# -- corpus options shared by tokenizer train and run train --------------------------------


class CorpusFormat(StrEnum):
    AUTO = "auto"  # Parquet and JSON lines recognised by content, else text
    TEXT = "text"
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


CorpusFormatOption = Annotated[
    CorpusFormat | None,
    typer.Option("--corpus-format", help="how to read the corpus (server default: auto)"),
]
TextFieldOption = Annotated[
    str | None,
    typer.Option(
        "--text-field", help="the column holding the text in a JSONL, CSV or Parquet corpus"
    ),
]
NameOption = Annotated[str | None, typer.Option("--name", help="a name for people")]
TagOption = Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeat for more)")]
MetaOption = Annotated[
    list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata (repeat for more)")
]
TagFilterOption = Annotated[str | None, typer.Option("--tag", help="only those with this tag")]
NameFilterOption = Annotated[
    str | None, typer.Option("--name", help="only those whose name starts with this")
]


def _labels(
    name: str | None, tags: list[str] | None, meta: list[str] | None
) -> dict[str, JsonValue]:
    """The request's labels (store/labels.py) from the command line."""
    body: dict[str, JsonValue] = {}
    if name is not None:
        body["name"] = name
    if tags:
        body["tags"] = list(tags)
    if meta:
        pairs: dict[str, JsonValue] = {}
        for item in meta:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--meta takes KEY=VALUE (got {item!r})", ExitCode.USAGE)
            pairs[key] = value
        body["metadata"] = pairs
    return body


def _list_params(
    limit: int, offset: int, status: Status | None, tag: str | None, name: str | None
) -> dict[str, str | int]:
    given = {"status": status.value if status else None, "tag": tag, "name": name}
    return {"limit": limit, "offset": offset, **{k: v for k, v in given.items() if v is not None}}


def _corpus_fields(
    corpus_format: CorpusFormat | None, text_field: str | None
) -> dict[str, JsonValue]:
    """Only what was given: the server's defaults stay the server's."""
    fields: dict[str, JsonValue] = {}
    if corpus_format is not None:
        fields["corpus_format"] = corpus_format.value
    if text_field is not None:
        fields["text_field"] = text_field
    return fields


@corpus_app.command("list")
@handled
def corpus_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Corpora uploaded through the API (the dashboard), most recent first."""
    o = _options(as_json)
    page = o.api().get(CorpusList, "/corpora", {"limit": limit, "offset": offset})
    if o.output.as_json:
        o.output.model(page)
    else:
        o.output.out.print(corpus_table(page.items))


# -- model (base models) ------------------------------------------------------------------


@model_app.command("upload")
@handled
def model_upload(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, readable=True)],
    name: Annotated[
        str | None, typer.Option("--name", help="the name `model list` shows (the folder's)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a transformers model folder (config.json, safetensors weights, tokenizer.json)
    to fine-tune (`POST /models`: checked, stored in Data Bank); prints its file_id, for
    `run train --base-model`. The folder is sent as a plain tar of it."""
    o = _options(as_json)
    with tempfile.TemporaryDirectory(prefix="modeltrainer-") as tmp:
        tar = Path(tmp) / f"{folder.resolve().name}.tar"
        with tarfile.open(tar, "w") as archive:
            archive.add(folder, arcname=folder.resolve().name)
        response = o.api().upload(
            "/models", tar, {"name": (name or folder.resolve().name)[:200]}, "application/x-tar"
        )
    info = parse(ModelInfo, response)
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.line(info.file_id)


@model_app.command("list")
@handled
def model_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Base models uploaded through the API, most recent first."""
    o = _options(as_json)
    page = o.api().get(ModelList, "/models", {"limit": limit, "offset": offset})
    if o.output.as_json:
        o.output.model(page)
        return
    for item in page.items:
        m = item.model
        o.output.line(
            f"{item.file_id}  {item.name}  {m.architecture}  {m.n_params / 1e6:.1f}M params  "
            f"context {m.context_length}"
        )


# -- tokenizer ----------------------------------------------------------------------------


class TokenizerMethod(StrEnum):
    BPE = "bpe"  # byte-level BPE (Hugging Face tokenizers)
    UNIGRAM = "unigram"  # SentencePiece unigram
    SENTENCEPIECE_BPE = "sentencepiece-bpe"


def _tokenizer_body(
    corpus: str, method: TokenizerMethod, vocab_size: int | None, lowercase: bool
) -> dict[str, JsonValue]:
    body: dict[str, JsonValue] = {"corpus_file_id": corpus, "lowercase": lowercase}
    if method is TokenizerMethod.BPE:
        body["method"] = "bpe"
    else:
        body["method"] = "sentencepiece"
        body["model_type"] = "unigram" if method is TokenizerMethod.UNIGRAM else "bpe"
    if vocab_size is not None:
        body["vocab_size"] = vocab_size
    return body


def _wait_tokenizer(o: Options, api: ApiClient, tokenizer_id: str) -> TokenizerInfo:
    spinner = (
        contextlib.nullcontext()
        if o.output.as_json
        else o.output.err.status(f"training tokenizer {tokenizer_id}")
    )
    with spinner:
        while True:
            info = api.get(TokenizerInfo, f"/tokenizers/{tokenizer_id}")
            if info.status.terminal:
                return info
            time.sleep(o.poll_interval)


@tokenizer_app.command("train")
@handled
def tokenizer_train(
    corpus: Annotated[str, typer.Option("--corpus", help="corpus file_id in Data Bank")],
    method: Annotated[TokenizerMethod, typer.Option("--method")] = TokenizerMethod.BPE,
    vocab_size: Annotated[
        int | None, typer.Option("--vocab-size", min=128, help="server default: 32000")
    ] = None,
    lowercase: Annotated[bool, typer.Option("--lowercase")] = False,
    corpus_format: CorpusFormatOption = None,
    text_field: TextFieldOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until it is trained")] = False,
    name: NameOption = None,
    tag: TagOption = None,
    meta: MetaOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a tokenizer (the same request twice is the same tokenizer); prints its id."""
    o = _options(as_json)
    api = o.api()
    accepted = api.post(
        TokenizerAccepted,
        "/tokenizers/train",
        {
            **_tokenizer_body(corpus, method, vocab_size, lowercase),
            **_corpus_fields(corpus_format, text_field),
            **_labels(name, tag, meta),
        },
    )
    if not wait:
        if o.output.as_json:
            o.output.model(accepted)
        else:
            o.output.line(accepted.tokenizer_id)
        return
    info = _wait_tokenizer(o, api, accepted.tokenizer_id)
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.out.print(tokenizer_details(info))
    if info.status is not Status.COMPLETED:
        raise typer.Exit(int(ExitCode.FAILURE))


@tokenizer_app.command("list")
@handled
def tokenizer_list(
    status: Annotated[Status | None, typer.Option("--status")] = None,
    tag: TagFilterOption = None,
    name: NameFilterOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Tokenizers, newest first."""
    o = _options(as_json)
    params = _list_params(limit, offset, status, tag, name)
    page = o.api().get(TokenizerList, "/tokenizers", params)
    if o.output.as_json:
        o.output.model(page)
    else:
        o.output.out.print(tokenizer_table(page.items))


@tokenizer_app.command("show")
@handled
def tokenizer_show(
    tokenizer_id: Annotated[str, typer.Argument()], as_json: JsonOption = False
) -> None:
    """One tokenizer: status, holdout stats, timings."""
    o = _options(as_json)
    info = o.api().get(TokenizerInfo, f"/tokenizers/{tokenizer_id}")
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.out.print(tokenizer_details(info))


# -- run ----------------------------------------------------------------------------------


def _train_body(values: dict[str, JsonValue | None]) -> dict[str, JsonValue]:
    return {k: v for k, v in values.items() if v is not None}


@run_app.command("train")
@handled
def run_train(
    corpus: Annotated[str, typer.Option("--corpus", help="corpus file_id in Data Bank")],
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="tokenizer id (not with --base-model)")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="fine-tune this model: a `model upload` file_id"),
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="with --base-model: full or lora")
    ] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA's rank")] = None,
    corpus_format: CorpusFormatOption = None,
    text_field: TextFieldOption = None,
    family: Annotated[
        ModelFamily | None, typer.Option("--family", help="server default: qwen3")
    ] = None,
    size: Annotated[ModelSize, typer.Option("--size")] = ModelSize.TINY,
    n_layer: Annotated[int | None, typer.Option("--n-layer", help="overrides the size")] = None,
    n_head: Annotated[int | None, typer.Option("--n-head", help="overrides the size")] = None,
    n_embd: Annotated[int | None, typer.Option("--n-embd", help="overrides the size")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="time budget")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="step budget")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="epoch budget")] = None,
    n_kv_head: Annotated[
        int | None, typer.Option("--n-kv-head", help="key/value heads (llama, qwen3)")
    ] = None,
    optimizer: Annotated[
        Optimizer | None, typer.Option("--optimizer", help="server default: muon")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="learning rate")] = None,
    muon_lr: Annotated[
        float | None, typer.Option("--muon-lr", help="Muon's learning rate (--optimizer muon)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="max_seq_len")] = None,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps")] = None,
    grad_clip: Annotated[float | None, typer.Option("--grad-clip", help="0 disables")] = None,
    eval_interval: Annotated[int | None, typer.Option("--eval-interval")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    from_run: Annotated[
        str | None, typer.Option("--from-run", help="start from this run's weights")
    ] = None,
    from_checkpoint: Annotated[
        str | None, typer.Option("--from-checkpoint", help="last | best | STEP")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="show live progress and wait for the result")
    ] = False,
    name: NameOption = None,
    tag: TagOption = None,
    meta: MetaOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a training run; prints its id, or with --follow its progress and result."""
    o = _options(as_json)
    budgets = [
        n
        for n, v in (
            ("--max-seconds", max_seconds),
            ("--max-steps", max_steps),
            ("--epochs", epochs),
        )
        if v is not None
    ]
    if len(budgets) > 1:
        raise CliError(
            f"give at most one of --max-seconds, --max-steps, --epochs (got {', '.join(budgets)})",
            ExitCode.USAGE,
        )
    if from_checkpoint is not None and from_run is None:
        raise CliError("--from-checkpoint needs --from-run", ExitCode.USAGE)
    if (tokenizer is None) == (base_model is None):
        raise CliError(
            "give --tokenizer, or --base-model to fine-tune a model (not both)", ExitCode.USAGE
        )
    body = _train_body(
        {
            "corpus_file_id": corpus,
            "tokenizer_id": tokenizer,
            "base_model": base_model,
            "method": method,
            "lora": {"r": lora_r} if lora_r is not None else None,
            "model_family": family.value if family is not None else None,
            "model_size": size.value if base_model is None else None,
            "n_layer": n_layer,
            "n_head": n_head,
            "n_embd": n_embd,
            "n_kv_head": n_kv_head,
            "optimizer": optimizer.value if optimizer is not None else None,
            "muon_learning_rate": muon_lr,
            "max_train_seconds": max_seconds,
            "max_steps": max_steps,
            "num_epochs": epochs,
            "learning_rate": lr,
            "batch_size": batch_size,
            "max_seq_len": seq_len,
            "warmup_steps": warmup_steps,
            "grad_clip": grad_clip,
            "eval_interval": eval_interval,
            "seed": seed,
            "from_run_id": from_run,
            "from_checkpoint": from_checkpoint,
            **_corpus_fields(corpus_format, text_field),
            **_labels(name, tag, meta),
        }
    )
    api = o.api()
    accepted = api.post(RunAccepted, "/runs/train", body)
    if not follow:
        if o.output.as_json:
            o.output.model(accepted)
        else:
            o.output.line(accepted.run_id)
        return
    o.output.note(f"run {accepted.run_id} queued")
    _follow_run(o, api, accepted.run_id)


class RunResult(BaseModel):
    """What `run train --follow` prints with --json."""

    model_config = ConfigDict(extra="forbid")

    run: RunInfo
    eval: EvalInfo | None = None


def _follow_run(o: Options, api: ApiClient, run_id: str) -> None:
    def get() -> RunInfo:
        return api.get(RunInfo, f"/runs/{run_id}")

    if o.output.as_json:
        run = _poll(get, lambda _: None, o.poll_interval)
    else:
        with RunProgressBar(o.output.err) as bar:
            run = _poll(get, bar.update, o.poll_interval)
    evaluation: EvalInfo | None = None
    if run.status is Status.COMPLETED:
        try:
            evaluation = api.get(EvalInfo, f"/runs/{run_id}/eval")
        except CliError as exc:
            if exc.exit_code is not ExitCode.NOT_FOUND:
                raise
    if o.output.as_json:
        o.output.model(RunResult(run=run, eval=evaluation))
    else:
        o.output.line(f"{run.run_id} {run.status.value}: {run.message or '-'}")
        if run.error is not None:
            o.output.line(f"error ({run.error.kind}, {run.error.code}): {run.error.message}")
        if evaluation is not None:
            o.output.line(eval_summary(evaluation))
    if run.status is not Status.COMPLETED:
        raise typer.Exit(int(ExitCode.FAILURE))


def _poll(
    get: Callable[[], RunInfo], on_answer: Callable[[RunInfo], None], interval: float
) -> RunInfo:
    while True:
        run = get()
        on_answer(run)
        if run.status.terminal:
            return run
        time.sleep(interval)


@run_app.command("list")
@handled
def run_list(
    status: Annotated[Status | None, typer.Option("--status")] = None,
    tag: TagFilterOption = None,
    name: NameFilterOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Runs, newest first."""
    o = _options(as_json)
    params = _list_params(limit, offset, status, tag, name)
    page = o.api().get(RunList, "/runs", params)
    if o.output.as_json:
        o.output.model(page)
    else:
        o.output.out.print(run_table(page.items))


@run_app.command("compare")
@handled
def run_compare(
    run_ids: Annotated[list[str], typer.Argument(help="two or more run ids")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="one sample of each completed run's model")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=256)] = 48,
    as_json: JsonOption = False,
) -> None:
    """Runs side by side: final figures, the settings that differ, and samples for a prompt
    (--json adds each run's curves)."""
    o = _options(as_json)
    params: dict[str, str | int | list[str]] = {"run_id": run_ids, "max_new_tokens": max_new_tokens}
    if prompt is not None:
        params["prompt"] = prompt
    comparison = o.api().get(RunComparison, "/runs/compare", params)
    if o.output.as_json:
        o.output.model(comparison)
    else:
        for table in comparison_tables(comparison):
            o.output.out.print(table)


@run_app.command("show")
@handled
def run_show(run_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """One run: status, progress, error."""
    o = _options(as_json)
    run = o.api().get(RunInfo, f"/runs/{run_id}")
    if o.output.as_json:
        o.output.model(run)
    else:
        o.output.out.print(run_details(run))


def _log_text(raw: str) -> str:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    if not isinstance(line, dict):
        return raw
    return f"{line.get('timestamp', '')} {line.get('level', '')} {line.get('message', '')}"


@run_app.command("logs")
@handled
def run_logs(
    run_id: Annotated[str, typer.Argument()],
    tail: Annotated[int, typer.Option("--tail", min=1, max=10_000)] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the run ends")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The run's log lines; with --follow, streamed (server-sent events) until it ends."""
    o = _options(as_json)
    api = o.api()
    if not follow:
        lines = api.get(LogLines, f"/runs/{run_id}/logs", {"tail": tail})
        if o.output.as_json:
            o.output.model(lines)
        else:
            for line in lines.lines:
                o.output.line(_log_text(json.dumps(line)))
        return
    for event, data in api.sse(f"/runs/{run_id}/logs/stream"):
        if event == "end":
            o.output.note(f"run ended: {data}")
            return
        if event == "unavailable":
            raise CliError(f"the log stream ended: {data}", ExitCode.UNAVAILABLE)
        # --json: one log line (a JSON object) per output line.
        if o.output.as_json:
            o.output.json_text(data)
        else:
            o.output.line(_log_text(data))


@run_app.command("cancel")
@handled
def run_cancel(
    run_id: Annotated[str, typer.Argument()],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="wait until the run has stopped (the worker sees the cancel at its next "
            "step) and print its final status; --no-wait returns once it is requested",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued or running run; prints its status once it has stopped (exit 4 when it
    had already ended)."""
    o = _options(as_json)
    api = o.api()
    run = api.post(RunInfo, f"/runs/{run_id}/cancel", {})
    if not run.status.terminal:
        if not wait:
            if o.output.as_json:
                o.output.model(run)
            else:
                o.output.line(
                    f"{run.run_id} cancelling: requested while {run.status.value}; the worker "
                    f"stops it at its next step (run show {run.run_id})"
                )
            return
        o.output.note(
            f"cancelling {run.run_id} ({run.status.value} at step {steps(run)}): "
            "the worker stops it at its next step"
        )
        run = _wait_stopped(o, api, run)
    if o.output.as_json:
        o.output.model(run)
    else:
        o.output.line(f"{run.run_id} {run.status.value}: {run.message or '-'}")


@run_app.command("pause")
@handled
def run_pause(
    run_id: Annotated[str, typer.Argument()],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="wait until the run has checkpointed and paused; --no-wait returns once the "
            "pause is requested",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Pause a queued or running run: it checkpoints at its next step and waits, holding no
    worker and using no attempt, until `run resume` (exit 4 when it had already ended)."""
    o = _options(as_json)
    api = o.api()
    run = api.post(RunInfo, f"/runs/{run_id}/pause", {})
    if wait and run.status is not Status.PAUSED:
        o.output.note(f"pausing {run.run_id} ({run.status.value} at step {steps(run)})")
        run = _wait_stopped(o, api, run, "pause", Status.PAUSED)
    if o.output.as_json:
        o.output.model(run)
    else:
        o.output.line(f"{run.run_id} {run.status.value} at step {steps(run)}: {run.message or '-'}")


@run_app.command("resume")
@handled
def run_resume(
    run_id: Annotated[str, typer.Argument()],
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="a larger steps budget")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", min=0.0, help="a larger epochs budget")
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option("--max-seconds", min=0.0, help="a larger budget of seconds of training"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a paused run again: it continues from the checkpoint it paused at, with a larger
    budget of its own kind when one is given."""
    o = _options(as_json)
    body: dict[str, JsonValue] = {}
    if max_steps is not None:
        body["max_steps"] = max_steps
    if epochs is not None:
        body["num_epochs"] = epochs
    if max_seconds is not None:
        body["max_train_seconds"] = max_seconds
    run = o.api().post(RunInfo, f"/runs/{run_id}/resume", body)
    if o.output.as_json:
        o.output.model(run)
    else:
        o.output.line(f"{run.run_id} {run.status.value}: resumes from step {steps(run)}")


def _wait_stopped(
    o: Options, api: ApiClient, run: RunInfo, what: str = "cancel", until: Status | None = None
) -> RunInfo:
    """Poll until the run is terminal (or `until`). No deadline while it shows signs of a
    live worker (status, step, heartbeat or attempts change: a long step only delays the
    `what`); give up after `CANCEL_STALL_SEC` without any."""
    sign = _liveness(run)
    last_change = time.monotonic()
    while not (run.status.terminal or run.status is until):
        if time.monotonic() - last_change > CANCEL_STALL_SEC:
            raise CliError(
                f"run {run.run_id} is still {run.status.value}, with no sign of its worker for "
                f"{CANCEL_STALL_SEC:.0f}s: the {what} stays requested and takes effect when a "
                f"worker takes the run up again (run show {run.run_id})",
                ExitCode.UNAVAILABLE,
            )
        time.sleep(o.poll_interval)
        run = api.get(RunInfo, f"/runs/{run.run_id}")
        if _liveness(run) != sign:
            sign, last_change = _liveness(run), time.monotonic()
    return run


def _liveness(run: RunInfo) -> tuple[object, ...]:
    return (run.status, run.progress.step, run.last_heartbeat_ts, run.attempts)


class Split(StrEnum):
    VALIDATION = "validation"
    TEST = "test"


@run_app.command("eval")
@handled
def run_eval(
    run_id: Annotated[str, typer.Argument()],
    split: Annotated[Split, typer.Option("--split")] = Split.VALIDATION,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a finished run on its validation or test split; waits and prints the result."""
    o = _options(as_json)
    api = o.api()
    accepted = api.post(EvalAccepted, f"/runs/{run_id}/evaluate", {"split": split.value})
    o.output.note(f"evaluation {accepted.eval_id} queued")
    while True:
        info = api.get(EvalInfo, f"/runs/{run_id}/eval")
        if info.eval_id == accepted.eval_id and info.status.terminal:
            break
        time.sleep(o.poll_interval)
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.line(eval_summary(info))
    if info.status is not Status.COMPLETED:
        raise typer.Exit(int(ExitCode.FAILURE))


class GenerateRequest(BaseModel):
    """The body of `POST /runs/{id}/generate`."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    num_samples: int | None = None
    seed: int | None = None
    checkpoint: Literal["last", "best", "base"] | int | None = None


@run_app.command("generate")
@handled
def run_generate(
    run_id: Annotated[str, typer.Argument()],
    prompt: Annotated[str, typer.Argument()],
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0)] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0)] = None,
    num_samples: Annotated[int | None, typer.Option("--num-samples", min=1)] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="last | best | STEP: a checkpoint's weights; base: a fine-tuning run's base "
            "model (before training)",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate text from a finished run's model (or a checkpoint, or its base model)."""
    o = _options(as_json)
    api = o.api()
    which: Literal["last", "best", "base"] | int | None = None
    if checkpoint in ("last", "best", "base"):
        which = "last" if checkpoint == "last" else "best" if checkpoint == "best" else "base"
    elif checkpoint is not None:
        if not checkpoint.isdigit():
            raise CliError("--checkpoint is last, best, base or a step", ExitCode.USAGE)
        which = int(checkpoint)
    request = GenerateRequest(
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=num_samples,
        seed=seed,
        checkpoint=which,
    )
    path = f"/runs/{run_id}/generate"
    response = api.request("POST", path, body=request.model_dump(mode="json", exclude_none=True))
    result = parse(GenerateResponse, response)
    if o.output.as_json:
        o.output.model(result)
        return
    for i, sample in enumerate(result.samples):
        if len(result.samples) > 1:
            o.output.line(f"--- sample {i + 1}")
        o.output.line(sample)
    o.output.note(
        f"{result.new_tokens} new tokens after {result.prompt_tokens} prompt tokens "
        f"in {result.elapsed_ms} ms"
    )


@run_app.command("download")
@handled
def run_download(
    run_id: Annotated[str, typer.Argument()],
    out: Annotated[
        Path, typer.Option("--output", "-o", help="folder to put model-<id>/ in")
    ] = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Download a finished run's model and extract it; prints the model folder (under -o as
    given: `-o models/` prints models/model-<run_id>)."""
    o = _options(as_json)
    pointer = o.api().get(ArtifactPointer, f"/runs/{run_id}/artifact")
    folder = _fetch_and_extract(o, pointer.file_id, out)
    if o.output.as_json:
        o.output.json({"run_id": run_id, "file_id": pointer.file_id, "path": str(folder)})
    else:
        o.output.line(str(folder))


def _fetch_and_extract(o: Options, file_id: str, out: Path) -> Path:
    """Download the tar into `out`, extract it safely, move its one top folder into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tar = out / f".{file_id[:16]}.{token}.tar"
    staging = out / f".{file_id[:16]}.{token}.extract"
    limits = AppSettings()
    try:
        with o.bank() as bank:
            bank.download(file_id, tar)
        safe_extract(
            tar,
            staging,
            max_members=limits.artifact_max_members,
            max_total_bytes=limits.artifact_max_bytes,
        )
        children = list(staging.iterdir())
        if len(children) != 1 or not children[0].is_dir():
            raise CliError(f"artifact {file_id} is not one folder: {[c.name for c in children]}")
        target = out / children[0].name
        if target.exists():
            raise CliError(
                f"{target} already exists; remove it or pick another -o", ExitCode.REFUSED
            )
        children[0].rename(target)
        return target  # as the user gave -o: relative stays relative
    except DataBankError as exc:
        raise databank_error(exc, f"download {file_id}") from exc
    except UnsafeArchiveError as exc:
        raise CliError(f"artifact {file_id} refused: {exc}") from exc
    finally:
        tar.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    """The `modeltrainer` console script."""
    app(prog_name="modeltrainer")


# -- sweep --------------------------------------------------------------------------------


@sweep_app.command("create")
@handled
def sweep_create(
    file: Annotated[
        Path,
        typer.Argument(help="the sweep as JSON (the body of POST /sweeps); - reads stdin"),
    ],
    wait: Annotated[bool, typer.Option("--wait", help="wait until it ends, then show it")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a sweep from a JSON file: {base: <run request>, space: {parameters: ...},
    max_concurrent, early_stopping}; prints its id (every trial is checked first)."""
    o = _options(as_json)
    text = sys.stdin.read() if str(file) == "-" else file.read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{file}: not JSON ({exc})", ExitCode.USAGE) from exc
    if not isinstance(body, dict):
        raise CliError(f"{file}: a sweep is a JSON object", ExitCode.USAGE)
    api = o.api()
    accepted = api.post(SweepAccepted, "/sweeps", body)
    if not wait:
        if o.output.as_json:
            o.output.model(accepted)
        else:
            o.output.line(accepted.sweep_id)
        return
    o.output.note(f"sweep {accepted.sweep_id}: {accepted.trials} trials queued")
    while True:
        info = api.get(SweepInfo, f"/sweeps/{accepted.sweep_id}")
        if info.status.terminal:
            break
        time.sleep(o.poll_interval)
    _show_sweep(o, info)
    if info.status is not Status.COMPLETED:
        raise typer.Exit(int(ExitCode.FAILURE))


@sweep_app.command("show")
@handled
def sweep_show(sweep_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """A sweep: status, its trials best first (stopped ones marked) and its best run."""
    o = _options(as_json)
    _show_sweep(o, o.api().get(SweepInfo, f"/sweeps/{sweep_id}"))


def _show_sweep(o: Options, info: SweepInfo) -> None:
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.line(f"{info.sweep_id} {info.status.value}: {info.message or '-'}")
        o.output.out.print(sweep_leaderboard(info))


@sweep_app.command("list")
@handled
def sweep_list(
    status: Annotated[Status | None, typer.Option("--status")] = None,
    tag: TagFilterOption = None,
    name: NameFilterOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Sweeps, newest first."""
    o = _options(as_json)
    page = o.api().get(SweepList, "/sweeps", _list_params(limit, offset, status, tag, name))
    if o.output.as_json:
        o.output.model(page)
    else:
        o.output.out.print(sweep_table(page.items))


@sweep_app.command("cancel")
@handled
def sweep_cancel(sweep_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """Cancel a sweep and its trials (exit 4 when it had already ended)."""
    o = _options(as_json)
    info = o.api().post(SweepInfo, f"/sweeps/{sweep_id}/cancel", {})
    if o.output.as_json:
        o.output.model(info)
    else:
        o.output.line(f"{info.sweep_id} {info.status.value}: {info.message or '-'}")
