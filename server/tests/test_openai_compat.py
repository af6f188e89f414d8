"""The OpenAI-compatible routes through the official `openai` client (its own request
building, auth header, response models and SSE parsing), against a real trained run."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from openai import NotFoundError, OpenAI, UnprocessableEntityError

from model_trainer.api.deps import ApiContext
from tests.stack import json_dict
from tests.test_generate import api, run_id, stack

# Starts worker processes: `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e
__all__ = ["api", "run_id", "stack"]  # the fixtures this module uses


def _openai(client: TestClient) -> OpenAI:
    """The official client over the in-process API (TestClient is an httpx.Client)."""
    return OpenAI(base_url="http://testserver/v1", api_key="unused-anonymous", http_client=client)


def test_models_lists_the_run_and_its_checkpoints(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    ids = [model.id for model in _openai(client).models.list()]
    assert run_id in ids
    checkpoints = client.get(f"/runs/{run_id}/checkpoints").json()["checkpoints"]
    steps = {c["step"] for c in checkpoints if c["kind"] == "last"}
    assert {f"{run_id}@{step}" for step in steps} <= set(ids)


def test_completions_match_generate_and_stream_the_same_text(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    openai = _openai(client)
    answer = openai.completions.create(
        model=run_id, prompt="ROMEO:", max_tokens=20, temperature=0.8, n=2, seed=5
    )
    assert answer.object == "text_completion" and answer.model == run_id
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens == 40
    # The same generation as /generate with the same seed.
    native = client.post(
        f"/runs/{run_id}/generate",
        json={
            "prompt": "ROMEO:",
            "max_new_tokens": 20,
            "temperature": 0.8,
            "num_samples": 2,
            "seed": 5,
        },
    )
    assert [c.text for c in answer.choices] == json_dict(native.json())["samples"]

    stream = openai.completions.create(
        model=run_id,
        prompt="ROMEO:",
        max_tokens=20,
        temperature=0.8,
        n=2,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = ["", ""]
    reasons: list[str | None] = [None, None]
    chunks = 0
    usage = None
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            # None until the choice ends (the client's model types it as always set).
            reason: object = choice.finish_reason
            if isinstance(reason, str):
                reasons[choice.index] = reason
    assert texts == [c.text for c in answer.choices]
    assert reasons == ["length", "length"]
    assert chunks > 4, "streamed as it was generated, not in one piece"
    assert usage is not None and usage.total_tokens == answer.usage.total_tokens


def test_stop_sequences_cut_the_text_in_both_modes(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    openai = _openai(client)
    full = openai.completions.create(model=run_id, prompt="ROMEO:", max_tokens=40, seed=11)
    text = full.choices[0].text
    stop = text[10:12]  # two characters the text has past its start
    cut = text[: text.find(stop)]
    plain = openai.completions.create(
        model=run_id, prompt="ROMEO:", max_tokens=40, seed=11, stop=[stop]
    )
    assert plain.choices[0].text == cut and plain.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in openai.completions.create(
            model=run_id, prompt="ROMEO:", max_tokens=40, seed=11, stop=stop, stream=True
        )
        if c.choices
    )
    assert streamed == cut


def test_checkpoints_errors_and_what_is_not_supported(
    api: tuple[TestClient, ApiContext], run_id: str
) -> None:
    client, _ = api
    openai = _openai(client)
    best = openai.completions.create(model=f"{run_id}@best", prompt="A", max_tokens=5, seed=1)
    assert best.model == f"{run_id}@best" and len(best.choices) == 1
    with pytest.raises(NotFoundError):
        openai.completions.create(model="run-0123456789abcdef", prompt="A", max_tokens=5)
    with pytest.raises(UnprocessableEntityError) as refused:
        openai.completions.create(model=run_id, prompt="A", max_tokens=5, logprobs=3)
    assert "logprobs" in str(refused.value.body)  # our 422 body: details name the field
    # The key travels as a bearer token (what the client sends): X-API-Key is not needed.
    assert client.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 200
