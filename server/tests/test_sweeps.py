"""Sweeps on real workers: a grid completes with a leaderboard, successive halving stops the
worse trials at the first rung and says why, a sweep outlives the worker that drove it
(no trial lost, none started twice), and cancelling a sweep cancels its trials.

Waits name their condition and end as soon as it holds (tests/processes.wait_until)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import JsonValue

from model_trainer.store.keys import lease_key
from model_trainer.store.records import as_str
from tests.processes import wait_until
from tests.stack import Stack, get_json, json_dict
from tests.test_durable_runs import _signal_all, _train_tokenizer
from tests.test_training_runs import _text

pytestmark = pytest.mark.e2e

SWEEP_STALL_SEC = 240.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("sweeps"), redis_url)
    yield s
    s.close()


@pytest.fixture(scope="module")
def corpus_id(stack: Stack) -> str:
    return stack.upload_text(_text())


@pytest.fixture(scope="module")
def tokenizer_id(stack: Stack, corpus_id: str) -> str:
    return _train_tokenizer(stack, corpus_id)


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(stack: Stack) -> Iterator[None]:
    yield
    stack.retire_all()


def _base(corpus_id: str, tokenizer_id: str, **overrides: JsonValue) -> dict[str, JsonValue]:
    base: dict[str, JsonValue] = {
        "corpus_file_id": corpus_id,
        "tokenizer_id": tokenizer_id,
        "model_family": "gpt2",
        "optimizer": "adamw",
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 32,
        "max_seq_len": 32,
        "batch_size": 8,
        "max_steps": 40,
        "warmup_steps": 2,
        "eval_interval": 20,
        "eval_batches": 2,
        "checkpoint_interval": 1000,
        "compile": "off",
        "tags": ["sweep-test"],
    }
    base.update(overrides)
    return base


def _submit(client: TestClient, body: dict[str, JsonValue]) -> dict[str, object]:
    answer = client.post("/sweeps", json=body)
    assert answer.status_code == 202, answer.text
    accepted: dict[str, object] = answer.json()
    assert accepted["status"] == "queued" and accepted["job_id"] == accepted["sweep_id"]
    return accepted


def _sweep(client: TestClient, sweep_id: str) -> dict[str, object]:
    return get_json(client, f"/sweeps/{sweep_id}")


def _trials(sweep: dict[str, object]) -> list[dict[str, object]]:
    progress = json_dict(sweep["progress"])
    trials = progress["trials"]
    assert isinstance(trials, list)
    return [json_dict(t) for t in trials]


def _moving(client: TestClient, sweep_id: str) -> tuple[object, ...]:
    """What changes while a sweep makes progress: its trials' states and steps."""
    return tuple((t["status"], t["steps"]) for t in _trials(_sweep(client, sweep_id)))


def _wait_ended(client: TestClient, sweep_id: str) -> dict[str, object]:
    wait_until(
        lambda: _sweep(client, sweep_id)["status"] in ("completed", "failed", "cancelled"),
        SWEEP_STALL_SEC,
        f"sweep {sweep_id} to end",
        progress=lambda: _moving(client, sweep_id),
    )
    return _sweep(client, sweep_id)


def _runs_tagged(client: TestClient, tag: str) -> list[dict[str, object]]:
    body = get_json(client, f"/runs?tag={tag}&limit=200")
    items = body["items"]
    assert isinstance(items, list)
    assert json_dict(body["page"])["total"] == len(items)
    return [json_dict(i) for i in items]


