"""What each submit does, one small function per action; routes only map HTTP onto these.

Every check that can be made at submit time is made here (tokenizer finished, the run's
memory estimate within what a worker may use, artifact and corpus still in Data Bank, the
checkpoint to start from exists and fits), so a bad request is refused now rather than
minutes later in a job (or, for memory, by the kernel's OOM killer).
"""

from __future__ import annotations

import time
import uuid

from pydantic import JsonValue, ValidationError

from model_trainer.api.auth import Principal
from model_trainer.api.base_models import check_base_model
from model_trainer.api.deps import (
    ApiContext,
    artifact_available,
    memory_limit,
    require_corpus,
)
from model_trainer.api.errors import FieldError, FieldsInvalid
from model_trainer.api.generation import GenerateRequest, ModelRef
from model_trainer.api.schemas import (
    SECRET_FIELDS,
    DeliveryInfo,
    EvalAccepted,
    EvaluateBody,
    ResumeBody,
    RunAccepted,
    TokenizerAccepted,
    TokenizerRequest,
    TrainRequest,
    WebhookDeliveries,
    WebhookFields,
)
from model_trainer.errors import ConflictError, NotFoundError
from model_trainer.hub import is_hub_model
from model_trainer.jobs.payloads import (
    EvaluateJob,
    InitFrom,
    TokenizerJob,
    TrainJob,
)
from model_trainer.jobs.queue import run_queue_name
from model_trainer.store.checkpoints import CheckpointIndex, read_checkpoints
from model_trainer.store.fencing import Command, DirectWriter
from model_trainer.store.keys import JobField, JobKind
from model_trainer.store.records import (
    EvalInfo,
    EvalResult,
    Record,
    RecordMeta,
    RunProgress,
    Status,
    TokenizerSummary,
    hdel,
    hset,
)
from model_trainer.training.config import TrainingSpec
from model_trainer.training.memory import MemoryEstimate, estimate_run_memory
from model_trainer.webhooks.addresses import check_url
from model_trainer.webhooks.records import Endpoint, WebhookStore, new_secret


def submit_tokenizer(
    ctx: ApiContext, request: TokenizerRequest, who: Principal
) -> TokenizerAccepted:
    """The same request twice is the same tokenizer: answer its state instead of training it
    again (asked by another principal, it is theirs to see too). A failed or cancelled one,
    or one whose artifact is gone from Data Bank, is trained anew under the same id."""
    ctx.quotas.submission(who)
    check_webhook(ctx, request)
    config = request.config()
    tokenizer_id = config.tokenizer_id()
    store = ctx.tokenizers
    current = store.record(tokenizer_id)
    state = current.status if current else None
    if state is Status.COMPLETED and current and not artifact_available(ctx, current.file_id):
        state = Status.FAILED
    if state is not None and state not in (Status.FAILED, Status.CANCELLED):
        store.hold(tokenizer_id, who.name)
        # Joining a job that has not ended: its end is told to this webhook too.
        secret = add_webhook(ctx, tokenizer_id, request) if not state.terminal else None
        return TokenizerAccepted(
            tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=state, webhook_secret=secret
        )
    require_corpus(ctx, config.corpus_file_id)
    ctx.quotas.new_job(who)
    meta = RecordMeta(
        created_at=time.time(),
        request=request.model_dump(mode="json", exclude=SECRET_FIELDS),
        owner=who.name,
    )
    if state is not None:
        store.reset(tokenizer_id, meta)
    elif not store.create(tokenizer_id, meta):
        # Another request created it between our read and write.
        store.hold(tokenizer_id, who.name)
        latest = store.status(tokenizer_id) or Status.QUEUED
        secret = add_webhook(ctx, tokenizer_id, request) if not latest.terminal else None
        return TokenizerAccepted(
            tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=latest, webhook_secret=secret
        )
    secret = add_webhook(ctx, tokenizer_id, request)
    payload = TokenizerJob(tokenizer_id=tokenizer_id, config=config, user_id=request.user_id)
    ctx.queue.submit(JobKind.TOKENIZER, tokenizer_id, payload)
    return TokenizerAccepted(
        tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=Status.QUEUED, webhook_secret=secret
    )


