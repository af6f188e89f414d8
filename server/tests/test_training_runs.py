"""Training runs end to end: HTTP API -> real worker -> Data Bank -> a model transformers loads."""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from model_trainer.databank.archive import safe_extract
from model_trainer.store.keys import TOKENIZER_KEYS
from model_trainer.store.records import RecordMeta, StatusStore, TokenizerSummary
from model_trainer.training.config import MAX_LEARNING_RATE
from model_trainer.training.evaluate import CanGenerate
from tests.event_contracts import EventCollector
from tests.stack import Stack, get_json, json_dict, num, poll

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "tinyshakespeare.txt"


def _text() -> str:
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text()[:150_000]
    words = [
        "to",
        "be",
        "or",
        "not",
        "to",
        "be",
        "that",
        "is",
        "the",
        "question",
        "whether",
        "tis",
        "nobler",
        "in",
        "the",
        "mind",
    ]
    return "\n".join(" ".join(words[(i + j) % len(words)] for j in range(9)) for i in range(4000))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("run-stack"), redis_url)
    s.start_worker("worker-a")
    yield s
    s.close()


@pytest.fixture(scope="module")
def corpus_id(stack: Stack) -> str:
    return stack.upload_text(_text())


@pytest.fixture(scope="module")
def tokenizer_id(stack: Stack, corpus_id: str) -> str:
    with stack.client() as client:
        body = {"method": "bpe", "vocab_size": 400, "corpus_file_id": corpus_id}
        accepted = client.post("/tokenizers/train", json=body).json()
        done = poll(
            lambda: client.get(f"/tokenizers/{accepted['tokenizer_id']}").json(),
            lambda a: a["status"] in ("completed", "failed"),
            120,
        )
    assert done["status"] == "completed", done
    return str(accepted["tokenizer_id"])


def _run_body(corpus_id: str, tokenizer_id: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "corpus_file_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "model_size": "tiny",
        "n_layer": 2,
        "n_embd": 64,
        "max_seq_len": 32,
        "batch_size": 8,
        "max_steps": 60,
        "warmup_steps": 5,
        "eval_interval": 20,
        "eval_batches": 2,
        "checkpoint_interval": 20,
        "learning_rate": 3e-3,
        "user_id": 4242,
    }
    body.update(overrides)
    return body


