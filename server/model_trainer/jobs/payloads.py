"""Job payloads: what the API puts on the queue and the worker reads back, validated twice."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.tokenization.corpus_formats import (
    DEFAULT_TEXT_FIELD,
    CorpusFormatField,
    RunCorpusFormatField,
    TextFieldName,
    check_format_fields,
)
from model_trainer.training.config import Device, TrainingSpec
from service_common.databank_contract import FILE_ID_PATTERN


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerJob(_Payload):
    tokenizer_id: str
    config: TokenizerTrainConfig
    user_id: int = 0  # whom its events are for (0: nobody)


class InitFrom(_Payload):
    """Another run's checkpoint to start from, resolved by the API at submit time."""

    run_id: str
    step: int
    kind: Literal["last", "best"]
    file_id: str = Field(pattern=FILE_ID_PATTERN)


class TrainJob(_Payload):
    """A training run's envelope: its spec (what the loop sees), where its data comes from,
    whom its events are for, and how it is run (queue, threads)."""

    run_id: str
    spec: TrainingSpec
    corpus_file_id: str = Field(pattern=FILE_ID_PATTERN)
    corpus_format: RunCorpusFormatField = "auto"
    text_field: TextFieldName = DEFAULT_TEXT_FIELD
    tokenizer_id: str | None  # None: the spec's base model brings its own
    user_id: int = 0
    device: Device = Device.AUTO
    threads: int | None = None
    init_from: InitFrom | None = None


class EvaluateRequest(_Payload):
    """`{"split": "validation" | "test"}` or `{"corpus_file_id": "..."}` (another text)."""

    split: Literal["validation", "test"] | None = None
    corpus_file_id: str | None = Field(default=None, pattern=FILE_ID_PATTERN)
    corpus_format: CorpusFormatField = "auto"
    text_field: TextFieldName = DEFAULT_TEXT_FIELD

    @model_validator(mode="after")
    def _one_source(self) -> EvaluateRequest:
        if (self.split is None) == (self.corpus_file_id is None):
            raise ValueError("give exactly one of split or corpus_file_id")
        if self.corpus_file_id is None and (
            self.corpus_format != "auto" or self.text_field != DEFAULT_TEXT_FIELD
        ):
            raise ValueError(
                "corpus_format and text_field go with corpus_file_id; a split is read from "
                "the run's own corpus as the run read it"
            )
        check_format_fields(self.corpus_format, self.text_field)
        return self


class EvaluateJob(_Payload):
    run_id: str
    eval_id: str
    request: EvaluateRequest
    user_id: int = 0  # the run's: its events are for whom the run's are