def submit_run(ctx: ApiContext, config: TrainRequest, who: Principal) -> RunAccepted:
    """A new run (runs are never deduplicated) once its tokenizer and corpus are usable, it
    fits in a worker's memory, the checkpoint it starts from (`from_run_id`) exists and
    holds the same model, and `who` has room for it. The tokenizer and the run to start
    from must be ones `who` sees."""
    ctx.quotas.submission(who)
    check_webhook(ctx, config)
    if config.base_model is not None:
        check_base_model(ctx, config)  # its own tokenizer; context and memory checked
        tokenizer = None
    else:
        config, tokenizer = usable_tokenizer(ctx, config, who)
        admit_memory(ctx, config, tokenizer)
    init_from: InitFrom | None = None
    source_id = config.from_run_id
    if source_id is not None:
        # Stored and enqueued as resolved: a request that names no checkpoint says "last".
        config = config.model_copy(update={"from_checkpoint": config.from_checkpoint or "last"})
        init_from = resolve_init_from(ctx, config, source_id, who)
    if tokenizer is not None:
        require_tokenizer_artifact(ctx, config, tokenizer)
    if init_from is not None and not artifact_available(ctx, init_from.file_id):
        raise ConflictError(
            f"checkpoint {init_from.kind} at step {init_from.step} of run {init_from.run_id!r} "
            "is not in Data Bank any more: start from another one "
            f"(GET /runs/{init_from.run_id}/checkpoints)"
        )
    require_corpus(ctx, config.corpus_file_id)
    ctx.quotas.new_job(who, run=True)
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    meta = RecordMeta(
        created_at=time.time(),
        request=config.model_dump(mode="json", exclude=SECRET_FIELDS),
        owner=who.name,
    )
    ctx.runs.create(run_id, meta)
    secret = add_webhook(ctx, run_id, config)
    ctx.queue.submit(JobKind.RUN, run_id, train_job(run_id, config, init_from))
    return RunAccepted(run_id=run_id, job_id=run_id, status=Status.QUEUED, webhook_secret=secret)


def train_job(run_id: str, config: TrainRequest, init_from: InitFrom | None = None) -> TrainJob:
    """The job payload of a run of `config` (a checked request)."""
    return TrainJob(
        run_id=run_id,
        spec=config.spec(),
        corpus_file_id=config.corpus_file_id,
        corpus_format=config.corpus_format,
        text_field=config.text_field,
        tokenizer_id=config.tokenizer_id,
        user_id=config.user_id,
        device=config.device,
        threads=config.threads,
        init_from=init_from,
    )


def usable_tokenizer(
    ctx: ApiContext, config: TrainRequest, who: Principal
) -> tuple[TrainRequest, Record[TokenizerSummary]]:
    """The run's tokenizer once it is one `who` sees and it is trained (404, 409), and the
    request reading the corpus as the tokenizer did (`inherit_corpus_reading`)."""
    if config.tokenizer_id is None:
        raise ValueError("usable_tokenizer needs a run with tokenizer_id")
    tokenizer = ctx.tokenizers.record(config.tokenizer_id, who.scope)
    if tokenizer is None:
        raise NotFoundError(f"unknown tokenizer_id {config.tokenizer_id!r}")
    if tokenizer.status is not Status.COMPLETED:
        raise ConflictError(
            f"tokenizer {config.tokenizer_id!r} is {tokenizer.status.value}, not completed: "
            "wait for it to finish (GET /tokenizers/{id})"
        )
    return inherit_corpus_reading(config, tokenizer), tokenizer


def require_tokenizer_artifact(
    ctx: ApiContext, config: TrainRequest, tokenizer: Record[TokenizerSummary]
) -> None:
    if not artifact_available(ctx, tokenizer.file_id):
        raise ConflictError(
            f"the artifact of tokenizer {config.tokenizer_id!r} is not in Data Bank any more: "
            "train the tokenizer again (POST /tokenizers/train with the same request)"
        )