def _submit(client: TestClient, body: dict[str, object]) -> str:
    response = client.post("/runs/train", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["job_id"] == accepted["run_id"]
    return str(accepted["run_id"])


def _wait_status(
    client: TestClient, run_id: str, statuses: set[str], timeout: float
) -> dict[str, object]:
    return poll(
        lambda: get_json(client, f"/runs/{run_id}"), lambda a: a["status"] in statuses, timeout
    )


def test_full_run_trains_evaluates_and_loads(
    stack: Stack, corpus_id: str, tokenizer_id: str, tmp_path: Path
) -> None:
    events = EventCollector(stack.redis_url)
    seen: list[str] = []
    try:
        with stack.client() as client:
            run_id = _submit(client, _run_body(corpus_id, tokenizer_id))

            def status() -> dict[str, object]:
                answer = get_json(client, f"/runs/{run_id}")
                if not seen or seen[-1] != answer["status"]:
                    seen.append(str(answer["status"]))
                return answer

            done = poll(status, lambda a: a["status"] in ("completed", "failed"), 240)
            assert done["status"] == "completed", done
            assert seen[0] in ("queued", "running") and "running" in seen, seen
            progress = done["progress"]
            assert isinstance(progress, dict)
            assert progress["step"] == 60 and progress["total_steps"] == 60
            assert progress["percent"] == 100.0
            # How the steps ran, and why (the suite's workers never compile: conftest).
            execution = progress["execution"]
            assert isinstance(execution, dict)
            assert execution["precision"] in ("fp32", "bf16") and execution["compiled"] is False
            assert execution["compile_reason"] == "auto: no C++ compiler on this worker"
            assert num(execution["setup_seconds"]) >= 0

            metrics = client.get(f"/runs/{run_id}/metrics").json()["points"]
            losses = [p["train_loss"] for p in metrics if "train_loss" in p]
            assert len(losses) >= 3
            assert losses[-1] < losses[0]

            evaluation = client.get(f"/runs/{run_id}/eval").json()
            assert evaluation["status"] == "completed"
            for name in ("loss", "perplexity", "bits_per_char", "tokens_per_char"):
                assert isinstance(evaluation[name], float) and evaluation[name] > 0, name

            logs = client.get(f"/runs/{run_id}/logs", params={"tail": 500}).json()["lines"]
            log_events = [line.get("event") for line in logs]
            assert "run_started" in log_events and "job_completed" in log_events
            assert "artifact_uploaded" in log_events
            assert all(line.get("run_id") == run_id for line in logs)

            # SSE: the whole stream replays from Redis (the API has none of the worker's disk)
            # and ends with the run; Last-Event-ID resumes after a given line.
            with client.stream("GET", f"/runs/{run_id}/logs/stream") as stream:
                body = "".join(stream.iter_text())
            ids = [line[4:] for line in body.splitlines() if line.startswith("id: ")]
            assert len(ids) == len(logs)
            assert body.rstrip().endswith('data: {"status": "completed"}')
            resume = client.get(f"/runs/{run_id}/logs/stream", headers={"Last-Event-ID": ids[-3]})
            assert [x[4:] for x in resume.text.splitlines() if x.startswith("id: ")] == ids[-2:]

            pointer = client.get(f"/runs/{run_id}/artifact").json()
            listing = client.get("/runs", params={"status": "completed"}).json()
            assert run_id in [r["run_id"] for r in listing["items"]]
        events.wait_for(run_id, "trainer.train.completed.v1")
    finally:
        events.close()

    tar = tmp_path / "model.tar"
    with stack.bank() as bank:
        bank.download(pointer["file_id"], tar)
    with tarfile.open(tar) as archive:
        assert {m.name.split("/")[0] for m in archive.getmembers()} == {f"model-{run_id}"}
    folder = safe_extract(tar, tmp_path / "x", max_members=1000, max_total_bytes=10**9)
    folder = folder / f"model-{run_id}"
    for name in (
        "manifest.json",
        "logs.jsonl",
        "metrics.jsonl",
        "eval/metrics.json",
        "eval/samples.jsonl",
    ):
        assert (folder / name).exists(), name
    # TensorBoard's own reader finds the curve and the hyper-parameters in the artifact.
    board = EventAccumulator(str(folder / "tensorboard"))
    board.Reload()
    scalars = board.Tags()["scalars"]
    assert {"loss/train", "loss/validation", "lr", "tokens_per_sec"} <= set(scalars)
    train_curve = board.Scalars("loss/train")
    assert train_curve[-1].step == 60 and train_curve[-1].value < train_curve[0].value
    assert "_hparams_/session_start_info" in board.PluginTagToContent("hparams")
    assert board.Scalars("final/bits_per_char")[0].value > 0
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, Qwen3ForCausalLM)  # the default family
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = torch.tensor([tokenizer.encode("The ")])
    out = _generate(model, prompt, int(tokenizer.pad_token_id))
    assert out.shape[1] == prompt.shape[1] + 8

    # v1: every message of the run decodes by its contract; started, progress, completed.
    run_events = events.for_run(run_id)
    mine = [json.loads(r) for r in events.raw if f'"run_id":"{run_id}"' in r]
    assert len(run_events) == len(mine) > 2, "a v1 message of the run failed its contract"
    types = [e["type"] for e in run_events]
    assert types[0] == "trainer.train.started.v1"
    assert types[-1] == "trainer.train.completed.v1"
    assert "trainer.train.progress.v1" in types
    assert all(e["request_id"] == run_id and e["user_id"] == 4242 for e in run_events)
    # One total_epochs from start to end (a 60-step run is under one epoch of this text).
    assert {e["total_epochs"] for e in run_events if "total_epochs" in e} == {1}
    raw = [r for r in events.raw if run_id in r]
    assert all(", " not in r and ": " not in r for r in raw), "compact JSON"

    # The platform dialect, as the bot decodes it: the job's events in its producer's order.
    platform = events.platform(run_id)
    assert len(platform) == len([r for r in raw if f'"job_id":"{run_id}"' in r])
    kinds = [str(e["type"]) for e in platform]
    assert kinds[:2] == ["trainer.job.started.v1", "trainer.metrics.config.v1"], kinds
    assert kinds[-2:] == ["trainer.job.completed.v1", "trainer.metrics.completed.v1"], kinds
    middle = kinds[2:-2]
    assert middle and middle == ["trainer.job.progress.v1", "trainer.metrics.progress.v1"] * (
        len(middle) // 2
    )
    assert all(e["user_id"] == 4242 for e in platform)
    config = platform[1]
    assert config["model_family"] == "qwen3" and config["queue"] == stack.queue_name
    assert config["batch_size"] == 8 and config["learning_rate"] == 3e-3
    progress_events = [e for e in platform if e["type"] == "trainer.metrics.progress.v1"]
    assert {e["total_epochs"] for e in progress_events} == {config["total_epochs"]} == {1}
    last = progress_events[-1]
    assert last["step"] == 60 and num(last["grad_norm"]) > 0 and num(last["samples_per_sec"]) > 0
    assert num(last["train_ppl"]) == pytest.approx(math.exp(num(last["train_loss"])))
    with_val = [e for e in progress_events if "val_loss" in e]
    assert with_val and all("val_ppl" in e for e in with_val)
    completed = platform[-1]
    assert num(completed["test_loss"]) == pytest.approx(num(run_events[-1]["loss"]))
    assert platform[-2]["result_id"] == pointer["file_id"]
    assert num(platform[-2]["result_bytes"]) == tar.stat().st_size


