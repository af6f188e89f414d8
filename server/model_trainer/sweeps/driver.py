"""Moves sweeps along, from every worker's reaper pass (jobs/reaper.py).

A sweep is a job like any other: queued, running, then completed, failed or cancelled, its
record written only by whoever holds its lease (store/fencing.py). It is not dispatched to
a job process: driving it is a few Redis reads and writes every pass, and a sweep that held
a job process would hold a worker its own trials need (with one worker, forever). So each
worker's reaper pass takes the lease of any sweep nobody holds, keeps the leases it has
(renewed every pass), and for each sweep it holds:

    cancel asked: cancel every trial not ended, and end the sweep `cancelled`
    judge the trials that reached a rung of successive halving (sweeps/asha.py): record
      their validation loss there, stop (cancel, with the reason) those past the cutoff
    start trials while fewer than `max_concurrent` are active and the owner's quotas allow
    write the trials' state, the leaderboard and the best run (one fenced write)
    every trial ended: the sweep is `completed` (failed if no trial completed)

Trials are ordinary runs with ids fixed at submit, created with HSETNX: a driver that died
between creating a trial and queuing it is followed by one that queues it (or by the reaper's
reconcile pass), and no trial is ever created twice. A worker that dies leaves its sweeps'
leases to lapse; another worker's pass takes them on from what Redis holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from redis.exceptions import RedisError

from model_trainer.jobs.context import WorkerContext
from model_trainer.store.fencing import Lease, NotAcquired
from model_trainer.store.keys import DISPATCHED_KINDS, JobField, JobKind
from model_trainer.store.records import (
    EvalResult,
    Record,
    RecordMeta,
    RungResult,
    RunProgress,
    Status,
    SweepProgress,
    TrialState,
)
from model_trainer.store.runlog import MetricPoint, RunLogReader
from model_trainer.sweeps.asha import stops
from model_trainer.sweeps.plan import SweepPlan, Trial
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.sweeps")

ACTIVE = (Status.QUEUED, Status.RUNNING, Status.PAUSED)


class SweepDriver:
    def __init__(self, ctx: WorkerContext, clock: Callable[[], float] = time.time) -> None:
        self._ctx = ctx
        self._clock = clock
        self._leases: dict[str, Lease] = {}

    def tick(self) -> None:
        """One pass over the sweeps that have not ended."""
        sweeps = self._ctx.sweeps
        live = [*sweeps.ids_with_status(Status.RUNNING), *sweeps.ids_with_status(Status.QUEUED)]
        for sweep_id in [s for s in self._leases if s not in live]:
            del self._leases[sweep_id]  # ended (or cancelled by the API while queued)
        for sweep_id in live:
            lease = self._hold(sweep_id)
            if lease is None:
                continue
            try:
                self._drive(sweep_id, lease)
            except RedisError:
                raise
            except Exception:
                log.exception("sweep %s: pass failed", sweep_id, extra=log_fields("sweep_error"))

    def leave(self) -> None:
        """The worker is stopping: let its sweeps go at once (another worker takes them)."""
        for lease in self._leases.values():
            with contextlib.suppress(RedisError):  # else the lease lapses on its own
                lease.run_fenced([lease.release_command()])
        self._leases.clear()

    def _hold(self, sweep_id: str) -> Lease | None:
        held = self._leases.get(sweep_id)
        if held is not None:
            if held.renew():
                return held
            del self._leases[sweep_id]
            log.warning("sweep %s: lease lost to another worker", sweep_id)
            return None
        lease = Lease(self._ctx.redis, sweep_id, self._ctx.settings.recovery.lease_ttl_sec)
        if isinstance(lease.acquire(self._ctx.worker_name), NotAcquired):
            return None
        self._leases[sweep_id] = lease
        log.info(
            "worker %s drives sweep %s (lease epoch %d)",
            self._ctx.worker_name,
            sweep_id,
            lease.epoch,
            extra=log_fields("sweep_owned", sweep_id=sweep_id, epoch=lease.epoch),
        )
        return lease

    # --- one pass of one sweep --------------------------------------------------------
    def _drive(self, sweep_id: str, lease: Lease) -> None:
        ctx = self._ctx
        store = ctx.sweeps.with_writer(lease.writer())
        record = ctx.sweeps.record(sweep_id)
        raw = ctx.sweeps.field(sweep_id, JobField.PAYLOAD)
        if record is None or raw is None:
            return
        plan = SweepPlan.model_validate_json(raw)
        progress = record.progress or SweepProgress(
            trials=[
                TrialState(index=t.index, run_id=t.run_id, params=t.params) for t in plan.trials
            ]
        )
        runs = ctx.runs.records([t.run_id for t in plan.trials])
        if ctx.sweeps.is_cancelled(sweep_id):
            self._cancel_trials(plan, runs, f"cancelled with its sweep {sweep_id}")
            self._summarise(plan, progress, ctx.runs.records([t.run_id for t in plan.trials]))
            store.set_status(
                sweep_id,
                Status.CANCELLED,
                "cancelled by request; its trials were cancelled",
                also=(*store.progress_commands(sweep_id, progress), lease.release_command()),
            )
            del self._leases[sweep_id]
            return
        if record.status is Status.QUEUED:
            store.set_status(sweep_id, Status.RUNNING, f"running on {ctx.worker_name}")
        self._judge(plan, progress, runs)
        # Written before the trials are stopped: a driver that dies in between leaves the
        # decision recorded, and the next one stops them (here, every pass).
        store.set_progress(sweep_id, progress)
        for state in progress.trials:
            run = runs[state.index]
            if state.stopped_at_rung is not None and run is not None and not run.status.terminal:
                self._cancel_trial(state.run_id, _stop_reason(plan, state))
        held_back = self._start_trials(plan, runs, lease)
        runs = ctx.runs.records([t.run_id for t in plan.trials])
        self._summarise(plan, progress, runs)
        ended = all(r is not None and r.status.terminal for r in runs)
        if not ended:
            active = sum(1 for r in runs if r is not None and r.status in ACTIVE)
            store.set_status(
                sweep_id,
                Status.RUNNING,
                f"{progress.finished} of {len(plan.trials)} trials ended ({progress.stopped} "
                f"stopped early), {active} active" + (f"; {held_back}" if held_back else ""),
                also=store.progress_commands(sweep_id, progress),
            )
            return
        completed = [r for r in runs if r is not None and r.status is Status.COMPLETED]
        also = (*store.progress_commands(sweep_id, progress), lease.release_command())
        if completed and progress.best_run_id is not None:
            best = next(t for t in progress.trials if t.run_id == progress.best_run_id)
            figure = (
                f"{best.bits_per_char:.4f} bits/char"
                if best.bits_per_char is not None
                else f"validation loss {best.val_loss}"
            )
            store.set_status(
                sweep_id,
                Status.COMPLETED,
                f"best run {best.run_id} ({_params(best.params)}): {figure}; "
                f"{progress.stopped} of {len(plan.trials)} trials stopped early",
                also=also,
            )
        else:
            store.set_status(
                sweep_id,
                Status.FAILED,
                "no trial completed (see the trials' errors)",
                also=also,
            )
        del self._leases[sweep_id]
        log.info("sweep %s ended", sweep_id, extra=log_fields("sweep_ended", sweep_id=sweep_id))

    # --- successive halving -----------------------------------------------------------
    def _judge(
        self,
        plan: SweepPlan,
        progress: SweepProgress,
        runs: list[Record[RunProgress] | None],
    ) -> None:
        """Record the rung results trials reached since the last pass, in trial order, and
        whether each stops there."""
        if not plan.rungs:
            return
        reader = RunLogReader(self._ctx.redis)
        for index in plan.order:
            state, run = progress.trials[index], runs[index]
            pending = state.stopped_at_rung is None and len(state.rungs) < len(plan.rungs)
            if run is None or not pending or run.status in (Status.QUEUED, Status.FAILED):
                continue
            points = reader.metrics(state.run_id)
            for rung in range(len(state.rungs), len(plan.rungs)):
                value = _value_at(points, plan.resource, plan.rungs[rung])
                if value is None:
                    break
                earlier = [r.value for t in progress.trials for r in t.rungs if r.rung == rung]
                stop, limit = stops(value, earlier, plan.reduction_factor)
                # A trial that ended before this pass saw it cannot be stopped any more.
                stop = stop and not run.status.terminal
                state.rungs.append(
                    RungResult(
                        rung=rung,
                        resource=plan.rungs[rung],
                        value=value,
                        cutoff=limit,
                        stopped=stop,
                    )
                )
                if stop:
                    state.stopped_at_rung = rung
                    log.info(
                        _stop_reason(plan, state),
                        extra=log_fields("sweep_trial_stopped", run_id=state.run_id),
                    )
                    break

    # --- trials -----------------------------------------------------------------------
    def _start_trials(
        self, plan: SweepPlan, runs: list[Record[RunProgress] | None], lease: Lease
    ) -> str | None:
        """Start trials up to `max_concurrent` active; why one that could start did not."""
        ctx = self._ctx
        active = sum(1 for r in runs if r is not None and r.status in ACTIVE)
        for index in plan.order:
            trial, run = plan.trials[index], runs[index]
            if run is not None:
                if (
                    run.status is Status.QUEUED
                    and ctx.runs.field(trial.run_id, JobField.PAYLOAD) is None
                ):
                    ctx.queue.submit(JobKind.RUN, trial.run_id, trial.job)  # created, not queued
                continue
            if active >= plan.max_concurrent:
                return None
            if not self._quota_allows(plan.owner):
                return f"waiting for room in {plan.owner}'s quotas (quotas.active_runs)"
            if not lease.renew():  # the last moment to find another driver took over
                return None
            self._create(plan, trial)
            active += 1
        return None

    def _create(self, plan: SweepPlan, trial: Trial) -> None:
        ctx = self._ctx
        meta = RecordMeta(created_at=self._clock(), request=trial.request, owner=plan.owner)
        if ctx.runs.create(trial.run_id, meta):
            ctx.queue.submit(JobKind.RUN, trial.run_id, trial.job)
            log.info(
                "sweep %s: trial %d started as run %s",
                plan.sweep_id,
                trial.index,
                trial.run_id,
                extra=log_fields("sweep_trial_started", run_id=trial.run_id),
            )

    def _quota_allows(self, owner: str | None) -> bool:
        """Room for one more run of `owner` (quotas apply to trials as to any run)."""
        if owner is None:
            return True
        quotas, ctx = self._ctx.settings.quotas, self._ctx
        active = sum(ctx.runs.count_held(owner, s) for s in (Status.QUEUED, Status.RUNNING))
        queued = sum(ctx.store(k).count_held(owner, Status.QUEUED) for k in DISPATCHED_KINDS)
        return active < quotas.active_runs and queued < quotas.queued_jobs

    def _cancel_trials(
        self, plan: SweepPlan, runs: list[Record[RunProgress] | None], reason: str
    ) -> None:
        for trial, run in zip(plan.trials, runs, strict=True):
            if run is not None and not run.status.terminal:
                self._cancel_trial(trial.run_id, reason)

    def _cancel_trial(self, run_id: str, reason: str) -> None:
        """As `POST /runs/{id}/cancel`, saying why."""
        self._ctx.runs.cancel(run_id, reason)

    # --- the leaderboard --------------------------------------------------------------
    def _summarise(
        self,
        plan: SweepPlan,
        progress: SweepProgress,
        runs: list[Record[RunProgress] | None],
    ) -> None:
        reader = RunLogReader(self._ctx.redis)
        for state, run in zip(progress.trials, runs, strict=True):
            if run is None or (state.status == run.status.value and run.status.terminal):
                continue  # not started, or ended and summarised on an earlier pass
            state.status = run.status.value
            run_progress = run.progress or RunProgress()
            state.steps = run_progress.step
            state.val_loss = run_progress.val_loss
            last = reader.last_metric(state.run_id)
            state.train_seconds = last.elapsed_sec if last else None
            if run.status is Status.COMPLETED and state.bits_per_char is None:
                evaluation = self._final_eval(state.run_id)
                if evaluation is not None:
                    state.bits_per_char = evaluation.bits_per_char
                    state.val_loss = evaluation.loss
        progress.created = sum(1 for r in runs if r is not None)
        progress.finished = sum(1 for r in runs if r is not None and r.status.terminal)
        progress.stopped = sum(1 for t in progress.trials if t.stopped_at_rung is not None)
        progress.saved = sum(
            max(0.0, plan.budget - _spent(t, plan.resource))
            for t in progress.trials
            if t.stopped_at_rung is not None
        )
        ranked = sorted(progress.trials, key=_rank)
        progress.leaderboard = [t.run_id for t in ranked if t.status != "planned"]
        best = [t for t in ranked if t.status == Status.COMPLETED.value]
        progress.best_run_id = best[0].run_id if best else None
        progress.updated_at = self._clock()

    def _final_eval(self, run_id: str) -> EvalResult | None:
        eval_id = self._ctx.runs.field(run_id, JobField.EVAL)
        return self._ctx.evals.progress(eval_id) if eval_id else None


def _stop_reason(plan: SweepPlan, state: TrialState) -> str:
    """What a trial stopped by successive halving says (its run's message)."""
    result = state.rungs[-1]
    unit = "steps" if plan.resource == "steps" else "s"
    return (
        f"stopped by sweep {plan.sweep_id} at rung {result.rung} ({result.resource:g} {unit}): "
        f"validation loss {result.value:.4f} is worse than the cutoff {result.cutoff or 0:.4f} "
        "of the trials before it"
    )


def _value_at(points: list[MetricPoint], resource: str, rung: float) -> float | None:
    """The first validation loss at or past `rung` (steps or seconds of training)."""
    for p in points:
        if p.val_loss is None:
            continue
        reached = p.step if resource == "steps" else (p.elapsed_sec or 0.0)
        if reached >= rung:
            return p.val_loss
    return None


def _spent(trial: TrialState, resource: str) -> float:
    return (trial.train_seconds or 0.0) if resource == "seconds" else float(trial.steps)


def _rank(trial: TrialState) -> tuple[int, int, float, int]:
    """Completed trials by bits/char (else validation loss), then those still going, then
    those stopped early (the later their rung, the better; then by the loss there), then
    failed and cancelled."""
    figure = trial.bits_per_char if trial.bits_per_char is not None else trial.val_loss
    value = figure if figure is not None else float("inf")
    if trial.status == Status.COMPLETED.value:
        return (0, 0, value, trial.index)
    if trial.status in (Status.RUNNING.value, Status.QUEUED.value, Status.PAUSED.value):
        return (1, 0, value, trial.index)
    if trial.stopped_at_rung is not None:
        last = trial.rungs[-1].value if trial.rungs else float("inf")
        return (2, -trial.stopped_at_rung, last, trial.index)
    return (3, 0, value, trial.index)


def _params(params: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())