def inherit_corpus_reading(
    config: TrainRequest, tokenizer: Record[TokenizerSummary]
) -> TrainRequest:
    """A run on the very corpus its tokenizer was trained on reads it as the tokenizer did:
    `corpus_format` and `text_field` the request left out are the tokenizer's (a JSONL
    tokenizer trained with `text_field: body` needs no second `text_field`). What the
    request set stays; a `text_field` is not inherited by a run that reads plain text."""
    request = tokenizer.meta.request if tokenizer.meta else {}
    if request.get("corpus_file_id") != config.corpus_file_id:
        return config
    given = config.model_fields_set
    update: dict[str, str] = {}
    corpus_format = request.get("corpus_format")
    if "corpus_format" not in given and isinstance(corpus_format, str):
        update["corpus_format"] = corpus_format
    text_field = request.get("text_field")
    reads_text = update.get("corpus_format", config.corpus_format) == "text"
    if "text_field" not in given and isinstance(text_field, str) and not reads_text:
        update["text_field"] = text_field
    return config.model_copy(update=update) if update else config


def admit_memory(
    ctx: ApiContext, config: TrainRequest, tokenizer: Record[TokenizerSummary]
) -> None:
    """422 (`details` name the fields that size it) when the run's memory estimate
    (training/memory.py) exceeds what a worker may use."""
    limit = memory_limit(ctx, run_queue_name(ctx.settings.rq, config.device))
    if limit is None:
        return
    estimate = estimate_run_memory(config, _vocab_size(tokenizer))
    if estimate.total_bytes <= limit.bytes:
        return
    fields = _memory_fields(config, estimate)
    numbers = f"the estimate is {estimate.total_bytes} bytes, the limit {limit.bytes} bytes"
    raise FieldsInvalid(
        f"this run needs about {estimate.describe()}, more than the {limit.describe()}; "
        f"lower {_or_list([f'{name} (now {value})' for name, value, _ in fields])}",
        [
            FieldError(field=name, message=f"{value}: {why}; {numbers}", type="memory_limit")
            for name, value, why in fields
        ],
    )


def _memory_fields(config: TrainRequest, estimate: MemoryEstimate) -> list[tuple[str, object, str]]:
    """The fields to lower, with their values and what they size, biggest levers first."""
    arch = config.resolved()
    fields: list[tuple[str, object, str]] = [
        ("n_embd", arch.n_embd, "weights and optimizer state grow with its square"),
        ("n_layer", arch.n_layer, "weights, optimizer state and activations grow with it"),
        ("batch_size", config.batch_size, "activations and logits grow with it"),
        ("max_seq_len", config.max_seq_len, "activations and logits grow with it"),
    ]
    if estimate.attention_score_bytes:
        fields.append(
            (
                "dropout",
                config.dropout,
                "above 0, attention keeps batch x heads x max_seq_len^2 scores per layer",
            )
        )
    if estimate.window_bytes * 10 > estimate.total_bytes:
        fields.append(
            ("eval_batches", config.eval_batches, "the validation windows stay in memory")
        )
    return fields


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _vocab_size(tokenizer: Record[TokenizerSummary]) -> int:
    """What the finished tokenizer reported, else what it was asked for, else 0 (then the
    estimate leaves out the embedding and the logits: a lower bound)."""
    if tokenizer.progress is not None:
        return tokenizer.progress.vocab_size
    asked = tokenizer.meta.request.get("vocab_size") if tokenizer.meta else None
    return asked if isinstance(asked, int) else 0


def resolve_init_from(
    ctx: ApiContext, config: TrainRequest, source_id: str, who: Principal
) -> InitFrom:
    """The checkpoint of run `source_id` that `config` starts from, once it is known to exist
    and to hold the model `config` describes.

    404 when the run is unknown; 422 when its model differs (family, architecture, context
    length or tokenizer; `details` names each differing field); 409 when its request cannot
    be read or it has no such checkpoint (the message lists those it has).
    """
    source = ctx.runs.record(source_id, who.scope)
    if source is None:
        raise NotFoundError(f"unknown from_run_id {source_id!r}")
    request = source.meta.request if source.meta else None
    differences = _model_differences(source_id, request, config)
    if differences:
        fields = ", ".join(d.field for d in differences)
        raise FieldsInvalid(
            f"run {source_id!r} trained a different model than this request: {fields} differ "
            f"({'; '.join(d.message for d in differences)}); starting from its weights needs "
            "the same model_family, architecture (model_size, n_layer, n_head, n_embd, "
            "n_kv_head, tie_word_embeddings), "
            "max_seq_len and tokenizer_id",
            differences,
        )
    which = config.from_checkpoint or "last"
    index = read_checkpoints(ctx.redis, source_id)
    entry = index.find(which)
    if entry is None:
        raise ConflictError(
            f"run {source_id!r} has no checkpoint {which!r} (from_checkpoint); "
            f"{_describe_checkpoints(index)}"
        )
    return InitFrom(run_id=source_id, step=entry.step, kind=entry.kind, file_id=entry.file_id)


