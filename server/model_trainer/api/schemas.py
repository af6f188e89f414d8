"""Request and response bodies of the run and tokenizer routes (responses built from the
store's typed records)."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Self

from fastapi import Query, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from model_trainer.api.ids import RUN_ID_PATTERN
from model_trainer.jobs.payloads import EvaluateRequest
from model_trainer.store.base_models import ModelInfo
from model_trainer.store.checkpoints import CheckpointEntry, CheckpointIndex, CheckpointKind
from model_trainer.store.corpora import CorpusInfo
from model_trainer.store.labels import TAG_PATTERN, Labels
from model_trainer.store.records import (
    AnyStatusStore,
    ErrorInfo,
    EvalInfo,
    Record,
    RunProgress,
    Status,
    SweepProgress,
    TokenizerSummary,
    TrialState,
)
from model_trainer.sweeps.plan import MAX_TRIALS, Asha, SearchSpace, SweepPlan
from model_trainer.tokenization.config import TokenizerTrainConfig
from model_trainer.tokenization.corpus_formats import (
    DEFAULT_TEXT_FIELD,
    RunCorpusFormatField,
    TextFieldName,
    check_format_fields,
)
from model_trainer.training.config import Device, TrainingSpec
from model_trainer.webhooks.records import Attempt
from service_common.databank_contract import FILE_ID_PATTERN

__all__ = ["CorpusInfo", "ErrorInfo", "EvalInfo", "RunProgress"]


# A signed 64-bit integer (Discord snowflakes are): stored, published and compared as one.
UserId = Annotated[
    int, Field(ge=0, le=2**63 - 1, description="Discord user whose DMs follow the job (0: none)")
]


WEBHOOK_SECRET_PATTERN = r"^whsec_[A-Za-z0-9+/]{32,128}={0,2}$"  # noqa: S105 - a pattern


class WebhookFields(BaseModel):
    """Where a job's end is POSTed (webhooks/), on any job request."""

    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="http(s) URL told when the job ends (Standard Webhooks); private and "
        "loopback addresses are refused unless the operator allows them",
    )
    webhook_secret: str | None = Field(
        default=None,
        pattern=WEBHOOK_SECRET_PATTERN,
        description="the signing secret (whsec_ + base64); without one a secret is made "
        "and returned once, in the 202 answer",
    )

    @model_validator(mode="after")
    def _secret_needs_url(self) -> Self:
        if self.webhook_secret is not None and self.webhook_url is None:
            raise ValueError("webhook_secret goes with webhook_url")
        return self


# Never stored in a record's request nor shown: the endpoint keeps it (webhooks/records.py).
SECRET_FIELDS = {"webhook_secret"}


class EvaluateBody(EvaluateRequest, WebhookFields):
    """`POST /runs/{id}/evaluate`: what to evaluate, and who is told when it ends."""

    def request(self) -> EvaluateRequest:
        return EvaluateRequest.model_validate(
            self.model_dump(include=set(EvaluateRequest.model_fields))
        )


class TokenizerRequest(TokenizerTrainConfig, WebhookFields, Labels):
    """`POST /tokenizers/train`: the tokenizer's config (its id hashes only that), who is
    told, and its labels. A request equal to one already queued or trained joins it: its
    events and labels stay those of the first requester's."""

    user_id: UserId = 0

    def config(self) -> TokenizerTrainConfig:
        return TokenizerTrainConfig.model_validate(
            self.model_dump(include=set(TokenizerTrainConfig.model_fields))
        )


