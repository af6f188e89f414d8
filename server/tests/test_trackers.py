"""Runs logged to a real MLflow tracking store (SQLite, through MLflow's own client) by a
real worker: parameters, the curve, the final metrics and the artifact; a cancelled run
ends KILLED."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.stack import Stack, get_json, json_dict, num, poll
from tests.test_training_runs import _run_body, _submit, _text

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, store: Path) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("trackers-stack"), redis_url)
    s.start_worker(
        TRACKING__MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
        TRACKING__MLFLOW_EXPERIMENT="tests",
        TRACKING__MLFLOW_ARTIFACT_LOCATION=(store / "artifacts").as_uri(),
    )
    yield s
    s.close()


def _mlflow_run(client: MlflowClient, run_id: str) -> str:
    experiment = client.get_experiment_by_name("tests")
    assert experiment is not None
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`model_trainer.run_id` = '{run_id}'"
    )
    assert len(found) == 1
    return str(found[0].info.run_id)


def test_a_run_is_logged_to_mlflow_and_a_cancelled_one_ends_killed(
    stack: Stack, store: Path
) -> None:
    corpus = stack.upload_text(_text())
    with stack.client() as client:
        body = {"method": "bpe", "vocab_size": 400, "corpus_file_id": corpus}
        tokenizer = str(client.post("/tokenizers/train", json=body).json()["tokenizer_id"])
        poll(
            lambda: get_json(client, f"/tokenizers/{tokenizer}"),
            lambda a: a["status"] == "completed",
            120,
        )
        run_id = _submit(client, _run_body(corpus, tokenizer))
        done = poll(
            lambda: get_json(client, f"/runs/{run_id}"),
            lambda a: a["status"] in ("completed", "failed"),
            300,
        )
        assert done["status"] == "completed", done
        cancelled = _submit(client, _run_body(corpus, tokenizer, max_steps=100_000))
        poll(
            lambda: get_json(client, f"/runs/{cancelled}"),
            lambda a: a["status"] == "running" and num(json_dict(a["progress"])["step"]) >= 10,
            120,
        )
        assert client.post(f"/runs/{cancelled}/cancel").status_code == 202
        poll(
            lambda: get_json(client, f"/runs/{cancelled}"),
            lambda a: a["status"] == "cancelled",
            60,
        )
        evaluation = get_json(client, f"/runs/{run_id}/eval")

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    logged = mlflow.get_run(_mlflow_run(mlflow, run_id))
    assert logged.info.status == "FINISHED" and logged.info.run_name == run_id
    params = logged.data.params
    assert params["model_family"] == "qwen3" and params["max_steps"] == "60"
    assert params["batch_size"] == "8" and params["n_layer"] == "2"
    curve = mlflow.get_metric_history(logged.info.run_id, "loss/train")
    assert len(curve) >= 3 and curve[-1].step == 60 and curve[-1].value < curve[0].value
    assert mlflow.get_metric_history(logged.info.run_id, "loss/validation")
    assert logged.data.metrics["final/bits_per_char"] == pytest.approx(
        num(evaluation["bits_per_char"])
    )
    files = {a.path for a in mlflow.list_artifacts(logged.info.run_id, "model")}
    assert {"model/config.json", "model/manifest.json", "model/tensorboard"} <= files
    killed = mlflow.get_run(_mlflow_run(mlflow, cancelled))
    assert killed.info.status == "KILLED"