def _base_model_ref(run_id: str, request: dict[str, JsonValue] | None) -> ModelRef:
    """The base model a fine-tuning run started from, to generate with (409 otherwise)."""
    base = request.get("base_model") if request else None
    if not isinstance(base, str):
        raise ConflictError(f"run {run_id!r} trained from scratch: it has no base model")
    if is_hub_model(base):
        raise ConflictError(
            f"run {run_id!r} started from {base}, which only workers fetch (the API does not "
            "reach the hub): upload that model folder (POST /models) to generate with it"
        )
    return ModelRef(run_id=run_id, file_id=base, source="base")


def _describe_checkpoints(index: CheckpointIndex) -> str:
    lasts = [str(e.step) for e in index.entries if e.kind == "last"]
    best = index.best()
    if not lasts and best is None:
        return "it has no checkpoints yet"
    parts = []
    if lasts:
        parts.append(f"last at step {', '.join(lasts)}")
    if best is not None:
        parts.append(f"best at step {best.step}")
    return f"it has: {'; '.join(parts)} (from_checkpoint: last, best or one of those steps)"


def _model_differences(
    source_id: str, request: dict[str, JsonValue] | None, config: TrainRequest
) -> list[FieldError]:
    """The fields whose value in run `source_id`'s request differs from `config`'s."""
    try:
        source = TrainRequest.model_validate(request)
    except ValidationError as exc:
        raise ConflictError(
            f"cannot read the request of run {source_id!r} to compare its model: "
            f"{exc.error_count()} invalid field(s)"
        ) from exc
    arch, source_arch = config.resolved(), source.resolved()
    pairs: list[tuple[str, object, object]] = [
        ("model_family", source.model_family.value, config.model_family.value),
        ("n_layer", source_arch.n_layer, arch.n_layer),
        ("n_head", source_arch.n_head, arch.n_head),
        ("n_embd", source_arch.n_embd, arch.n_embd),
        ("n_kv_head", source_arch.n_kv_head, arch.n_kv_head),
        ("tie_word_embeddings", source_arch.tie_word_embeddings, arch.tie_word_embeddings),
        ("max_seq_len", source.max_seq_len, config.max_seq_len),
        ("tokenizer_id", source.tokenizer_id, config.tokenizer_id),
    ]
    return [
        FieldError(
            field=name,
            message=f"run {source_id} has {theirs!r}, this request {ours!r}",
            type="differs_from_source_run",
        )
        for name, theirs, ours in pairs
        if theirs != ours
    ]


def cancel_run(ctx: ApiContext, run: Record[RunProgress]) -> None:
    """Ask the worker to stop within a step; a run nobody has started is cancelled at once."""
    if run.status.terminal:
        raise ConflictError(f"run {run.id!r} is already {run.status.value}")
    ctx.runs.cancel(run.id)


def pause_run(ctx: ApiContext, run: Record[RunProgress]) -> None:
    """Ask the worker to checkpoint and let the run go (within a step); a run nobody has
    started is paused at once. Pausing a paused run changes nothing."""
    if run.status.terminal:
        raise ConflictError(f"run {run.id!r} is already {run.status.value}: nothing to pause")
    if run.status is Status.PAUSED:
        return
    DirectWriter(ctx.redis).write(hset(run.id, (JobField.PAUSE, "1")))
    # Queued: paused here unless a worker takes it first (then it pauses at its first step).
    ctx.runs.transition(
        run.id,
        Status.QUEUED,
        Status.PAUSED,
        "paused before it started; resume it to start",
        also=(hdel(run.id, JobField.PAUSE),),
    )


