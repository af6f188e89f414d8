"""ModelTrainConfig: good defaults, presets with overrides, and refusals that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_trainer.training.config import (
    DEFAULT_MAX_TRAIN_SECONDS,
    Architecture,
    ModelSize,
    ModelTrainConfig,
)

IDS = {"corpus_file_id": "ab" * 32, "tokenizer_id": "tok-1"}


def _error_text(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        ModelTrainConfig.model_validate({**IDS, **fields})
    return "\n".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in caught.value.errors()
    )


def test_defaults_are_a_tiny_model_on_a_time_budget() -> None:
    config = ModelTrainConfig.model_validate(IDS)
    assert config.resolved() == Architecture(n_layer=4, n_head=4, n_embd=128)
    assert config.budget().kind == "seconds"
    assert config.budget().value == DEFAULT_MAX_TRAIN_SECONDS
    assert config.precision == "auto"
    assert config.lr_schedule == "cosine"
    assert config.user_id == 0


def test_presets_and_overrides_resolve() -> None:
    mini = ModelTrainConfig.model_validate({**IDS, "model_size": "mini"})
    assert mini.resolved() == Architecture(n_layer=6, n_head=6, n_embd=384)
    small = ModelTrainConfig.model_validate({**IDS, "model_size": ModelSize.SMALL, "n_layer": 2})
    assert small.resolved() == Architecture(n_layer=2, n_head=12, n_embd=768)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n_head": 3}, "n_embd (128) must be divisible by n_head (3)"),
        ({"model_size": "mini", "n_embd": 100}, "n_head (6)"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"dropout": 1.0}, "dropout"),
        ({"holdout_fraction": 0}, "holdout_fraction"),
        ({"model_family": "bert"}, "model_family"),
        ({"model_size": "huge"}, "model_size"),
        ({"precision": "fp16"}, "precision"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"corpus_file_id": "xyz"}, "corpus_file_id"),
        ({"max_steps": 10, "max_train_seconds": 60}, "max_steps, max_train_seconds"),
        ({"num_epochs": 1, "max_steps": 10}, "num_epochs, max_steps"),
        ({"epochs": 3}, "epochs"),  # unknown fields are refused, not ignored
    ],
)
def test_a_config_that_cannot_work_names_the_field(fields: dict[str, object], named: str) -> None:
    assert named in _error_text(**fields)


def test_each_budget_kind() -> None:
    assert ModelTrainConfig.model_validate({**IDS, "max_steps": 7}).budget().kind == "steps"
    by_epochs = ModelTrainConfig.model_validate({**IDS, "num_epochs": 0.5}).budget()
    assert (by_epochs.kind, by_epochs.value) == ("epochs", 0.5)
    assert ModelTrainConfig.model_validate({**IDS, "max_train_seconds": 3}).budget().value == 3
