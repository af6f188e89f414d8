"""TrainRequest: good defaults, presets with overrides, and refusals that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_trainer.api.schemas import TrainRequest
from model_trainer.training.config import (
    DEFAULT_MAX_TRAIN_SECONDS,
    PRESETS,
    Architecture,
    ModelFamily,
    ModelSize,
)

BARE = {"corpus_file_id": "ab" * 32, "tokenizer_id": "tok-1"}
# Most shapes here are GPT-2's (a 4x MLP); the families' own are tested with the family named.
IDS = BARE | {"model_family": "gpt2", "optimizer": "adamw"}


def _error_text(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        TrainRequest.model_validate({**IDS, **fields})
    return "\n".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in caught.value.errors()
    )


def test_defaults_are_a_tiny_model_on_a_time_budget() -> None:
    config = TrainRequest.model_validate(BARE)
    # A qwen3 `tiny` trained with Muon: the best of the grid (docs/benchmarks.md).
    assert config.resolved() == _arch(4, 4, 128).model_copy(update={"intermediate_size": 320})
    assert (config.model_family, config.optimizer) == ("qwen3", "muon")
    assert config.budget().kind == "seconds"
    assert config.budget().value == DEFAULT_MAX_TRAIN_SECONDS
    assert config.precision == "auto"
    assert config.lr_schedule == "cosine"
    assert config.user_id == 0


def test_presets_and_overrides_resolve() -> None:
    mini = TrainRequest.model_validate({**IDS, "model_size": "mini"})
    assert mini.resolved() == _arch(6, 6, 384)
    small = TrainRequest.model_validate({**IDS, "model_size": ModelSize.SMALL, "n_layer": 2})
    assert small.resolved() == _arch(2, 12, 768)


def _arch(n_layer: int, n_head: int, n_embd: int) -> Architecture:
    """GPT-2's shape: one key/value head per head, a 4x MLP, tied embeddings."""
    return Architecture(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_kv_head=n_head,
        intermediate_size=4 * n_embd,
        tie_word_embeddings=True,
    )


@pytest.mark.parametrize(
    ("size", "intermediate"),
    [(ModelSize.TINY, 320), (ModelSize.MINI, 1024), (ModelSize.SMALL, 2048)],
)
@pytest.mark.parametrize("family", [ModelFamily.LLAMA, ModelFamily.QWEN3])
def test_rotary_families_have_gpt2s_shape_with_a_swiglu_mlp(
    family: ModelFamily, size: ModelSize, intermediate: int
) -> None:
    config = TrainRequest.model_validate({**IDS, "model_family": family, "model_size": size})
    arch = config.resolved()
    assert (arch.n_layer, arch.n_head, arch.n_embd) == tuple(PRESETS[size].model_dump().values())
    assert (arch.intermediate_size, arch.n_kv_head, arch.tie_word_embeddings) == (
        intermediate,
        arch.n_head,
        True,
    )
    gqa = TrainRequest.model_validate(
        {**IDS, "model_family": family, "n_kv_head": 2, "tie_word_embeddings": False}
    ).resolved()
    assert (gqa.n_kv_head, gqa.tie_word_embeddings) == (2, False)


def test_muon_learning_rate_defaults_and_overrides() -> None:
    assert TrainRequest.model_validate({**IDS, "optimizer": "muon"}).muon_lr() == 0.02
    config = TrainRequest.model_validate({**IDS, "optimizer": "muon", "muon_learning_rate": 0.05})
    assert config.muon_lr() == 0.05


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
        ({"n_kv_head": 2}, "n_kv_head: Value error, n_kv_head (grouped-query attention)"),
        ({"model_family": "llama", "n_kv_head": 3}, "n_kv_head: Value error, n_kv_head (3)"),
        ({"model_family": "qwen3", "n_head": 8, "n_kv_head": 16}, "must divide n_head (8)"),
        ({"model_family": "llama", "n_embd": 96, "n_head": 32}, "must be even"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"muon_learning_rate": 0.02}, "muon_learning_rate: Value error"),
        ({"optimizer": "muon", "muon_learning_rate": 0}, "muon_learning_rate"),
    ],
)
def test_a_config_that_cannot_work_names_the_field(fields: dict[str, object], named: str) -> None:
    assert named in _error_text(**fields)


def test_each_budget_kind() -> None:
    assert TrainRequest.model_validate({**IDS, "max_steps": 7}).budget().kind == "steps"
    by_epochs = TrainRequest.model_validate({**IDS, "num_epochs": 0.5}).budget()
    assert (by_epochs.kind, by_epochs.value) == ("epochs", 0.5)
    assert TrainRequest.model_validate({**IDS, "max_train_seconds": 3}).budget().value == 3
