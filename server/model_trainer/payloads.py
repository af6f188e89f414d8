"""Job payloads: what the API puts on the queue and the worker reads back, validated twice."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_trainer.databank.wire import FILE_ID_PATTERN
from model_trainer.status_store import Status
from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.training.config import ModelTrainConfig


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerJob(_Payload):
    tokenizer_id: str
    config: TokenizerTrainConfig


class TrainJob(_Payload):
    run_id: str
    config: ModelTrainConfig


class EvaluateRequest(_Payload):
    """`{"split": "validation" | "test"}` or `{"corpus_file_id": "..."}` (another text)."""

    split: Literal["validation", "test"] | None = None
    corpus_file_id: str | None = Field(default=None, pattern=FILE_ID_PATTERN)

    @model_validator(mode="after")
    def _one_source(self) -> EvaluateRequest:
        if (self.split is None) == (self.corpus_file_id is None):
            raise ValueError("give exactly one of split or corpus_file_id")
        return self


class EvaluateJob(_Payload):
    run_id: str
    eval_id: str
    request: EvaluateRequest


# --- what jobs report back through Redis (and the API serves) ---


class RunProgress(_Payload):
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_sec: float | None = None
    percent: float = 0.0
    eta_seconds: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    resumed_from_step: int | None = None


class SampleText(_Payload):
    prompt: str
    completion: str


class EvalInfo(_Payload):
    run_id: str
    eval_id: str
    status: Status
    message: str | None = None
    split: str | None = None
    corpus_file_id: str | None = None
    loss: float | None = None
    perplexity: float | None = None
    bits_per_char: float | None = None
    tokens_per_char: float | None = None
    num_tokens: int | None = None
    num_chars: int | None = None
    samples: list[SampleText] | None = None
