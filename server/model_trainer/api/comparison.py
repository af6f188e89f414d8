"""Runs side by side (`GET /runs/compare`, `modeltrainer run compare`, the dashboard's compare
view and a sweep's page): each run's curves against step, tokens seen and seconds, the
settings that differ between them, their final figures, and one sample each for a prompt.

Read from what the runs already keep (their records, loss curves and latest evaluations): a
comparison costs a few round trips per run and trains nothing; a sample costs one
generation per completed run, through the API's generation pool.
"""

from __future__ import annotations

import math

from model_trainer.api.auth import Principal
from model_trainer.api.deps import ApiContext
from model_trainer.api.schemas import (
    SECRET_FIELDS,
    ComparedRun,
    CurvePoint,
    EvalInfo,
    FinalFigures,
    RunComparison,
    SettingDifference,
)
from model_trainer.errors import NotFoundError
from model_trainer.store.labels import LABEL_FIELDS, Labels
from model_trainer.store.records import Record, RunProgress, Status
from model_trainer.store.runlog import RunLogReader

# Request fields that say who asked or who is told, not how the model was trained.
_NOT_SETTINGS = frozenset({*LABEL_FIELDS, *SECRET_FIELDS, "webhook_url", "user_id"})


def compare_runs(
    ctx: ApiContext,
    run_ids: list[str],
    who: Principal,
    latest_eval: dict[str, EvalInfo | None],
) -> RunComparison:
    """The runs `run_ids` (each one `who` sees, else 404), in the order given."""
    runs: list[ComparedRun] = []
    for run_id in run_ids:
        record = ctx.runs.record(run_id, who.scope)  # None too for a run `who` cannot see
        if record is None:
            raise NotFoundError(f"unknown run {run_id!r}")
        runs.append(_compared(ctx, record, latest_eval.get(run_id)))
    return RunComparison(runs=runs, differing=_differences(runs))


def _compared(
    ctx: ApiContext, record: Record[RunProgress], evaluation: EvalInfo | None
) -> ComparedRun:
    request = record.meta.request if record.meta else {}
    batch, context = request.get("batch_size"), request.get("max_seq_len")
    per_step = batch * context if isinstance(batch, int) and isinstance(context, int) else 0
    points = RunLogReader(ctx.redis).metrics(record.id)
    curve = [
        CurvePoint(
            step=p.step,
            tokens=p.step * per_step,
            seconds=p.elapsed_sec,
            train_loss=p.train_loss,
            val_loss=p.val_loss,
        )
        for p in points
    ]
    speeds = [p.tokens_per_sec for p in points if p.tokens_per_sec]
    progress = record.progress or RunProgress()
    final = FinalFigures(
        steps=progress.step,
        val_loss=progress.val_loss,
        tokens_per_sec=sum(speeds) / len(speeds) if speeds else None,
        train_seconds=points[-1].elapsed_sec if points else None,
    )
    if evaluation is not None and evaluation.status is Status.COMPLETED:
        final = final.model_copy(
            update={
                "val_loss": evaluation.loss,
                "bits_per_char": evaluation.bits_per_char,
                "perplexity": evaluation.perplexity,
            }
        )
    elif final.val_loss is not None and math.isfinite(final.val_loss):
        final = final.model_copy(update={"perplexity": math.exp(min(final.val_loss, 50.0))})
    return ComparedRun(
        run_id=record.id,
        **Labels.of(request).model_dump(),
        status=record.status,
        settings={k: v for k, v in request.items() if k not in _NOT_SETTINGS},
        final=final,
        curve=curve,
    )


def _differences(runs: list[ComparedRun]) -> list[SettingDifference]:
    """The settings whose values are not the same in every run, in field order."""
    fields = list(dict.fromkeys(k for run in runs for k in run.settings))
    differing = []
    for name in fields:
        values = {run.run_id: run.settings.get(name) for run in runs}
        if len({repr(v) for v in values.values()}) > 1:
            differing.append(SettingDifference(field=name, values=values))
    return differing