def test_a_grid_sweep_completes_with_a_leaderboard(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    stack.start_worker("grid-a")
    stack.start_worker("grid-b")
    with stack.client() as client:
        accepted = _submit(
            client,
            {
                "name": "lr x batch",
                "tags": ["grid"],
                "base": _base(corpus_id, tokenizer_id),
                "space": {
                    "parameters": {
                        "learning_rate": {"values": [3e-3, 1e-2]},
                        "batch_size": {"values": [4, 8]},
                    }
                },
                "max_concurrent": 2,
            },
        )
        sweep_id = str(accepted["sweep_id"])
        assert accepted["trials"] == 4
        done = _wait_ended(client, sweep_id)
        assert done["status"] == "completed", done
        trials = _trials(done)
        assert [t["params"] for t in trials] == [
            {"learning_rate": 3e-3, "batch_size": 4},
            {"learning_rate": 3e-3, "batch_size": 8},
            {"learning_rate": 1e-2, "batch_size": 4},
            {"learning_rate": 1e-2, "batch_size": 8},
        ]
        assert all(t["status"] == "completed" and t["steps"] == 40 for t in trials)
        figures = {str(t["run_id"]): float(str(t["bits_per_char"])) for t in trials}
        leaderboard = done["leaderboard"]
        assert isinstance(leaderboard, list) and sorted(leaderboard) == sorted(figures)
        assert [figures[str(r)] for r in leaderboard] == sorted(figures.values())
        assert done["best_run_id"] == leaderboard[0]
        assert str(done["message"]).startswith(f"best run {leaderboard[0]}")
        # The trials are ordinary runs: tagged with the sweep, named after it.
        runs = _runs_tagged(client, f"sweep:{sweep_id}")
        assert sorted(str(r["run_id"]) for r in runs) == sorted(figures)
        assert {str(r["name"]) for r in runs} == {f"lr x batch #{i}" for i in range(4)}
        listed = get_json(client, "/sweeps?tag=grid&status=completed")["items"]
        assert isinstance(listed, list) and sweep_id in [json_dict(s)["sweep_id"] for s in listed]


def test_successive_halving_stops_the_worse_trials_at_the_first_rung(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    """One trial at a time, a good learning rate first: the trials with a learning rate too
    small to learn anything are stopped at the first rung, their runs say why, and the
    seconds they did not train are counted."""
    stack.start_worker("asha-a")
    with stack.client() as client:
        accepted = _submit(
            client,
            {
                # Long enough that the driver's pass (every couple of seconds on a busy
                # worker) sees a trial at its first rung well before it could end.
                "base": _base(corpus_id, tokenizer_id, max_steps=5000, eval_interval=30),
                "space": {
                    "parameters": {"learning_rate": {"values": [1e-2, 1e-7, 1e-7]}},
                    "order": "given",
                },
                "max_concurrent": 1,
                "early_stopping": {"grace": 60, "reduction_factor": 2},
            },
        )
        sweep_id = str(accepted["sweep_id"])
        done = _wait_ended(client, sweep_id)
        assert done["status"] == "completed", done
        assert done["rungs"] == [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3840.0]
        good, *worse = _trials(done)
        assert good["status"] == "completed" and good["stopped_at_rung"] is None
        first = json_dict(_as_list(good["rungs"])[0])
        assert first["cutoff"] is None and first["stopped"] is False  # nothing to beat
        for trial in worse:
            assert trial["stopped_at_rung"] == 0, trial
            assert trial["status"] == "cancelled"
            rung = json_dict(_as_list(trial["rungs"])[-1])
            assert rung["stopped"] is True and float(str(rung["value"])) > float(
                str(rung["cutoff"])
            )
            run = get_json(client, f"/runs/{trial['run_id']}")
            assert json_dict(run["request"])["eval_at"] == done["rungs"]  # validated there
            assert str(run["message"]).startswith(f"stopped by sweep {sweep_id} at rung 0")
            assert int(str(json_dict(run["progress"])["step"])) < 5000
        progress = json_dict(done["progress"])
        assert progress["stopped"] == 2 and float(str(progress["saved"])) > 0
        # The completed trial first; the stopped ones after it, by their loss at the rung.
        leaderboard = _as_list(done["leaderboard"])
        assert leaderboard[0] == good["run_id"]
        assert sorted(str(r) for r in leaderboard[1:]) == sorted(str(t["run_id"]) for t in worse)
        values = [float(str(json_dict(_as_list(t["rungs"])[-1])["value"])) for t in worse]
        by_run = dict(zip((t["run_id"] for t in worse), values, strict=True))
        assert [by_run[r] for r in leaderboard[1:]] == sorted(values)
        assert "2 of 3 trials stopped early" in str(done["message"])


def _as_list(value: object) -> list[object]:
    assert isinstance(value, list)
    return value


def test_a_sweep_outlives_the_worker_that_drove_it(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    """SIGKILL the worker driving the sweep (and its job process) mid-sweep: the other
    worker takes the sweep over; every trial runs, exactly once."""
    first = stack.start_worker(f"kill-{uuid.uuid4().hex[:6]}")
    with stack.client() as client:
        accepted = _submit(
            client,
            {
                "base": _base(corpus_id, tokenizer_id, max_steps=200),
                "space": {"parameters": {"seed": {"values": [1, 2, 3, 4]}}},
                "max_concurrent": 1,
            },
        )
        sweep_id = str(accepted["sweep_id"])

        def driver() -> str | None:
            token = as_str(stack.redis.get(lease_key(sweep_id)))
            return token.split("#")[0] if token else None

        wait_until(
            lambda: (
                driver() is not None
                and sum(1 for t in _trials(_sweep(client, sweep_id)) if t["status"] != "planned")
                >= 2
            ),
            SWEEP_STALL_SEC,
            "the sweep to start its second trial",
            first,
            progress=lambda: _moving(client, sweep_id),
        )
        assert driver() == stack.worker_name(first)
        second = stack.start_worker(f"kill-{uuid.uuid4().hex[:6]}")
        _signal_all(first, signal.SIGKILL)
        first.process.wait(30)
        stack.workers.remove(first)
        wait_until(
            lambda: driver() == stack.worker_name(second),
            SWEEP_STALL_SEC,
            "the other worker to take the sweep over",
            second,
        )
        done = _wait_ended(client, sweep_id)
        assert done["status"] == "completed", done
        runs = _runs_tagged(client, f"sweep:{sweep_id}")
        assert sorted(str(r["run_id"]) for r in runs) == sorted(
            str(r) for r in _as_list(accepted["run_ids"])
        )
        assert all(r["status"] == "completed" for r in runs)


def test_cancelling_a_sweep_cancels_its_trials(
    stack: Stack, corpus_id: str, tokenizer_id: str
) -> None:
    """Its owner may have one active run (the worker's quota): the sweep starts one trial of
    the two it may run at once, and says why; cancelled, its trial is cancelled."""
    stack.start_worker("cancel-a", QUOTAS__ACTIVE_RUNS="1")
    with stack.client() as client:
        accepted = _submit(
            client,
            {
                "base": _base(corpus_id, tokenizer_id, max_steps=100_000),
                "space": {"parameters": {"seed": {"values": [1, 2, 3, 4]}}},
                "max_concurrent": 2,
            },
        )
        sweep_id = str(accepted["sweep_id"])
        wait_until(
            lambda: sum(1 for t in _trials(_sweep(client, sweep_id)) if t["steps"]) >= 1,
            SWEEP_STALL_SEC,
            "a trial to train",
            progress=lambda: _moving(client, sweep_id),
        )
        wait_until(
            lambda: "quotas" in str(_sweep(client, sweep_id)["message"]),
            SWEEP_STALL_SEC,
            "the sweep to say it waits for its owner's quota",
        )
        answer = client.post(f"/sweeps/{sweep_id}/cancel")
        assert answer.status_code == 202, answer.text
        done = _wait_ended(client, sweep_id)
        assert done["status"] == "cancelled"
        wait_until(
            lambda: all(
                r["status"] == "cancelled" for r in _runs_tagged(client, f"sweep:{sweep_id}")
            ),
            SWEEP_STALL_SEC,
            "every trial to be cancelled",
        )
        runs = _runs_tagged(client, f"sweep:{sweep_id}")
        assert len(runs) == 1  # the quota's one; none started after the cancel
        assert all(
            str(r["message"]).startswith(f"cancelled with its sweep {sweep_id}") for r in runs
        )
        assert client.post(f"/sweeps/{sweep_id}/cancel").status_code == 409
