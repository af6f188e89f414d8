"""`/sweeps`: submit, status and leaderboard, list, cancel (api/sweeps.py, sweeps/)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from model_trainer.api import sweeps
from model_trainer.api.auth import Me, Principal
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import error_responses
from model_trainer.api.ids import SweepId
from model_trainer.api.schemas import (
    ListQuery,
    SweepAccepted,
    SweepInfo,
    SweepList,
    SweepRequest,
)
from model_trainer.errors import NotFoundError
from model_trainer.store.records import Record, SweepProgress

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 409, 422))
def create_sweep(request: SweepRequest, ctx: Ctx, who: Me) -> SweepAccepted:
    """Trials of `base` over `space` (a grid, or `trials` random draws), at most
    `max_concurrent` at once, the worse ones stopped at the rungs of successive halving with
    `early_stopping`. Every trial is checked now: 422 names the one that cannot run. Trials
    are ordinary runs (tagged `sweep:<id>`) and count in the owner's quotas."""
    return sweeps.submit_sweep(ctx, request, who)


@router.get("")
def list_sweeps(ctx: Ctx, who: Me, query: Annotated[ListQuery, Depends()]) -> SweepList:
    ids, total = query.ids(ctx.sweeps, who.scope)
    records = [r for r in ctx.sweeps.records(ids) if r is not None]
    return SweepList(items=[sweeps.sweep_info(ctx, r) for r in records], page=query.page(total))


@router.get("/{sweep_id}", responses=error_responses(404))
def get_sweep(sweep_id: SweepId, ctx: Ctx, who: Me) -> SweepInfo:
    """The sweep, its trials (settings, status, rung results, whether successive halving
    stopped them) and its leaderboard, best first; `best_run_id` is the best completed."""
    return sweeps.sweep_info(ctx, _require(ctx, sweep_id, who))


@router.post(
    "/{sweep_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404, 409),
)
def cancel_sweep(sweep_id: SweepId, ctx: Ctx, who: Me) -> SweepInfo:
    """Cancel the sweep and its trials (409 if it has ended)."""
    sweeps.cancel_sweep(ctx, _require(ctx, sweep_id, who))
    return sweeps.sweep_info(ctx, _require(ctx, sweep_id, who))


def _require(ctx: Ctx, sweep_id: str, who: Principal) -> Record[SweepProgress]:
    record = ctx.sweeps.record(sweep_id, who.scope)
    if record is None:
        raise NotFoundError(f"unknown sweep {sweep_id!r}")
    return record
