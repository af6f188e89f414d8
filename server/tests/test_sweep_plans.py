"""Sweeps before they run: a search space expands into the trials it says (grid, seeded
random), successive halving's cutoff is the quantile it claims, and a sweep that cannot run
whole is refused at submit, naming the trial and the field."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import JsonValue, ValidationError
from redis import Redis

from model_trainer.api.main import build_context, create_app
from model_trainer.settings import Settings
from model_trainer.store.keys import TOKENIZER_KEYS
from model_trainer.store.records import RecordMeta, Status, StatusStore, TokenizerSummary
from model_trainer.sweeps.asha import cutoff, stops
from model_trainer.sweeps.plan import Asha, SearchSpace, rungs_for


def test_a_grid_is_every_combination_in_order() -> None:
    space = SearchSpace.model_validate(
        {
            "parameters": {
                "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True, "num": 3},
                "batch_size": {"values": [8, 16]},
            }
        }
    )
    assert space.points() == [
        {"learning_rate": 1e-4, "batch_size": 8},
        {"learning_rate": 1e-4, "batch_size": 16},
        {"learning_rate": 1e-3, "batch_size": 8},
        {"learning_rate": 1e-3, "batch_size": 16},
        {"learning_rate": 1e-2, "batch_size": 8},
        {"learning_rate": 1e-2, "batch_size": 16},
    ]


def test_trials_start_shuffled_by_their_seed_or_as_given() -> None:
    def order(**fields: JsonValue) -> list[int]:
        space = {"parameters": {"seed": {"values": list(range(8))}}, **fields}
        return SearchSpace.model_validate(space).start_order(8)

    shuffled = order(seed=5)
    assert sorted(shuffled) == list(range(8)) and shuffled != list(range(8))
    assert shuffled == order(seed=5) and shuffled != order(seed=6)
    assert order(order="given") == list(range(8))


def test_random_search_is_seeded_and_inside_its_ranges() -> None:
    def draw(seed: int) -> list[dict[str, int | float | str | bool]]:
        return SearchSpace.model_validate(
            {
                "method": "random",
                "trials": 20,
                "seed": seed,
                "parameters": {
                    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
                    "n_layer": {"low": 1, "high": 4, "integer": True},
                    "optimizer": {"values": ["adamw", "muon"]},
                },
            }
        ).points()

    first = draw(3)
    assert first == draw(3) and first != draw(4)
    assert len(first) == 20
    for point in first:
        lr, layers = point["learning_rate"], point["n_layer"]
        assert isinstance(lr, float) and 1e-4 <= lr <= 1e-1
        assert isinstance(layers, int) and 1 <= layers <= 4
    # log-uniform: the decades are about evenly drawn, not 90% in the top one.
    assert sum(1 for p in first if float(p["learning_rate"]) < 1e-2) >= 5


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ({"parameters": {"nope": {"values": [1]}}}, "not training settings: nope"),
        ({"parameters": {"max_steps": {"values": [1, 2]}}}, "the budget is the same"),
        ({"method": "random", "parameters": {"seed": {"values": [1]}}}, "needs trials"),
        ({"trials": 3, "parameters": {"seed": {"values": [1]}}}, "trials is for random"),
        ({"parameters": {"learning_rate": {"low": 1.0, "high": 0.5}}}, "must be below high"),
        ({"parameters": {"learning_rate": {"low": 0.0, "high": 1.0, "log": True}}}, "low > 0"),
    ],
)
def test_a_space_that_cannot_be_run_is_refused(space: dict[str, JsonValue], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        SearchSpace.model_validate(space)


def test_rungs_and_the_cutoff_of_successive_halving() -> None:
    assert rungs_for(900, Asha(reduction_factor=3)) == [100.0, 300.0]
    assert rungs_for(300, Asha(grace=40, reduction_factor=2)) == [40.0, 80.0, 160.0]
    assert rungs_for(300, None) == []
    # The 1/eta quantile of the earlier results, interpolated as numpy's percentile.
    assert cutoff([], 3) is None
    assert cutoff([2.0], 3) == 2.0
    assert cutoff([4.0, 1.0, 3.0, 2.0], 3) == pytest.approx(2.0)
    assert cutoff([1.0, 3.0], 2) == pytest.approx(2.0)
    assert stops(2.5, [1.0, 3.0], 2) == (True, 2.0)
    assert stops(1.5, [1.0, 3.0], 2) == (False, 2.0)
    assert stops(9.0, [], 2) == (False, None)  # the first at a rung always goes on


@pytest.fixture
def tokenizer_id(redis_client: Redis) -> str:
    """A completed tokenizer record, as its worker leaves it (no worker runs here)."""
    store = StatusStore(redis_client, TOKENIZER_KEYS, TokenizerSummary)
    tok = f"tok-{uuid.uuid4().hex[:16]}"
    store.create(tok, RecordMeta(created_at=time.time(), request={"corpus_file_id": "a" * 64}))
    store.set_progress(tok, TokenizerSummary(vocab_size=300))
    store.set_status(tok, Status.COMPLETED)
    return tok


def test_a_sweep_that_cannot_run_whole_is_a_422_naming_why(
    settings: Settings, tokenizer_id: str
) -> None:
    base: dict[str, JsonValue] = {
        "corpus_file_id": "a" * 64,
        "tokenizer_id": tokenizer_id,
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 32,
        "max_steps": 50,
    }
    cases: list[tuple[dict[str, JsonValue], str, str]] = [
        (
            {"space": {"parameters": {"n_embd": {"values": [32, 33]}}}},
            "space.parameters.n_embd",
            "trial 1 (n_embd=33)",
        ),
        (
            {"base": {**base, "num_epochs": 1, "max_steps": None}, "early_stopping": {}},
            "base.num_epochs",
            "fixed budgets",
        ),
        (
            {"base": {**base, "webhook_url": "https://example.com/hook"}},
            "base.webhook_url",
            "no webhooks",
        ),
        (
            {
                "space": {
                    "parameters": {
                        "seed": {"low": 1, "high": 900, "integer": True, "num": 9},
                        "warmup_steps": {"values": list(range(9))},
                    }
                }
            },
            "space",
            "at most 64",
        ),
    ]
    with TestClient(create_app(build_context(settings))) as client:
        for change, field, says in cases:
            body: dict[str, JsonValue] = {
                "base": base,
                "space": {"parameters": {"learning_rate": {"values": [1e-3, 1e-2]}}},
                **change,
            }
            answer = client.post("/sweeps", json=body)
            assert answer.status_code == 422, (change, answer.text)
            error = answer.json()
            assert says in error["message"], error
            assert any(d["field"].startswith(field) for d in error["details"]), error
        unknown = {"base": {**base, "tokenizer_id": f"tok-{uuid.uuid4().hex[:16]}"}}
        space = {"parameters": {"seed": {"values": [1, 2]}}}
        assert client.post("/sweeps", json={**unknown, "space": space}).status_code == 404
        assert client.get(f"/sweeps/swp-{uuid.uuid4().hex[:16]}").status_code == 404