def _generate(model: object, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    assert isinstance(model, CanGenerate)
    out = model.generate(
        input_ids=ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=pad_id
    )
    assert isinstance(out, torch.Tensor)
    return out


# Every family with every optimizer, tiny: the run completes through the API, GET /runs/{id},
# the started event and the manifest carry family and optimizer, the artifact loads and
# generates in stock transformers, and the API generates from the artifact and a checkpoint.
# (gpt2 with adamw is test_full_run_trains_evaluates_and_loads.)
@pytest.mark.parametrize(
    ("family", "optimizer", "model_class"),
    [
        ("llama", "adamw", "LlamaForCausalLM"),
        ("llama", "muon", "LlamaForCausalLM"),
        ("qwen3", "adamw", "Qwen3ForCausalLM"),
        ("qwen3", "muon", "Qwen3ForCausalLM"),
        ("gpt2", "muon", "GPT2LMHeadModel"),
        ("gpt2", "adamw", "GPT2LMHeadModel"),
    ],
)
def test_every_family_and_optimizer_trains_and_loads(
    stack: Stack,
    corpus_id: str,
    tokenizer_id: str,
    tmp_path: Path,
    family: str,
    optimizer: str,
    model_class: str,
) -> None:
    rotary = family != "gpt2"
    body = _run_body(
        corpus_id,
        tokenizer_id,
        model_family=family,
        optimizer=optimizer,
        n_layer=1,
        n_head=4,
        n_embd=32,
        max_steps=20,
        eval_interval=10,
        checkpoint_interval=10,
        **({"n_kv_head": 2} if rotary else {}),
        **({"muon_learning_rate": 0.03} if optimizer == "muon" else {}),
    )
    events = EventCollector(stack.redis_url)
    try:
        with stack.client() as client:
            run_id = _submit(client, body)
            done = _wait_status(client, run_id, {"completed", "failed"}, 240)
            assert done["status"] == "completed", done
            request = done["request"]
            assert isinstance(request, dict)
            assert (request["model_family"], request["optimizer"]) == (family, optimizer)
            metrics = client.get(f"/runs/{run_id}/metrics").json()["points"]
            losses = [p["train_loss"] for p in metrics if "train_loss" in p]
            assert losses[-1] < losses[0], losses
            # Past the 32-token context: the window slides (rotary positions restart).
            for checkpoint in (None, "last"):
                extra = {} if checkpoint is None else {"checkpoint": checkpoint}
                answer = client.post(
                    f"/runs/{run_id}/generate",
                    json={"prompt": "ROMEO:", "max_new_tokens": 40, "seed": 1, **extra},
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["new_tokens"] == 40
            pointer = client.get(f"/runs/{run_id}/artifact").json()
        started = events.wait_for(run_id, "trainer.train.started.v1")
        assert (started["model_family"], started["optimizer"]) == (family, optimizer)
    finally:
        events.close()

    tar = tmp_path / "model.tar"
    with stack.bank() as bank:
        bank.download(pointer["file_id"], tar)
    folder = safe_extract(tar, tmp_path / "x", max_members=1000, max_total_bytes=10**9)
    folder = folder / f"model-{run_id}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["model_family"] == family
    assert manifest["config"]["optimizer"] == optimizer
    assert manifest["architecture"]["n_kv_head"] == (2 if rotary else 4)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == model_class
    if rotary:
        assert model.config.num_key_value_heads == 2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = torch.tensor([tokenizer.encode("The ")])
    out = _generate(model, prompt, int(tokenizer.pad_token_id))
    assert out.shape[1] == prompt.shape[1] + 8


def test_evaluate_on_request(stack: Stack, corpus_id: str, tokenizer_id: str) -> None:
    with stack.client() as client:
        run_id = _submit(client, _run_body(corpus_id, tokenizer_id, max_steps=20))
        assert _wait_status(client, run_id, {"completed", "failed"}, 240)["status"] == "completed"
        other = stack.upload_text("To be, or not to be, that is the question.\n" * 200)
        for body in ({"split": "validation"}, {"split": "test"}, {"corpus_file_id": other}):
            accepted = client.post(f"/runs/{run_id}/evaluate", json=body)
            assert accepted.status_code == 202, accepted.text
            eval_id = str(accepted.json()["eval_id"])

            def finished(answer: dict[str, object], expected: str = eval_id) -> bool:
                return answer["eval_id"] == expected and answer["status"] in ("completed", "failed")

            result = poll(lambda: get_json(client, f"/runs/{run_id}/eval"), finished, 120)
            assert result["status"] == "completed", result
            assert num(result["bits_per_char"]) > 0 and num(result["perplexity"]) > 1
            assert result["samples"], "seeded generations are reported"
        bad = client.post(
            f"/runs/{run_id}/evaluate", json={"split": "validation", "corpus_file_id": other}
        )
        assert bad.status_code == 422
        # Evaluations log to the run's own stream, with their structured fields.
        lines = client.get(f"/runs/{run_id}/logs", params={"tail": 2000}).json()["lines"]
        started = [line for line in lines if line.get("event") == "eval_started"]
        assert [line.get("split") for line in started] == ["validation", "test", "corpus"]
        assert len([line for line in lines if line.get("event") == "eval_completed"]) == 3


def test_cancel_mid_run(stack: Stack, corpus_id: str, tokenizer_id: str) -> None:
    events = EventCollector(stack.redis_url)
    try:
        with stack.client() as client:
            run_id = _submit(client, _run_body(corpus_id, tokenizer_id, max_steps=100_000))
            poll(
                lambda: get_json(client, f"/runs/{run_id}"),
                lambda a: a["status"] == "running" and num(json_dict(a["progress"])["step"]) >= 10,
                120,
            )
            cancelled = client.post(f"/runs/{run_id}/cancel")
            assert cancelled.status_code == 202
            done = _wait_status(client, run_id, {"cancelled", "failed", "completed"}, 30)
            assert done["status"] == "cancelled", done
            assert client.get(f"/runs/{run_id}/artifact").status_code == 404
            again = client.post(f"/runs/{run_id}/cancel")
            assert again.status_code == 409
        failed = events.wait_for(run_id, "trainer.train.failed.v1")
        events.wait_platform(run_id, "trainer.job.failed.v1")
    finally:
        events.close()
    assert failed["status"] == "canceled"
    # The platform bot is told as their producer tells it: "system", "Training cancelled".
    platform = events.platform(run_id)
    assert [e["type"] for e in platform][-1] == "trainer.job.failed.v1"
    assert platform[-1]["error_kind"] == "system" and platform[-1]["kept"] is True
    assert platform[-1]["message"] == "Training cancelled"
    assert "trainer.metrics.completed.v1" not in [e["type"] for e in platform]


def test_diverging_learning_rate_fails_as_a_user_error(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    events = EventCollector(stack.redis_url)
    try:
        with stack.client() as client:
            body = _run_body(
                corpus_id,
                tokenizer_id,
                learning_rate=MAX_LEARNING_RATE,
                grad_clip=0,
                warmup_steps=0,
            )
            run_id = _submit(client, body)
            done = _wait_status(client, run_id, {"completed", "failed"}, 120)
            assert done["status"] == "failed"
            assert "learning rate" in str(done["message"]).lower()
            assert client.get(f"/runs/{run_id}/artifact").status_code == 404
        failed = events.wait_for(run_id, "trainer.train.failed.v1")
        events.wait_platform(run_id, "trainer.job.failed.v1")
    finally:
        events.close()
    assert failed["error_kind"] == "user"
    platform_failed = events.platform(run_id)[-1]
    assert platform_failed["error_kind"] == "user" and platform_failed["domain"] == "trainer"
    assert platform_failed["message"] == failed["message"]


def test_bad_submissions_are_refused_at_submit_time(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    with stack.client() as client:
        cases: list[tuple[dict[str, object], int, str]] = [
            (_run_body(corpus_id, tokenizer_id, n_embd=65, n_head=4), 422, "n_embd"),
            (_run_body(corpus_id, tokenizer_id, max_seq_len=0), 422, "max_seq_len"),
            (_run_body(corpus_id, tokenizer_id, model_family="bert"), 422, "model_family"),
            (
                _run_body(corpus_id, tokenizer_id, model_family="gpt2", n_kv_head=2),
                422,
                "n_kv_head",
            ),
            (
                _run_body(corpus_id, tokenizer_id, model_family="llama", n_kv_head=3),
                422,
                "n_kv_head (3) must divide n_head (4)",
            ),
            (
                _run_body(corpus_id, tokenizer_id, optimizer="adamw", muon_learning_rate=0.02),
                422,
                "optimizer muon",
            ),
            (_run_body(corpus_id, tokenizer_id, optimizer="sgd"), 422, "optimizer"),
            (_run_body(corpus_id, tokenizer_id, max_steps=5, max_train_seconds=9), 422, ""),
            (_run_body(corpus_id, "tok-nope"), 404, "tokenizer"),
            (_run_body("1" * 64, tokenizer_id), 404, "corpus_file_id"),
        ]
        for body, code, word in cases:
            response = client.post("/runs/train", json=body)
            assert response.status_code == code, (body, response.text)
            assert word in response.text
        pending = "tok-pending-for-test"
        StatusStore(stack.redis, TOKENIZER_KEYS, TokenizerSummary).create(
            pending, RecordMeta(created_at=0.0, request={})
        )
        response = client.post("/runs/train", json=_run_body(corpus_id, pending))
        assert response.status_code == 409
        assert response.json()["code"] == "CONFLICT"
        for path in ("/runs/run-nope", "/runs/run-nope/eval", "/runs/run-nope/metrics"):
            assert client.get(path).status_code == 404


def test_sse_stream_reports_unknown_run(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/runs/run-unknown/logs/stream")
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"
