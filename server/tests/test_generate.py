"""`POST /runs/{id}/generate` end to end, and what a run shows while it trains.

A real tiny run trained through the real stack (API in-process, a worker process, Data
Bank, Redis); the API generates from its artifact and its checkpoints, which it fetches
from Data Bank as the two-service deploy does (API and worker have different disks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from model_trainer.api.deps import ApiContext
from model_trainer.api.main import build_context, create_app
from model_trainer.settings import GenerateSettings
from model_trainer.store.keys import RUN_KEYS
from model_trainer.store.records import RecordMeta, RunProgress, StatusStore
from tests.processes import wait_until
from tests.stack import Stack, get_json, json_dict, poll
from tests.test_training_runs import _run_body, _submit, _text

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("generate-stack"), redis_url)
    s.start_worker("worker-g")
    yield s
    s.close()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[tuple[TestClient, ApiContext]]:
    """One API app (and its model cache) for the module."""
    ctx = build_context(stack.settings())
    with TestClient(create_app(ctx)) as client:
        yield client, ctx


@pytest.fixture(scope="module")
def run_id(stack: Stack, api: tuple[TestClient, ApiContext]) -> str:
    client, _ = api
    corpus_id = stack.upload_text(_text())
    body = {"method": "bpe", "vocab_size": 400, "corpus_file_id": corpus_id}
    tokenizer = client.post("/tokenizers/train", json=body).json()
    done = poll(
        lambda: get_json(client, f"/tokenizers/{tokenizer['tokenizer_id']}"),
        lambda a: a["status"] in ("completed", "failed"),
        120,
    )
    assert done["status"] == "completed", done
    run = _submit(client, _run_body(corpus_id, str(tokenizer["tokenizer_id"])))
    finished = poll(
        lambda: get_json(client, f"/runs/{run}"),
        lambda a: a["status"] in ("completed", "failed"),
        300,
    )
    assert finished["status"] == "completed", finished
    return run


def _generate(client: TestClient, run_id: str, **body: object) -> dict[str, object]:
    response = client.post(f"/runs/{run_id}/generate", json={"prompt": "ROMEO:", **body})
    assert response.status_code == 200, response.text
    return json_dict(response.json())


def _samples(answer: dict[str, object]) -> list[str]:
    samples = answer["samples"]
    assert isinstance(samples, list) and all(isinstance(s, str) for s in samples)
    return [str(s) for s in samples]


def test_same_seed_same_text_other_seed_other_text(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    first = _generate(client, run_id, seed=7, max_new_tokens=40, temperature=1.0)
    again = _generate(client, run_id, seed=7, max_new_tokens=40, temperature=1.0)
    other = _generate(client, run_id, seed=8, max_new_tokens=40, temperature=1.0)
    assert _samples(first) == _samples(again)
    assert _samples(first) != _samples(other)
    assert first["new_tokens"] == 40 and first["seed"] == 7
    prompt_tokens = first["prompt_tokens"]
    assert isinstance(prompt_tokens, int) and prompt_tokens >= 1
    model = json_dict(first["model"])
    assert model["run_id"] == run_id and model["source"] == "artifact"
    assert model["file_id"] == get_json(client, f"/runs/{run_id}")["file_id"]
    # Greedy ignores the seed; top-k 1 is greedy too; several samples come back.
    greedy = _samples(_generate(client, run_id, temperature=0, seed=1, max_new_tokens=20))
    assert greedy == _samples(_generate(client, run_id, temperature=0, seed=2, max_new_tokens=20))
    assert greedy == _samples(_generate(client, run_id, top_k=1, seed=3, max_new_tokens=20))
    nucleus = _generate(client, run_id, top_p=0.5, top_k=50, num_samples=3, max_new_tokens=10)
    assert len(_samples(nucleus)) == 3
    # Extremes are greedy, never a 500: a temperature so small that logits / temperature
    # overflows, a top_p that float32 rounds to 0 (both found by `make fuzz`).
    for extreme in ({"temperature": 1e-300}, {"top_p": 2.2250738585e-313}):
        sampled = _generate(client, run_id, seed=4, max_new_tokens=20, **extreme)
        assert _samples(sampled) == greedy, extreme


def test_more_new_tokens_than_the_context_slide_the_window(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    long_prompt = "To be, or not to be, that is the question. " * 40  # far past 32 tokens
    answer = _generate(client, run_id, prompt=long_prompt, max_new_tokens=300, num_samples=2)
    assert answer["new_tokens"] == 300
    assert answer["prompt_tokens"] == 32  # the prompt's last `max_seq_len` tokens
    assert all(len(s) > 100 for s in _samples(answer))


def test_the_model_is_downloaded_once_then_served_from_memory(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, ctx = api
    _generate(client, run_id, max_new_tokens=5)  # cached (by this test or an earlier one)
    before = ctx.generation.downloads
    for seed in range(3):
        _generate(client, run_id, max_new_tokens=5, seed=seed)
    assert ctx.generation.downloads == before
    artifact = get_json(client, f"/runs/{run_id}")["file_id"]
    assert artifact in ctx.generation.cache.cached_ids()


def test_a_full_pool_answers_503_at_once_and_frees_its_slot(stack: Stack, run_id: str) -> None:
    """One generation thread, no waiting room: a second request while the first runs is
    refused with 503 (not queued behind it, not a 500), and is served once the first ends."""
    settings = stack.settings().model_copy(
        update={"generate": GenerateSettings(workers=1, max_waiting=0)}
    )
    ctx = build_context(settings)
    with TestClient(create_app(ctx)) as client:
        long_body = {"prompt": "ROMEO:", "max_new_tokens": 2048, "num_samples": 8, "seed": 1}
        first: list[int] = []
        worker = threading.Thread(
            target=lambda: first.append(
                client.post(f"/runs/{run_id}/generate", json=long_body).status_code
            )
        )
        worker.start()
        wait_until(lambda: ctx.generation.in_flight == 1, 60, "the first generation admitted")
        refused = client.post(f"/runs/{run_id}/generate", json={"prompt": "x", "seed": 2})
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "SERVICE_UNAVAILABLE"
        assert "busy" in refused.json()["message"]
        worker.join(timeout=300)
        assert first == [200]
        assert ctx.generation.in_flight == 0
        assert _generate(client, run_id, max_new_tokens=5, seed=3)["new_tokens"] == 5


def test_generate_from_checkpoints(api: tuple[TestClient, ApiContext], run_id: str) -> None:
    client, ctx = api
    checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()["checkpoints"]
    last = max((c for c in checkpoints if c["kind"] == "last"), key=lambda c: c["step"])
    before = ctx.generation.downloads
    for which in ("last", last["step"], "best"):
        answer = _generate(client, run_id, checkpoint=which, seed=3, max_new_tokens=50)
        model = json_dict(answer["model"])
        assert model["source"] == "checkpoint"
        if which != "best":
            assert (model["step"], model["file_id"]) == (last["step"], last["file_id"])
        assert answer["new_tokens"] == 50 and len(_samples(answer)) == 1
    # `last` and its step are one file (one load: tokenizer + weights); best is another.
    assert ctx.generation.downloads - before == 4
    same = _generate(client, run_id, checkpoint="last", seed=3, max_new_tokens=50)
    again = _generate(client, run_id, checkpoint=last["step"], seed=3, max_new_tokens=50)
    assert _samples(same) == _samples(again)


def test_generate_answers_404_409_422(api: tuple[TestClient, ApiContext], run_id: str) -> None:
    client, ctx = api
    unknown = client.post("/runs/run-0123456789abcdef/generate", json={"prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
    # A run that has not completed and has no checkpoint yet.
    queued = "run-" + "0" * 15 + "1"
    StatusStore(ctx.redis, RUN_KEYS, RunProgress).create(
        queued, RecordMeta(created_at=time.time(), request={})
    )
    for body in ({"prompt": "x"}, {"prompt": "x", "checkpoint": "last"}):
        conflict = client.post(f"/runs/{queued}/generate", json=body)
        assert conflict.status_code == 409 and conflict.json()["code"] == "CONFLICT", body
        assert "no checkpoints yet" in conflict.json()["message"]
    missing = client.post(f"/runs/{run_id}/generate", json={"prompt": "x", "checkpoint": 7})
    assert missing.status_code == 409 and "no checkpoint '7'" in missing.json()["message"]
    no_base = client.post(f"/runs/{run_id}/generate", json={"prompt": "x", "checkpoint": "base"})
    assert no_base.status_code == 409 and "has no base model" in no_base.json()["message"]
    bad_bodies: list[dict[str, object]] = [
        {},
        {"prompt": "x" * 10_001},
        {"prompt": "x", "max_new_tokens": 0},
        {"prompt": "x", "max_new_tokens": 2049},
        {"prompt": "x", "temperature": -0.1},
        {"prompt": "x", "temperature": 5.1},
        {"prompt": "x", "top_p": 0},
        {"prompt": "x", "top_p": 1.5},
        {"prompt": "x", "top_k": -1},
        {"prompt": "x", "num_samples": 9},
        {"prompt": "x", "seed": -1},
        {"prompt": "x", "checkpoint": "first"},
        {"prompt": "x", "unexpected": 1},
        {"prompt": "x", "top_k": 401},  # more than the vocabulary
    ]
    for bad in bad_bodies:
        invalid = client.post(f"/runs/{run_id}/generate", json=bad)
        assert invalid.status_code == 422, (bad, invalid.text)
        assert invalid.json()["code"] == "VALIDATION_ERROR"


def test_a_run_logs_its_progress_and_each_points_own_val_loss(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    lines = client.get(f"/runs/{run_id}/logs", params={"tail": 10_000}).json()["lines"]
    progress = [line for line in lines if line.get("event") == "run_progress"]
    assert progress, [line.get("event") for line in lines]
    final = progress[-1]
    assert (final["step"], final["total_steps"]) == (60, 60)
    for name in ("loss", "val_loss", "eta_seconds"):
        assert isinstance(final[name], float | int), (name, final)
    assert "step 60/60" in final["message"]
    points = client.get(f"/runs/{run_id}/metrics").json()["points"]
    by_step = {p["step"]: p for p in points}
    # eval_interval 20: validation at 20, 40 and 60 only; every other point says null.
    evaluated = [step for step, p in by_step.items() if p["val_loss"] is not None]
    assert set(evaluated) >= {20, 40, 60}, by_step
    assert all(step % 20 == 0 for step in evaluated), evaluated
    assert all("val_loss" in p for p in points)
    assert by_step[10]["val_loss"] is None and by_step[30]["val_loss"] is None
    val = [by_step[s]["val_loss"] for s in (20, 40, 60)]
    assert len(set(val)) == 3  # each point's own loss, not the last one carried along