def resume_run(ctx: ApiContext, run: Record[RunProgress], body: ResumeBody, who: Principal) -> None:
    """Queue a paused run again, from its last checkpoint, with a larger budget when `body`
    gives one (of the run's own kind: more steps, epochs or seconds)."""
    if run.status is not Status.PAUSED:
        raise ConflictError(f"run {run.id!r} is {run.status.value}, not paused: nothing to resume")
    ctx.quotas.new_job(who, run=True)
    raw = ctx.runs.field(run.id, JobField.PAYLOAD)
    if raw is None or run.meta is None:
        raise ConflictError(f"run {run.id!r} lost its request; it cannot be resumed")
    job = TrainJob.model_validate_json(raw)
    budget = body.model_dump(exclude_none=True)
    also: tuple[Command, ...] = (hdel(run.id, JobField.PAUSE),)
    if budget:
        spec = _larger_budget(job.spec, budget)
        job = job.model_copy(update={"spec": spec})
        request = {**run.meta.request, **spec.model_dump(mode="json", include=set(BUDGET_FIELDS))}
        meta = run.meta.model_copy(update={"request": request})
        also += (
            *hset(
                run.id,
                (JobField.PAYLOAD, job.model_dump_json()),
                (JobField.META, meta.model_dump_json()),
            ),
        )
    if not ctx.runs.transition(run.id, Status.PAUSED, Status.QUEUED, "resumed; queued", also):
        raise ConflictError(f"run {run.id!r} changed while being resumed; try again")
    ctx.queue.requeue(JobKind.RUN, run.id)


BUDGET_FIELDS = ("max_steps", "num_epochs", "max_train_seconds")


def _larger_budget(spec: TrainingSpec, given: dict[str, float]) -> TrainingSpec:
    """`spec` with the budget `given`, which must be of the same kind and larger (422)."""
    (name, value), current = next(iter(given.items())), spec.budget()
    kind = {"max_steps": "steps", "num_epochs": "epochs", "max_train_seconds": "seconds"}[name]
    if kind != current.kind or value <= current.value:
        raise FieldsInvalid(
            f"{name} {value:g} is not a larger budget than the run's {current.kind} budget of "
            f"{current.value:g}: resume with more {current.kind} (or with no budget)",
            [FieldError(field=name, message="must exceed the run's budget", type="budget")],
        )
    update: dict[str, float | None] = dict.fromkeys(BUDGET_FIELDS)
    update[name] = value
    return TrainingSpec.model_validate({**spec.model_dump(), **update})


def latest_evaluation(ctx: ApiContext, run_id: str) -> EvalInfo | None:
    """The run's latest evaluation (an `eval` job's record, or the run's final one)."""
    eval_id = ctx.runs.field(run_id, JobField.EVAL)
    record = ctx.evals.record(eval_id) if eval_id else None
    if record is None:
        return None
    request = record.meta.request if record.meta else {}
    corpus, split = request.get("corpus_file_id"), request.get("split")
    result = record.progress or EvalResult()
    return EvalInfo.model_validate(
        {
            **result.model_dump(),
            "split": result.split or (split if isinstance(split, str) else "corpus"),
            "run_id": run_id,
            "eval_id": record.id,
            "status": record.status,
            "message": record.message,
            "error": record.error,
            "corpus_file_id": corpus if isinstance(corpus, str) else None,
        }
    )


def submit_evaluation(
    ctx: ApiContext, run: Record[RunProgress], body: EvaluateBody, who: Principal
) -> EvalAccepted:
    """One evaluation at a time per run, of a completed run only (one `who` sees)."""
    ctx.quotas.submission(who)
    check_webhook(ctx, body)
    request = body.request()
    if run.status is not Status.COMPLETED or run.file_id is None:
        raise ConflictError(
            f"run {run.id!r} is {run.status.value}: only a completed run is evaluated"
        )
    if request.corpus_file_id is not None:
        require_corpus(ctx, request.corpus_file_id)
    current = latest_evaluation(ctx, run.id)
    if current is not None and not current.status.terminal:
        raise ConflictError(
            f"evaluation {current.eval_id} of run {run.id!r} is still {current.status}"
        )
    ctx.quotas.new_job(who)
    eval_id = f"eval-{uuid.uuid4().hex[:12]}"
    asked = run.meta.request if run.meta else {}
    user_id = asked.get("user_id", 0)
    job = EvaluateJob(
        run_id=run.id,
        eval_id=eval_id,
        request=request,
        user_id=user_id if isinstance(user_id, int) else 0,
    )
    described: dict[str, JsonValue] = {
        "run_id": run.id,
        **request.model_dump(mode="json"),
        "user_id": job.user_id,
    }
    meta = RecordMeta(created_at=time.time(), request=described, owner=who.name)
    ctx.evals.create(eval_id, meta)
    secret = add_webhook(ctx, eval_id, body)
    DirectWriter(ctx.redis).write(hset(run.id, (JobField.EVAL, eval_id)))
    ctx.queue.submit(JobKind.EVAL, eval_id, job)
    return EvalAccepted(
        run_id=run.id, eval_id=eval_id, job_id=eval_id, status=Status.QUEUED, webhook_secret=secret
    )


