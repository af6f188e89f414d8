"""The `modeltrainer` CLI against the real stack: a Hypercorn API process, a worker, Data Bank.

Commands run in-process through typer's CliRunner, pointed at the API's URL; one test runs
the module as the console script does, in a child process.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner, Result

from model_trainer.api.schemas import CorpusInfo, RunInfo
from model_trainer.cli.app import app
from model_trainer.cli.config import load_cli_settings
from model_trainer.cli.render import Output, corpus_table, printable, run_table
from tests.base_models import base_model_folder
from tests.databank_fixtures import UPLOAD_KEY
from tests.processes import SERVER_DIR, child_env, free_port
from tests.stack import Api, Stack, json_dict, num, poll

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

API_KEY = "cli-test-api-key"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "gu", "sh", "or"]


def _text() -> str:
    """A made-up language with enough distinct pairs for a 400-token BPE vocabulary."""
    rng = random.Random(7)
    lines = []
    for _ in range(3000):
        words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(9)]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("cli-stack"), redis_url)
    s.start_worker("worker-a")
    yield s
    s.close()


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(stack, tmp_path_factory.mktemp("cli-api"), API_KEY)
    yield server
    server.stop()


def cli(
    api: Api, stack: Stack, *args: str, key: str = API_KEY, env: dict[str, str] | None = None
) -> Result:
    """`modeltrainer --url ... <args>` in-process; stdout and stderr apart."""
    flags = [
        "--url",
        api.url,
        "--api-key",
        key,
        "--data-bank-url",
        stack.databank.url,
        "--data-bank-key",
        UPLOAD_KEY,
        "--poll-interval",
        "0.2",
    ]
    return CliRunner().invoke(app, [*flags, *args], env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def as_json(result: Result) -> dict[str, object]:
    return json_dict(json.loads(ok(result)))


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-corpus") / "corpus.txt"
    path.write_text(_text())
    return path


@pytest.fixture(scope="module")
def corpus_id(api: Api, stack: Stack, corpus_path: Path) -> str:
    return ok(cli(api, stack, "corpus", "upload", str(corpus_path))).strip()


@pytest.fixture(scope="module")
def tokenizer_id(api: Api, stack: Stack, corpus_id: str) -> str:
    done = as_json(
        cli(
            api,
            stack,
            "--json",
            "tokenizer",
            "train",
            "--corpus",
            corpus_id,
            "--vocab-size",
            "400",
            "--wait",
        )
    )
    assert done["status"] == "completed", done
    return str(done["tokenizer_id"])


@pytest.fixture(scope="module")
def trained(api: Api, stack: Stack, corpus_id: str, tokenizer_id: str) -> tuple[str, str]:
    """(run_id, what `run train --follow` printed) of one tiny run."""
    result = cli(
        api,
        stack,
        "run",
        "train",
        "--corpus",
        corpus_id,
        "--tokenizer",
        tokenizer_id,
        "--size",
        "tiny",
        "--n-layer",
        "2",
        "--n-embd",
        "64",
        "--max-steps",
        "30",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--warmup-steps",
        "5",
        "--eval-interval",
        "10",
        *("--name", "cli tiny run", "--tag", "cli-test", "--tag", "tiny"),
        *("--meta", "purpose=a test", "--meta", "owner=cli"),
        "--follow",
    )
    out = ok(result)
    first = out.splitlines()[0]
    run_id = first.split()[0]
    assert run_id.startswith("run-"), out
    return run_id, out


def test_help_names_the_exit_codes() -> None:
    """The console script's module answers --help with the exit codes (no server needed)."""
    done = subprocess.run(
        [sys.executable, "-m", "model_trainer.cli", "--help"],
        cwd=SERVER_DIR,
        env=child_env({"COLUMNS": "200"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Exit codes" in done.stdout
    assert "3 not found (404)" in done.stdout
    assert "5 unavailable" in done.stdout


def test_corpus_upload_prints_a_file_id_data_bank_has(stack: Stack, corpus_id: str) -> None:
    assert len(corpus_id) == 64
    with stack.bank() as bank:
        assert bank.exists(corpus_id)


def test_corpus_upload_goes_through_the_api_and_is_listed(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    """`corpus upload` is `POST /corpora`: `corpus list` shows it right after, by its name or
    --name, with its size and lines (as the README's walkthrough expects)."""
    body = "A corpus sent through the CLI.\nTwo lines.\n"
    path = tmp_path / "mine.txt"
    path.write_text(body)
    file_id = ok(cli(api, stack, "corpus", "upload", str(path))).strip()
    listed = as_json(cli(api, stack, "corpus", "list", "--json"))
    assert isinstance(listed["items"], list)
    first = json_dict(listed["items"][0])
    assert (first["file_id"], first["name"], first["size"], first["lines"]) == (
        file_id,
        "mine.txt",
        len(body),
        2,
    )
    table = ok(cli(api, stack, "corpus", "list"))
    assert file_id in table  # the whole 64-digit id, never cut
    named = as_json(
        cli(api, stack, "corpus", "upload", str(path), "--name", "shakespeare", "--json")
    )
    assert (named["file_id"], named["name"]) == (file_id, "shakespeare")  # the same bytes
    again = as_json(cli(api, stack, "--json", "corpus", "list"))
    assert isinstance(again["items"], list)
    assert json_dict(again["items"][0]) == named  # listed under its latest name


def test_corpus_upload_of_parquet_goes_to_data_bank_directly(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    """The API takes text corpora only; a Parquet file still uploads (to Data Bank), said so."""
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": _text().splitlines()[:50]}), path)
    result = cli(api, stack, "corpus", "upload", str(path))
    file_id = ok(result).strip()
    assert "uploading to Data Bank directly" in result.stderr
    with stack.bank() as bank:
        assert bank.exists(file_id)
    listed = as_json(cli(api, stack, "--json", "corpus", "list"))
    assert isinstance(listed["items"], list)
    assert file_id not in [json_dict(i)["file_id"] for i in listed["items"]]


def test_corpus_upload_over_the_api_limit_falls_back_to_data_bank(
    stack: Stack, tmp_path: Path
) -> None:
    """An API whose upload cap the file is over answers 413: the CLI says so and uploads it to
    Data Bank directly instead of failing."""
    small = Api(stack, tmp_path, API_KEY, LIMITS__CORPUS_UPLOAD_MAX_BYTES="1024")
    try:
        path = tmp_path / "big.txt"
        path.write_text(_text()[:50_000])
        result = cli(small, stack, "corpus", "upload", str(path))
        file_id = ok(result).strip()
        assert "over the API's upload limit" in result.stderr
        assert "1024-byte limit" in result.stderr
        with stack.bank() as bank:
            assert bank.exists(file_id)
    finally:
        small.stop()


def test_tokenizer_show_and_list(api: Api, stack: Stack, tokenizer_id: str) -> None:
    shown = as_json(cli(api, stack, "--json", "tokenizer", "show", tokenizer_id))
    assert shown["status"] == "completed"
    assert shown["file_id"]
    listed = as_json(cli(api, stack, "--json", "tokenizer", "list"))
    items = listed["items"]
    assert isinstance(items, list)
    assert tokenizer_id in [json_dict(i)["tokenizer_id"] for i in items]
    table = ok(cli(api, stack, "tokenizer", "list"))
    assert "completed" in table


def test_run_train_follow_prints_the_result(
    api: Api, stack: Stack, trained: tuple[str, str]
) -> None:
    run_id, out = trained
    assert f"{run_id} completed" in out
    assert "bits/char" in out
    listed = as_json(cli(api, stack, "--json", "run", "list"))
    items = listed["items"]
    assert isinstance(items, list)
    assert run_id in [json_dict(i)["run_id"] for i in items]
    completed = as_json(cli(api, stack, "--json", "run", "list", "--status", "completed"))
    assert isinstance(completed["items"], list)
    assert run_id in [json_dict(i)["run_id"] for i in completed["items"]]
    shown = as_json(cli(api, stack, "--json", "run", "show", run_id))
    assert shown["status"] == "completed"
    progress = json_dict(shown["progress"])
    assert progress["step"] == 30
    assert (shown["name"], shown["tags"]) == ("cli tiny run", ["cli-test", "tiny"])
    assert shown["metadata"] == {"purpose": "a test", "owner": "cli"}
    text = ok(cli(api, stack, "run", "show", run_id))
    assert "completed" in text and "cli tiny run" in text and "metadata.purpose" in text
    for filters in (
        ("--tag", "cli-test"),
        ("--name", "CLI tiny"),
        ("--tag", "tiny", "--status", "completed"),
    ):
        found = as_json(cli(api, stack, "--json", "run", "list", *filters))["items"]
        assert isinstance(found, list)
        assert [json_dict(i)["run_id"] for i in found] == [run_id], filters
    assert as_json(cli(api, stack, "--json", "run", "list", "--name", "nope"))["items"] == []
    table = ok(cli(api, stack, "run", "list", "--tag", "cli-test"))
    assert "cli tiny run [cli-test, tiny]" in table
    bad = cli(api, stack, "run", "train", "--corpus", "x", "--tokenizer", "y", "--meta", "novalue")
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.stderr


def test_json_goes_after_the_command_too(
    api: Api, stack: Stack, trained: tuple[str, str], tokenizer_id: str
) -> None:
    """`run list --json` (as gh and kubectl take it) is `--json run list`; errors too."""
    run_id, _ = trained
    after = as_json(cli(api, stack, "run", "list", "--json"))
    before = as_json(cli(api, stack, "--json", "run", "list"))
    assert after == before
    assert isinstance(after["items"], list)
    assert run_id in [json_dict(i)["run_id"] for i in after["items"]]
    shown = as_json(cli(api, stack, "tokenizer", "show", tokenizer_id, "--json"))
    assert shown["tokenizer_id"] == tokenizer_id
    missing = cli(api, stack, "run", "show", "run-0000000000000000", "--json")
    assert missing.exit_code == 3
    assert json_dict(json_dict(json.loads(missing.stderr))["error"])["status"] == 404


def test_run_list_never_cuts_ids(api: Api, stack: Stack, trained: tuple[str, str]) -> None:
    """Ids are copied from the table: whole in a pipe and at any terminal width, where the
    other columns shrink instead."""
    run_id, _ = trained
    piped = ok(cli(api, stack, "run", "list", env={"COLUMNS": "40"}))
    assert run_id in piped
    assert "completed" in piped  # a pipe gets every column whole
    listed = as_json(cli(api, stack, "--json", "run", "list"))
    assert isinstance(listed["items"], list)
    runs = [RunInfo.model_validate(i) for i in listed["items"]]
    for width in (60, 80):
        buffer = io.StringIO()
        Console(file=buffer, width=width, force_terminal=True, color_system=None).print(
            run_table(runs)
        )
        text = buffer.getvalue()
        assert all(r.run_id in text for r in runs), text
        assert max(len(line) for line in text.splitlines()) <= width


def test_show_of_an_ended_run_has_no_eta_nor_speed(
    api: Api, stack: Stack, trained: tuple[str, str]
) -> None:
    run_id, _ = trained
    shown = ok(cli(api, stack, "run", "show", run_id))
    assert "completed" in shown
    assert "eta" not in shown.split()
    assert "tokens/s" not in shown


def test_follow_of_a_failing_run_exits_1(
    api: Api, stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    """A learning rate that diverges fails the run (a user error): --json --follow says so
    and exits 1."""
    result = cli(
        api,
        stack,
        "--json",
        "run",
        "train",
        "--corpus",
        corpus_id,
        "--tokenizer",
        tokenizer_id,
        "--n-layer",
        "2",
        "--n-embd",
        "64",
        "--max-steps",
        "60",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--warmup-steps",
        "0",
        "--lr",
        "100",
        "--grad-clip",
        "0",
        "--follow",
    )
    assert result.exit_code == 1, (result.stdout, result.stderr)
    run = json_dict(json_dict(json.loads(result.stdout))["run"])
    assert run["status"] == "failed"
    assert "learning rate" in str(run["message"]).lower()


def test_run_eval_on_the_test_split(api: Api, stack: Stack, trained: tuple[str, str]) -> None:
    run_id, _ = trained
    result = as_json(cli(api, stack, "--json", "run", "eval", run_id, "--split", "test"))
    assert result["status"] == "completed"
    assert result["split"] == "test"
    assert isinstance(result["bits_per_char"], float)


def test_run_logs_tail_and_follow(api: Api, stack: Stack, trained: tuple[str, str]) -> None:
    run_id, _ = trained
    lines = as_json(cli(api, stack, "--json", "run", "logs", run_id, "--tail", "5"))
    assert isinstance(lines["lines"], list)
    assert lines["lines"]
    # The run is over: the stream sends what it has and ends.
    streamed = ok(cli(api, stack, "run", "logs", run_id, "--follow"))
    assert streamed.strip()


def test_run_download_extracts_the_model(
    api: Api, stack: Stack, trained: tuple[str, str], tmp_path: Path
) -> None:
    run_id, _ = trained
    folder = Path(ok(cli(api, stack, "run", "download", run_id, "-o", str(tmp_path))).strip())
    assert folder == tmp_path / f"model-{run_id}"  # the path as given (here absolute)
    assert (folder / "config.json").is_file()
    assert list(folder.glob("*.safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no tar or staging left
    again = cli(api, stack, "run", "download", run_id, "-o", str(tmp_path))
    assert again.exit_code == 4, again.stderr


def test_run_download_prints_the_path_relative_as_given(
    api: Api,
    stack: Stack,
    trained: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's `run download <id> -o models/` prints models/model-<id>."""
    run_id, _ = trained
    monkeypatch.chdir(tmp_path)
    printed = ok(cli(api, stack, "run", "download", run_id, "-o", "models/")).strip()
    assert printed == f"models/model-{run_id}"
    assert (tmp_path / printed / "config.json").is_file()


def test_cancel_of_a_completed_run_is_refused(
    api: Api, stack: Stack, trained: tuple[str, str]
) -> None:
    run_id, _ = trained
    result = cli(api, stack, "run", "cancel", run_id)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert "HTTP 409" in result.stderr


@pytest.fixture
def long_run(api: Api, stack: Stack, corpus_id: str, tokenizer_id: str) -> Iterator[str]:
    """A tiny run with a budget far longer than the test, once it has stepped. Whatever the
    test does, it is cancelled after, so that it never holds the module's one worker."""
    train = [
        *("run", "train", "--corpus", corpus_id, "--tokenizer", tokenizer_id),
        *("--n-layer", "1", "--n-embd", "32", "--seq-len", "16", "--batch-size", "4"),
        *("--max-seconds", "3600"),
    ]
    run_id = ok(cli(api, stack, *train)).strip()

    def show() -> dict[str, object]:
        return as_json(cli(api, stack, "--json", "run", "show", run_id))

    try:
        poll(
            show,
            lambda r: r["status"] == "running" and num(json_dict(r["progress"])["step"]) >= 1,
            stall_timeout=120,
        )
        yield run_id
    finally:
        httpx.post(f"{api.url}/runs/{run_id}/cancel", headers={"X-API-Key": API_KEY})  # 409: ended
        poll(show, lambda r: r["status"] in ("completed", "failed", "cancelled"), 120)


def test_cancel_waits_until_the_run_has_stopped(api: Api, stack: Stack, long_run: str) -> None:
    """`run cancel` prints the status the cancel ended in, not the one before the worker saw
    it; `run show` of the cancelled run then shows no ETA nor speed."""
    run_id = long_run
    result = cli(api, stack, "run", "cancel", run_id)
    assert ok(result).startswith(f"{run_id} cancelled"), result.stdout
    assert f"cancelling {run_id}" in result.stderr
    shown = as_json(cli(api, stack, "--json", "run", "show", run_id))
    assert shown["status"] == "cancelled"
    text = ok(cli(api, stack, "run", "show", run_id))
    assert "cancelled" in text
    assert "eta" not in text.split()
    assert "tokens/s" not in text


def test_pause_waits_until_paused_and_resume_queues_it_with_more_time(
    api: Api, stack: Stack, long_run: str
) -> None:
    run_id = long_run
    result = cli(api, stack, "run", "pause", run_id)
    assert ok(result).startswith(f"{run_id} paused at step "), result.stdout
    shown = as_json(cli(api, stack, "--json", "run", "show", run_id))
    assert shown["status"] == "paused"
    step = num(json_dict(shown["progress"])["step"])
    out = ok(cli(api, stack, "run", "resume", run_id, "--max-seconds", "7200"))
    assert out.startswith(f"{run_id} queued: resumes from step {step:g}/"), out
    shown = as_json(cli(api, stack, "--json", "run", "show", run_id))
    assert json_dict(shown["request"])["max_train_seconds"] == 7200
    again = cli(api, stack, "run", "resume", run_id)
    assert again.exit_code == 4 and "HTTP 409" in again.stderr


def test_compare_prints_figures_differences_and_samples(
    api: Api, stack: Stack, trained: tuple[str, str], long_run: str
) -> None:
    """A completed run beside a running one: its sample is text of its model, the same each
    time (seed 0); the running one has none and says why."""
    run_id = trained[0]
    args = ("run", "compare", run_id, long_run, "--prompt", "To be", "--max-new-tokens", "8")
    out = ok(cli(api, stack, *args))
    assert "final figures" in out and "settings that differ" in out and "samples" in out
    assert "no model until it completes" in out

    def compared() -> tuple[dict[str, object], dict[str, object], list[object]]:
        body = as_json(cli(api, stack, "--json", *args))
        runs, differing = body["runs"], body["differing"]
        assert isinstance(runs, list) and isinstance(differing, list)
        done, running = (json_dict(r) for r in runs)
        return done, running, differing

    done, running, differing = compared()
    sample = json_dict(done["sample"])
    assert isinstance(sample["text"], str) and sample["text"]
    assert json_dict(compared()[0]["sample"]) == sample
    assert json_dict(running["sample"])["text"] is None
    fields = [json_dict(d)["field"] for d in differing]
    assert "max_train_seconds" in fields and "n_layer" in fields
    assert json_dict(done["final"])["bits_per_char"] is not None
    curve = done["curve"]
    assert isinstance(curve, list) and len(curve) >= 3


def test_a_sweep_from_a_file_waits_and_shows_its_leaderboard(
    api: Api, stack: Stack, corpus_id: str, tokenizer_id: str, tmp_path: Path
) -> None:
    base = {
        "corpus_file_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "n_layer": 1,
        "n_embd": 32,
        "max_seq_len": 16,
        "batch_size": 4,
        "max_steps": 20,
        "eval_interval": 10,
    }
    sweep = {
        "name": "cli sweep",
        "tags": ["cli-sweep"],
        "base": base,
        "space": {"parameters": {"learning_rate": {"values": [0.003, 0.01]}}},
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    result = cli(api, stack, "sweep", "create", str(path), "--wait")
    out = ok(result)
    assert "completed: best run run-" in out
    assert "learning_rate=0.003" in out and "learning_rate=0.01" in out
    listed = as_json(cli(api, stack, "--json", "sweep", "list", "--tag", "cli-sweep"))["items"]
    assert isinstance(listed, list) and len(listed) == 1
    shown = json_dict(listed[0])
    assert shown["status"] == "completed" and shown["name"] == "cli sweep"
    again = cli(api, stack, "sweep", "cancel", str(shown["sweep_id"]))
    assert again.exit_code == 4 and "HTTP 409" in again.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert cli(api, stack, "sweep", "create", str(bad)).exit_code == 2


def test_cancel_no_wait_says_it_is_cancelling(api: Api, stack: Stack, long_run: str) -> None:
    run_id = long_run
    out = ok(cli(api, stack, "run", "cancel", run_id, "--no-wait"))
    # The worker sees the cancel at its next step: almost always after the answer.
    assert out.startswith((f"{run_id} cancelling: requested while running", f"{run_id} cancelled"))
    ended = poll(
        lambda: as_json(cli(api, stack, "--json", "run", "show", run_id)),
        lambda r: r["status"] in ("completed", "failed", "cancelled"),
        stall_timeout=120,
    )
    assert ended["status"] == "cancelled"


def test_generate_prints_samples_and_is_reproducible(
    api: Api, stack: Stack, trained: tuple[str, str]
) -> None:
    run_id, _ = trained
    args = ("run", "generate", run_id, "To be", "--max-new-tokens", "8", "--seed", "7")
    first = ok(cli(api, stack, *args))
    assert first.strip() and ok(cli(api, stack, *args)) == first  # same seed, same text
    answer = json.loads(ok(cli(api, stack, "--json", *args)))
    assert answer["new_tokens"] == 8 and len(answer["samples"]) == 1


def test_unknown_ids_exit_3(api: Api, stack: Stack) -> None:
    result = cli(api, stack, "run", "show", "run-0000000000000000")
    assert result.exit_code == 3, result.stderr
    assert "unknown run" in result.stderr
    generate = cli(api, stack, "run", "generate", "run-0000000000000000", "hi")
    assert generate.exit_code == 3
    assert "unknown run" in generate.stderr
    tokenizer = cli(api, stack, "--json", "tokenizer", "show", "tok-nope")
    assert tokenizer.exit_code == 3
    error = json_dict(json_dict(json.loads(tokenizer.stderr))["error"])
    assert error["status"] == 404
    assert error["exit_code"] == 3


def test_refused_request_exits_4(api: Api, stack: Stack, corpus_id: str) -> None:
    result = cli(
        api, stack, "run", "train", "--corpus", corpus_id, "--tokenizer", "t", "--n-head", "3"
    )
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert "divisible" in result.stderr
    # --family, --n-kv-head, --optimizer and --muon-lr reach the server's checks.
    base = ("run", "train", "--corpus", corpus_id, "--tokenizer", "t")
    gqa = cli(api, stack, *base, "--family", "llama", "--n-kv-head", "3")
    assert gqa.exit_code == 4, (gqa.stdout, gqa.stderr)
    assert "n_kv_head (3) must divide n_head (4)" in gqa.stderr
    muon = cli(api, stack, *base, "--optimizer", "adamw", "--muon-lr", "0.02")
    assert muon.exit_code == 4, (muon.stdout, muon.stderr)
    assert "muon_learning_rate applies to optimizer muon only" in muon.stderr


def test_wrong_api_key_exits_1(api: Api, stack: Stack) -> None:
    result = cli(api, stack, "run", "list", key="not-the-key")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "refused the key" in result.stderr
    assert "not-the-key" not in result.stderr


def test_api_down_exits_5(stack: Stack) -> None:
    result = CliRunner().invoke(app, ["--url", f"http://127.0.0.1:{free_port()}", "run", "list"])
    assert result.exit_code == 5, (result.stdout, result.stderr)
    assert "does not answer" in result.stderr


def test_usage_errors_exit_2(api: Api, stack: Stack) -> None:
    both = cli(
        api,
        stack,
        "run",
        "train",
        "--corpus",
        "c",
        "--tokenizer",
        "t",
        "--max-steps",
        "3",
        "--epochs",
        "1",
    )
    assert both.exit_code == 2
    assert "at most one" in both.stderr
    assert cli(api, stack, "run", "train", "--corpus", "c").exit_code == 2
    assert cli(api, stack, "run", "list", "--status", "sleeping").exit_code == 2


def test_settings_flags_then_environment_then_env_file_then_the_stack_never_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `.env` in the folder the CLI runs in is never read: it could point the CLI (and
    its key) anywhere. The project's stack folder and a file named by --env-file are."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "MODEL_TRAINER_URL",
        "MODEL_TRAINER_API_KEY",
        "DATA_BANK_URL",
        "DATA_BANK_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    stack_dir = tmp_path / "project" / ".stack"
    monkeypatch.setenv("STACK_DIR", str(stack_dir))
    assert load_cli_settings().api_url == "http://127.0.0.1:8000"
    (tmp_path / ".env").write_text("MODEL_TRAINER_URL=http://listener:1\n")
    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "client.env").write_text("MODEL_TRAINER_URL=http://listener:2\n")
    assert load_cli_settings().api_url == "http://127.0.0.1:8000"  # neither is read
    # What `make start` wrote, in the project's stack folder.
    stack_dir.mkdir(parents=True)
    (stack_dir / "client.env").write_text(
        "export MODEL_TRAINER_URL=http://stack:9\nexport MODEL_TRAINER_API_KEY=stack-key\n"
    )
    from_stack = load_cli_settings()
    assert from_stack.api_url == "http://stack:9"
    assert from_stack.api_key is not None and from_stack.api_key.get_secret_value() == "stack-key"
    # --env-file wins over the stack's file; server settings in it are ignored.
    named = tmp_path / "mine.env"
    named.write_text(
        "MODEL_TRAINER_URL=http://named:1\nDATA_BANK_API_KEY=from-file\n"
        "APP__DATA_ROOT=/server/setting/ignored\nREDIS_URL=redis://x\n"
    )
    layered = load_cli_settings(env_file=named)
    assert layered.api_url == "http://named:1"
    assert layered.api_key is not None and layered.api_key.get_secret_value() == "stack-key"
    assert layered.data_bank_api_key is not None
    assert layered.data_bank_api_key.get_secret_value() == "from-file"
    with pytest.raises(FileNotFoundError):
        load_cli_settings(env_file=tmp_path / "typo.env")
    monkeypatch.setenv("MODEL_TRAINER_URL", "http://env:2")
    assert load_cli_settings(env_file=named).api_url == "http://env:2"
    assert load_cli_settings(api_url="http://flag:3").api_url == "http://flag:3"
    # The CLI itself: a URL from the current folder's .env is never contacted.
    monkeypatch.delenv("MODEL_TRAINER_URL")
    (stack_dir / "client.env").unlink()
    unreachable = CliRunner().invoke(app, ["--url", "http://127.0.0.1:1", "run", "list"])
    assert unreachable.exit_code == 5 and "listener" not in unreachable.stderr


# ESC sequences (clear the screen, set the title, a hyperlink), CR, BEL, a C1 CSI and a
# right-to-left override: what a model, a corpus name or an error message may hold.
HOSTILE = "a\x1b[2J\x1b]0;pwned\x07b\rc\x9b31md\u202ee"


def _no_raw_controls(text: str) -> None:
    assert not any(c in text for c in "\x1b\x07\r\x9b\u202e"), repr(text)


def test_output_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """Generated samples, notes, tables (corpus names, run messages) and JSON reach the
    terminal with every control character escaped, so nothing printed can drive it."""
    out = Output(as_json=False)
    out.line(f"sample one\n{HOSTILE}\tend")  # `run generate` prints each sample so
    out.note(f"note {HOSTILE}")
    corpus = CorpusInfo(
        file_id="ab" * 32, name=HOSTILE, size=1, lines=1, created_at=0, owner="alice"
    )
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=True, color_system=None)
    console.print(corpus_table([corpus]))
    console.print(Text.from_markup("[red]x[/red]"))  # what markup would have done
    table = buffer.getvalue()
    Output(as_json=True).json({"samples": [HOSTILE]})
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, table.split("x")[0]):
        _no_raw_controls(text)
    assert "sample one\n" in captured.out and "\tend" in captured.out  # layout kept
    assert "a\\x1b[2J\\x1b]0;pwned\\x07b\\rc\\x9b31md\\u202ee" in captured.out
    assert "a\\x1b[2J" in table
    as_json = captured.out[captured.out.index("{") :]
    assert json.loads(as_json) == {"samples": [HOSTILE]}  # the same value
    assert printable("[bold]x[/bold]") == "[bold]x[/bold]"


def test_tokenizer_and_run_train_read_a_jsonl_corpus_by_its_field(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    """--corpus-format and --text-field reach the jobs: a wrong field fails the tokenizer
    (exit 1, the user error in its answer); the right one trains it and a tiny run."""
    path = tmp_path / "corpus.jsonl"
    lines = _text().splitlines()
    path.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(lines)))
    corpus = ok(cli(api, stack, "corpus", "upload", str(path))).strip()
    base = ["tokenizer", "train", "--corpus", corpus, "--vocab-size", "300", "--wait"]
    wrong = cli(api, stack, "--json", *base, "--corpus-format", "jsonl", "--text-field", "content")
    assert wrong.exit_code == 1, (wrong.stdout, wrong.stderr)
    error = json_dict(json_dict(json.loads(wrong.stdout))["error"])
    assert error["code"] == "CORPUS_FIELD_NOT_FOUND" and "'content'" in str(error["message"])
    refused = cli(api, stack, *base, "--corpus-format", "text", "--text-field", "body")
    assert refused.exit_code == 4, (refused.stdout, refused.stderr)

    done = as_json(cli(api, stack, "--json", *base, "--text-field", "body"))  # auto: JSONL
    assert done["status"] == "completed", done
    assert json_dict(done["request"])["text_field"] == "body"
    tiny = [
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--max-steps",
        "3",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--warmup-steps",
        "0",
        "--eval-interval",
        "3",
    ]
    train = ["run", "train", "--corpus", corpus, "--tokenizer", str(done["tokenizer_id"]), *tiny]
    # No --text-field: the run reads its tokenizer's corpus as the tokenizer did.
    run = as_json(cli(api, stack, "--json", *train, "--follow"))
    assert json_dict(run["run"])["status"] == "completed", run
    request = json_dict(json_dict(run["run"])["request"])
    assert (request["corpus_format"], request["text_field"]) == ("auto", "body")
    # What the request says wins: a wrong field fails the run as the user's error.
    wrong_run = cli(api, stack, "--json", *train, "--text-field", "content", "--follow")
    assert wrong_run.exit_code == 1, (wrong_run.stdout, wrong_run.stderr)
    failed = json_dict(json_dict(json.loads(wrong_run.stdout))["run"])
    assert json_dict(failed["error"])["code"] == "CORPUS_FIELD_NOT_FOUND"


def test_a_base_model_uploaded_fine_tuned_and_compared(
    api: Api, stack: Stack, corpus_id: str, tmp_path: Path
) -> None:
    folder = base_model_folder(tmp_path / "my-gpt2", "gpt2", _text()[:20_000])
    base = ok(cli(api, stack, "model", "upload", str(folder))).strip()
    listed = ok(cli(api, stack, "model", "list"))
    assert base in listed and "my-gpt2" in listed and "GPT2LMHeadModel" in listed
    both = cli(
        api, stack, "run", "train", "--corpus", corpus_id, "--tokenizer", "t", "--base-model", base
    )
    assert both.exit_code == 2 and "not both" in both.stderr
    result = as_json(
        cli(
            api,
            stack,
            "--json",
            "run",
            "train",
            "--corpus",
            corpus_id,
            "--base-model",
            base,
            "--method",
            "lora",
            "--lora-r",
            "4",
            "--max-steps",
            "10",
            "--seq-len",
            "32",
            "--follow",
        )
    )
    run = json_dict(result["run"])
    assert run["status"] == "completed", run
    assert json_dict(result["eval"])["base"] is not None
    run_id = str(run["run_id"])
    args = ("run", "generate", run_id, "To be", "--max-new-tokens", "6", "--seed", "3")
    after = ok(cli(api, stack, *args))
    before = ok(cli(api, stack, *args, "--checkpoint", "base"))
    assert before.strip() and after.strip()
    wrong = cli(api, stack, *args, "--checkpoint", "first")
    assert wrong.exit_code == 2
