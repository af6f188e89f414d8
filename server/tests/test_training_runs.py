"""Training runs end to end: HTTP API -> real worker -> Data Bank -> a model transformers loads."""

from __future__ import annotations

import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from redis import Redis
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from model_trainer.databank.archive import safe_extract
from model_trainer.store.events import (
    TrainCompleted,
    TrainerEvent,
    TrainFailed,
    TrainProgress,
    TrainStarted,
)
from model_trainer.store.keys import TOKENIZER_KEYS
from model_trainer.store.records import RecordMeta, StatusStore, TokenizerSummary
from model_trainer.training.config import MAX_LEARNING_RATE
from model_trainer.training.evaluate import CanGenerate
from tests.processes import wait_until
from tests.stack import Stack, get_json, json_dict, num, poll

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "tinyshakespeare.txt"
EVENT_TYPES: dict[str, type[TrainerEvent]] = {
    "trainer.train.started.v1": TrainStarted,
    "trainer.train.progress.v1": TrainProgress,
    "trainer.train.completed.v1": TrainCompleted,
    "trainer.train.failed.v1": TrainFailed,
}


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


class EventCollector:
    """Subscribes to trainer:events in a thread; keeps this run's events, validated."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        self._pubsub.subscribe("trainer:events")
        self.raw: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                data = message["data"]
                self.raw.append(data.decode() if isinstance(data, bytes) else str(data))

    def for_run(self, run_id: str) -> list[dict[str, object]]:
        events = [json.loads(r) for r in list(self.raw)]
        return [e for e in events if isinstance(e, dict) and e.get("run_id") == run_id]

    def wait_for(self, run_id: str, event_type: str, timeout: float = 30) -> dict[str, object]:
        """The run's last event of `event_type`, once it has arrived."""
        wait_until(
            lambda: any(e["type"] == event_type for e in self.for_run(run_id)),
            timeout,
            f"a {event_type} event for {run_id}",
        )
        return [e for e in self.for_run(run_id) if e["type"] == event_type][-1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._redis.close()


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
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, Qwen3ForCausalLM)  # the default family
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = torch.tensor([tokenizer.encode("The ")])
    out = _generate(model, prompt, int(tokenizer.pad_token_id))
    assert out.shape[1] == prompt.shape[1] + 8

    run_events = events.for_run(run_id)
    types = [e["type"] for e in run_events]
    assert types[0] == "trainer.train.started.v1"
    assert types[-1] == "trainer.train.completed.v1"
    assert "trainer.train.progress.v1" in types
    for event in run_events:
        model_class = EVENT_TYPES[str(event["type"])]
        parsed = model_class.model_validate(event)  # extra="forbid": no unknown fields
        assert parsed.request_id == run_id and parsed.user_id == 4242
    raw = [r for r in events.raw if run_id in r]
    assert all(", " not in r and ": " not in r for r in raw), "compact JSON"


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
    finally:
        events.close()
    assert failed["status"] == "canceled"


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
    finally:
        events.close()
    assert failed["error_kind"] == "user"


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