def check_webhook(ctx: ApiContext, request: WebhookFields) -> None:
    """A request's webhook_url is refused (422) before anything is created for it."""
    if request.webhook_url is not None:
        check_url(request.webhook_url, allow_private=ctx.settings.webhooks.allow_private_addresses)


def add_webhook(ctx: ApiContext, job_id: str, request: WebhookFields) -> str | None:
    """Keep the request's endpoint for the job's end (before the job can end); returns the
    secret when it was made here (the caller shows it once)."""
    if request.webhook_url is None:
        return None
    secret = request.webhook_secret or new_secret()
    endpoint = Endpoint(url=request.webhook_url, secret=secret, source="request")
    WebhookStore(ctx.redis).add_endpoint(job_id, endpoint)
    return None if request.webhook_secret else secret


def webhook_deliveries(ctx: ApiContext, job_id: str) -> WebhookDeliveries:
    """A job's deliveries and their attempts (an operator endpoint's URL left out)."""
    items = [
        DeliveryInfo(
            **d.model_dump(exclude={"payload", "url"}),
            url=d.url if d.source == "request" else None,
        )
        for d in WebhookStore(ctx.redis).deliveries(job_id)
    ]
    return WebhookDeliveries(items=items)


def resolve_generation_model(
    ctx: ApiContext, run_id: str, request: GenerateRequest, who: Principal
) -> ModelRef:
    """Where the model to generate from is in Data Bank: the completed run's artifact, or
    the asked checkpoint (`last`, `best`, a step) from the run's index, with what building
    its model needs (the run's request and its tokenizer's artifact).

    404 when the run is unknown (or not `who`'s to see); 409 when it has no artifact and
    no checkpoint was asked, when it has no such checkpoint, or when its model cannot be
    rebuilt.
    """
    run = ctx.runs.record(run_id, who.scope)
    if run is None:
        raise NotFoundError(f"unknown run {run_id!r}")
    if request.checkpoint == "base":
        return _base_model_ref(run_id, run.meta.request if run.meta else None)
    index = read_checkpoints(ctx.redis, run_id)
    if request.checkpoint is None:
        if run.status is Status.COMPLETED and run.file_id is not None:
            return ModelRef(run_id=run_id, file_id=run.file_id, source="artifact")
        raise ConflictError(
            f"run {run_id!r} is {run.status.value}: it has no model until it completes; "
            f"generate from one of its checkpoints instead (checkpoint); "
            f"{_describe_checkpoints(index)}"
        )
    which = str(request.checkpoint)
    entry = index.find(which)
    if entry is None:
        raise ConflictError(
            f"run {run_id!r} has no checkpoint {which!r}; {_describe_checkpoints(index)}"
        )
    try:
        config = TrainRequest.model_validate(run.meta.request if run.meta else None)
    except ValidationError as exc:
        raise ConflictError(
            f"cannot read the request of run {run_id!r} to build its model: "
            f"{exc.error_count()} invalid field(s)"
        ) from exc
    if config.tokenizer_id is None:
        raise ConflictError(
            f"run {run_id!r} fine-tunes a base model: generate from its artifact once it "
            "completes (checkpoints of fine-tuning runs are for resuming it)"
        )
    tokenizer_file_id = ctx.tokenizers.file_id(config.tokenizer_id)
    if tokenizer_file_id is None:
        raise ConflictError(
            f"tokenizer {config.tokenizer_id!r} of run {run_id!r} has no artifact any more"
        )
    return ModelRef(
        run_id=run_id,
        file_id=entry.file_id,
        source="checkpoint",
        step=entry.step,
        config=config.spec(),
        tokenizer_id=config.tokenizer_id,
        tokenizer_file_id=tokenizer_file_id,
    )