class TrainRequest(TrainingSpec, WebhookFields, Labels):
    """`POST /runs/train`: the run's spec, where its data comes from, who is told, how it is
    run (the job envelope's fields, jobs/payloads.py `TrainJob`), and its labels."""

    corpus_file_id: str = Field(
        pattern=FILE_ID_PATTERN, description="Data Bank id (SHA-256) of the corpus"
    )
    corpus_format: RunCorpusFormatField = "auto"
    text_field: TextFieldName = DEFAULT_TEXT_FIELD
    tokenizer_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="the tokenizer to train with; none with base_model (it brings its own)",
    )
    user_id: UserId = 0
    from_run_id: str | None = Field(
        default=None,
        pattern=RUN_ID_PATTERN,
        description="start from another run's weights (same architecture and tokenizer)",
    )
    from_checkpoint: str | None = Field(
        default=None,
        pattern=r"^(last|best|[0-9]{1,12})$",
        description="which checkpoint of from_run_id: last (default), best, or a step",
    )
    device: Device = Field(
        default=Device.AUTO,
        description="auto: the worker's device; cpu; cuda: wait for a GPU worker",
    )
    threads: int | None = Field(default=None, ge=1, le=256)

    @model_validator(mode="after")
    def _check_request(self) -> Self:
        if self.corpus_format == "chat":
            if self.base_model is None:
                raise ValueError(
                    "corpus_format chat needs base_model: conversations are formatted with "
                    "the base model's chat template"
                )
            if self.text_field != DEFAULT_TEXT_FIELD:
                raise ValueError("a chat corpus's conversations are its lines' `messages`")
        else:
            check_format_fields(self.corpus_format, self.text_field)
            if self.loss_on != "assistant":
                raise ValueError("loss_on applies to a chat corpus (corpus_format chat)")
        if self.from_checkpoint is not None and self.from_run_id is None:
            raise ValueError("from_checkpoint needs from_run_id")
        if self.base_model is None and self.tokenizer_id is None:
            raise ValueError("give tokenizer_id (or base_model, to fine-tune a model)")
        if self.base_model is not None and self.tokenizer_id is not None:
            raise ValueError(
                "tokenizer_id does not apply with base_model: the base model's own tokenizer "
                "is used"
            )
        if self.base_model is not None and self.from_run_id is not None:
            raise ValueError("give base_model or from_run_id, not both")
        return self

    def spec(self) -> TrainingSpec:
        """The training spec alone (what the loop and the checkpoints see)."""
        return TrainingSpec.model_validate(self.model_dump(include=set(TrainingSpec.model_fields)))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResumeBody(_Body):
    """`POST /runs/{id}/resume`: optionally a larger budget of the run's own kind (more
    steps, epochs or seconds of training than it was given)."""

    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    num_epochs: float | None = Field(default=None, gt=0, le=10_000)
    max_train_seconds: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)

    @model_validator(mode="after")
    def _one_budget(self) -> Self:
        given = [n for n in ("max_steps", "num_epochs", "max_train_seconds") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(f"give at most one budget ({' and '.join(given)} given)")
        return self


class TokenizerAccepted(_Body):
    # The webhook's signing secret, when the request gave a webhook_url and no secret.
    webhook_secret: str | None = None
    tokenizer_id: str
    job_id: str
    status: Status


class TokenizerInfo(_Body, Labels):
    tokenizer_id: str
    status: Status
    message: str | None = None
    created_at: float | None = None
    last_heartbeat_ts: float | None = None
    request: dict[str, JsonValue] | None = None
    # Filled when the job is done: holdout stats and timings as the worker reported them.
    stats: dict[str, JsonValue] | None = None
    timings: dict[str, float] | None = None
    file_id: str | None = None
    # Why the job failed, or why its last attempt did while it waits to be retried:
    # `{kind: user | transient | fatal, code, message}`.
    error: ErrorInfo | None = None
    attempts: int = Field(default=0, description="failed attempts so far (0 until one fails)")

    @classmethod
    def from_record(cls, record: Record[TokenizerSummary]) -> TokenizerInfo:
        summary = record.progress
        labels = Labels.of(record.meta.request if record.meta else None)
        return cls(
            tokenizer_id=record.id,
            status=record.status,
            **labels.model_dump(),
            message=record.message,
            created_at=record.meta.created_at if record.meta else None,
            last_heartbeat_ts=record.last_heartbeat_ts,
            request=record.meta.request if record.meta else None,
            stats=summary.stats if summary else None,
            timings=summary.timings if summary else None,
            file_id=record.file_id,
            error=record.error,
            attempts=record.attempts,
        )


class Page(_Body):
    offset: int
    limit: int
    total: int


class TokenizerList(_Body):
    items: list[TokenizerInfo]
    page: Page


class CorpusList(_Body):
    items: list[CorpusInfo]
    page: Page


class ModelList(_Body):
    items: list[ModelInfo]
    page: Page


class RunAccepted(_Body):
    # The webhook's signing secret, when the request gave a webhook_url and no secret.
    webhook_secret: str | None = None
    run_id: str
    job_id: str
    status: Status


class RunInfo(_Body, Labels):
    run_id: str
    status: Status
    message: str | None = None
    created_at: float | None = None
    last_heartbeat_ts: float | None = None
    progress: RunProgress = Field(default_factory=RunProgress)
    request: dict[str, JsonValue] | None = None
    file_id: str | None = None
    # Why the run failed, or why its last attempt did while it waits to be retried (queued
    # with an error): `{kind: user | transient | fatal, code, message}`.
    error: ErrorInfo | None = None
    attempts: int = Field(default=0, description="failed attempts so far (0 until one fails)")
    queue: str | None = Field(
        default=None, description="the queue the run waits on (the GPU queue for device cuda)"
    )
    waiting_for: str | None = Field(
        default=None, description="why a queued run is not starting, when no worker serves it"
    )

    @classmethod
    def from_record(
        cls,
        record: Record[RunProgress],
        queue: str | None = None,
        waiting_for: str | None = None,
    ) -> RunInfo:
        labels = Labels.of(record.meta.request if record.meta else None)
        return cls(
            run_id=record.id,
            status=record.status,
            **labels.model_dump(),
            message=record.message,
            created_at=record.meta.created_at if record.meta else None,
            last_heartbeat_ts=record.last_heartbeat_ts,
            progress=record.progress or RunProgress(),
            request=record.meta.request if record.meta else None,
            file_id=record.file_id,
            error=record.error,
            attempts=record.attempts,
            queue=queue,
            waiting_for=waiting_for,
        )


class RunList(_Body):
    items: list[RunInfo]
    page: Page


class CheckpointInfo(_Body):
    """One checkpoint of a run in Data Bank: `last` ones resume training, `best` has the
    weights with the lowest validation loss so far. Start another run from one with
    `from_run_id` and `from_checkpoint` (`last`, `best` or the step of a `last`)."""

    step: int
    kind: CheckpointKind
    val_loss: float | None
    created_at: float
    file_id: str

    @classmethod
    def from_entry(cls, entry: CheckpointEntry) -> CheckpointInfo:
        return cls(
            step=entry.step,
            kind=entry.kind,
            val_loss=entry.val_loss,
            created_at=entry.created_at,
            file_id=entry.file_id,
        )


class CheckpointList(_Body):
    run_id: str
    checkpoints: list[CheckpointInfo]

    @classmethod
    def from_index(cls, run_id: str, index: CheckpointIndex) -> CheckpointList:
        """Oldest first: by step, then by when it was written (`best` and `last` may share
        a step)."""
        entries = sorted(index.entries, key=lambda e: (e.step, e.created_at))
        return cls(run_id=run_id, checkpoints=[CheckpointInfo.from_entry(e) for e in entries])


class LogLines(_Body):
    run_id: str
    lines: list[dict[str, JsonValue]]


class MetricsBody(_Body):
    run_id: str
    points: list[dict[str, float | int | None]]


class EvalAccepted(_Body):
    # The webhook's signing secret, when the request gave a webhook_url and no secret.
    webhook_secret: str | None = None
    run_id: str
    eval_id: str
    job_id: str
    status: Status


class DeliveryInfo(_Body):
    """One webhook delivery (one job's end to one endpoint) and its attempts, newest last."""

    delivery_id: str
    msg_id: str  # the `webhook-id` header: the same on every attempt
    job_id: str
    event_type: str
    endpoint_id: str
    url: str | None  # None for an operator's endpoint (not the caller's to see)
    source: Literal["request", "operator"]
    created_at: float
    state: Literal["pending", "delivered", "failed"]
    next_attempt_at: float | None
    attempts: list[Attempt]
    attempt_count: int


class WebhookDeliveries(_Body):
    items: list[DeliveryInfo]


class ArtifactPointer(_Body):
    """Where in Data Bank a run's or tokenizer's tarball lives (clients download it there)."""

    storage: Literal["data-bank"] = "data-bank"
    file_id: str


# --- sweeps (api/sweeps.py, sweeps/) -----------------------------------------------------


class SweepRequest(Labels):
    """`POST /sweeps`: trials of `base` over `space`, at most `max_concurrent` at once, each
    judged at the rungs of successive halving when `early_stopping` is given. The objective
    is the trials' validation bits per character, minimised."""

    model_config = ConfigDict(extra="forbid")

    base: TrainRequest
    space: SearchSpace
    objective: Literal["val_bits_per_char"] = "val_bits_per_char"
    max_concurrent: int = Field(default=2, ge=1, le=MAX_TRIALS)
    early_stopping: Asha | None = None


class SweepAccepted(_Body):
    sweep_id: str
    job_id: str
    status: Status
    trials: int
    run_ids: list[str]


class SweepInfo(_Body, Labels):
    sweep_id: str
    status: Status
    message: str | None = None
    created_at: float | None = None
    request: dict[str, JsonValue] | None = None
    resource: Literal["steps", "seconds"]
    budget: float
    rungs: list[float]
    max_concurrent: int
    progress: SweepProgress
    # Run ids, best first (those that ended without completing last); the best completed.
    leaderboard: list[str]
    best_run_id: str | None = None
    error: ErrorInfo | None = None

    @classmethod
    def from_record(cls, record: Record[SweepProgress], plan: SweepPlan) -> SweepInfo:
        progress = record.progress or SweepProgress(
            trials=[
                TrialState(index=t.index, run_id=t.run_id, params=t.params) for t in plan.trials
            ]
        )
        labels = Labels.of(record.meta.request if record.meta else None)
        return cls(
            sweep_id=record.id,
            status=record.status,
            **labels.model_dump(),
            message=record.message,
            created_at=record.meta.created_at if record.meta else None,
            request=record.meta.request if record.meta else None,
            resource=plan.resource,
            budget=plan.budget,
            rungs=plan.rungs,
            max_concurrent=plan.max_concurrent,
            progress=progress,
            leaderboard=progress.leaderboard,
            best_run_id=progress.best_run_id,
            error=record.error,
        )


class SweepList(_Body):
    items: list[SweepInfo]
    page: Page


# --- comparing runs (api/comparison.py) ----------------------------------------------

MAX_COMPARED = 32  # a sweep's trials fit; a chart of more is unreadable anyway


class CurvePoint(_Body):
    step: int
    tokens: int  # tokens seen: step x batch_size x max_seq_len
    seconds: float | None  # seconds of training (the run's budget clock)
    train_loss: float | None
    val_loss: float | None


class FinalFigures(_Body):
    """A run's result: its latest evaluation (the final one unless another was asked since)
    and its training figures."""

    steps: int
    val_loss: float | None = None
    bits_per_char: float | None = None
    perplexity: float | None = None
    tokens_per_sec: float | None = Field(default=None, description="mean over the curve")
    train_seconds: float | None = Field(default=None, description="seconds of training")


class Sample(_Body):
    prompt: str
    text: str | None = None
    note: str | None = None  # why there is no text (no model yet, generation refused)


class ComparedRun(_Body, Labels):
    run_id: str
    status: Status
    settings: dict[str, JsonValue]
    final: FinalFigures
    curve: list[CurvePoint]
    sample: Sample | None = None


class SettingDifference(_Body):
    field: str
    values: dict[str, JsonValue]  # run id -> its value (null where a run lacks the field)


class RunComparison(_Body):
    runs: list[ComparedRun]
    differing: list[SettingDifference]


def json_object(raw: str | None) -> dict[str, JsonValue]:
    """A JSON object stored in Redis, or {} when absent or not an object."""
    if not raw:
        return {}
    value: JsonValue = json.loads(raw)
    return value if isinstance(value, dict) else {}


# Deepest page a list route serves (`offset`): far past any real listing, and within what
# Redis takes as a range index.
MAX_OFFSET = 10_000_000


class ListQuery:
    """The query of the job lists (`GET /runs`, `/tokenizers`, `/sweeps`): a page, newest
    first, of one status, tag and name prefix (store/labels.py) when given."""

    def __init__(
        self,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        status: Annotated[Status | None, Query()] = None,
        tag: Annotated[
            str | None, Query(pattern=TAG_PATTERN, description="only jobs with this tag")
        ] = None,
        name: Annotated[
            str | None,
            Query(
                min_length=1, max_length=100, description="only jobs whose name starts with this"
            ),
        ] = None,
    ) -> None:
        self.offset, self.limit, self.status, self.tag, self.name = offset, limit, status, tag, name

    def ids(self, store: AnyStatusStore, scope: str | None) -> tuple[list[str], int]:
        """The page's ids in `store` (of `scope`'s jobs, for a user key) and the total."""
        return store.list_ids(
            self.offset, self.limit, self.status, scope, tag=self.tag, name_prefix=self.name
        )

    def page(self, total: int) -> Page:
        return Page(offset=self.offset, limit=self.limit, total=total)


def model_response(body: BaseModel, status_code: int = 200) -> Response:
    """A body we built and validated ourselves, serialised once. Returned as a `Response`,
    FastAPI does not validate it a second time against the route's `response_model` (which
    still documents it): the hot read routes save that work."""
    return Response(body.model_dump_json(), status_code, media_type="application/json")
