"""What `/sweeps` does: expand and check a sweep at submit, cancel one, read one.

Every trial is expanded and checked here, before anything is written: its request must be a
valid run (the base with the trial's settings), fit a worker's memory, and read a usable
tokenizer and corpus. A sweep is refused whole (422 naming the trial and the field) or
accepted whole; its driver (sweeps/driver.py) then only starts what was checked.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Literal

from pydantic import JsonValue, ValidationError

from model_trainer.api.auth import Principal
from model_trainer.api.base_models import check_base_model
from model_trainer.api.deps import ApiContext, require_corpus
from model_trainer.api.errors import FieldError, FieldsInvalid
from model_trainer.api.schemas import (
    SECRET_FIELDS,
    SweepAccepted,
    SweepInfo,
    SweepRequest,
    TrainRequest,
)
from model_trainer.api.services import (
    admit_memory,
    require_tokenizer_artifact,
    train_job,
    usable_tokenizer,
)
from model_trainer.errors import ConflictError, NotFoundError
from model_trainer.store.fencing import DirectWriter
from model_trainer.store.keys import JobField
from model_trainer.store.labels import LABEL_FIELDS, MAX_TAGS
from model_trainer.store.records import Record, RecordMeta, Status, SweepProgress, hset
from model_trainer.sweeps.plan import SweepPlan, Trial, rungs_for


def trial_run_id(sweep_id: str, index: int) -> str:
    """A trial's run id, fixed by its sweep and place: a driver that starts it twice finds
    it created (no duplicate run)."""
    digest = hashlib.sha256(f"{sweep_id}:{index}".encode()).hexdigest()
    return f"run-{digest[:16]}"


def submit_sweep(ctx: ApiContext, request: SweepRequest, who: Principal) -> SweepAccepted:
    ctx.quotas.submission(who)
    base = request.base
    if base.webhook_url is not None:
        raise _invalid("base.webhook_url", "a sweep's trials take no webhooks; watch the sweep")
    if base.from_run_id is not None:
        raise _invalid("base.from_run_id", "a sweep's trials start from random weights")
    budget = base.budget()
    if budget.kind == "epochs":
        raise _invalid(
            "base.num_epochs",
            "a sweep compares trials at fixed budgets: give max_steps or max_train_seconds",
        )
    resource: Literal["steps", "seconds"] = "steps" if budget.kind == "steps" else "seconds"
    try:
        points = request.space.points()
    except ValueError as exc:
        raise _invalid("space", str(exc)) from exc
    # A sweep of fine-tuning runs: its base model brings the tokenizer (api/base_models.py).
    tokenizer = None
    if base.base_model is None:
        base, tokenizer = usable_tokenizer(ctx, base, who)
    sweep_id = f"swp-{uuid.uuid4().hex[:16]}"
    rungs = rungs_for(budget.value, request.early_stopping)
    trials: list[Trial] = []
    for index, params in enumerate(points):
        config = _trial_request(base, request, sweep_id, index, params, rungs)
        if tokenizer is None:
            check_base_model(ctx, config)  # read once, then from Redis
        else:
            admit_memory(ctx, config, tokenizer)
        run_id = trial_run_id(sweep_id, index)
        trials.append(
            Trial(
                index=index,
                run_id=run_id,
                params=dict(params),
                request=config.model_dump(mode="json", exclude=SECRET_FIELDS),
                job=train_job(run_id, config),
            )
        )
    if tokenizer is not None:
        require_tokenizer_artifact(ctx, base, tokenizer)
    require_corpus(ctx, base.corpus_file_id)
    plan = SweepPlan(
        sweep_id=sweep_id,
        owner=who.name,
        trials=trials,
        order=request.space.start_order(len(trials)),
        max_concurrent=request.max_concurrent,
        resource=resource,
        budget=budget.value,
        rungs=rungs,
        reduction_factor=request.early_stopping.reduction_factor if request.early_stopping else 3,
    )
    meta = RecordMeta(
        created_at=time.time(), request=request.model_dump(mode="json"), owner=who.name
    )
    # The plan first: a driver that finds the record finds its plan.
    DirectWriter(ctx.redis).write(hset(sweep_id, (JobField.PAYLOAD, plan.model_dump_json())))
    ctx.sweeps.create(sweep_id, meta)
    return SweepAccepted(
        sweep_id=sweep_id,
        job_id=sweep_id,
        status=Status.QUEUED,
        trials=len(trials),
        run_ids=[t.run_id for t in trials],
    )


def _trial_request(
    base: TrainRequest,
    request: SweepRequest,
    sweep_id: str,
    index: int,
    params: dict[str, int | float | str | bool],
    rungs: list[float],
) -> TrainRequest:
    """The base with the trial's settings, named after the sweep and tagged `sweep:<id>`
    (so `GET /runs?tag=sweep:<id>` lists them), validating at each rung (`eval_at`: the
    loss successive halving compares is measured there, not at the next `eval_interval`);
    422 naming the trial when it is invalid."""
    tags = [*base.tags, f"sweep:{sweep_id}"][-MAX_TAGS:]
    label = request.name or sweep_id
    fields: dict[str, JsonValue] = {
        **base.model_dump(mode="json", exclude={*SECRET_FIELDS, *LABEL_FIELDS}),
        **params,
        "name": f"{label} #{index}"[:100],
        "tags": list(tags),
        "metadata": {**base.metadata, "sweep_id": sweep_id, "trial": str(index)},
        "eval_at": [float(p) for p in sorted({*base.eval_at, *rungs})[:16]],
    }
    try:
        return TrainRequest.model_validate(fields)
    except ValidationError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        raise FieldsInvalid(
            f"trial {index} ({shown}) is not a valid run: {exc.errors()[0]['msg']}",
            [
                FieldError(
                    # The parameter the error is about; the trial's settings together when
                    # the rule spans several fields (a width and a head count).
                    field="space.parameters."
                    + (
                        str(e["loc"][0]) if e["loc"] and e["loc"][0] in params else ",".join(params)
                    ),
                    message=f"trial {index}: {e['msg']}",
                    type=e["type"],
                )
                for e in exc.errors()
            ],
        ) from exc


def _invalid(field: str, message: str) -> FieldsInvalid:
    return FieldsInvalid(message, [FieldError(field=field, message=message, type="sweep")])


def sweep_plan(ctx: ApiContext, sweep_id: str) -> SweepPlan:
    raw = ctx.sweeps.field(sweep_id, JobField.PAYLOAD)
    if raw is None:
        raise NotFoundError(f"sweep {sweep_id!r} has no plan any more")
    return SweepPlan.model_validate_json(raw)


def sweep_info(ctx: ApiContext, record: Record[SweepProgress]) -> SweepInfo:
    return SweepInfo.from_record(record, sweep_plan(ctx, record.id))


def cancel_sweep(ctx: ApiContext, record: Record[SweepProgress]) -> None:
    """Its trials are cancelled now (a queued or paused one at once, a running one within a
    step); the sweep ends `cancelled` at once when nobody drives it yet, else on its
    driver's next pass."""
    if record.status.terminal:
        raise ConflictError(f"sweep {record.id!r} is already {record.status.value}")
    ctx.sweeps.request_cancel(record.id)
    reason = f"cancelled with its sweep {record.id}"
    plan = sweep_plan(ctx, record.id)
    for trial, run in zip(
        plan.trials, ctx.runs.records([t.run_id for t in plan.trials]), strict=True
    ):
        if run is not None and not run.status.terminal:
            ctx.runs.cancel(trial.run_id, reason)
    ctx.sweeps.cancel(record.id)
