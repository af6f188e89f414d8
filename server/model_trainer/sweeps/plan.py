"""What a sweep will run: its search space, expanded into trials at submit time.

A space maps fields of the training spec to either a list of `values` or a range (`low`,
`high`, on a `log` scale or not, `integer` or not). A grid takes every combination (a range
gives `num` evenly spaced points); random search draws `trials` points from a seeded
generator, so the same request gives the same trials. Every trial is expanded and validated
when the sweep is submitted: a sweep either runs all of its trials or is refused whole.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from model_trainer.jobs.payloads import TrainJob
from model_trainer.training.config import TrainingSpec

MAX_TRIALS = 64
# Fields a space cannot vary: the budget is the sweep's yardstick (successive halving
# compares trials at fixed fractions of it), the rest is where the data comes from.
FIXED_FIELDS = frozenset({"max_steps", "num_epochs", "max_train_seconds"})
Scalar = int | float | str | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Values(_Model):
    values: list[Scalar] = Field(min_length=1, max_length=MAX_TRIALS)


class Range(_Model):
    low: float
    high: float
    log: bool = Field(default=False, description="log-uniform (random) or log-spaced (grid)")
    integer: bool = False
    num: int | None = Field(
        default=None, ge=2, le=MAX_TRIALS, description="a grid's points across the range"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    def grid(self) -> list[Scalar]:
        if self.num is None:
            raise ValueError("a range in a grid sweep needs num (how many points)")
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        points = [lo + (hi - lo) * i / (self.num - 1) for i in range(self.num)]
        return [self._cast(math.exp(p) if self.log else p) for p in points]

    def draw(self, rng: random.Random) -> Scalar:
        if self.log:
            return self._cast(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self._cast(rng.uniform(self.low, self.high))

    def _cast(self, value: float) -> Scalar:
        return round(value) if self.integer else float(f"{value:.6g}")


Dimension = Annotated[Values | Range, Field(union_mode="left_to_right")]


class SearchSpace(_Model):
    """The sweep's trials: a grid over every combination, or `trials` random draws."""

    method: Literal["grid", "random"] = "grid"
    parameters: dict[str, Dimension] = Field(min_length=1, max_length=8)
    trials: int | None = Field(
        default=None, ge=1, le=MAX_TRIALS, description="random search: how many trials"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    order: Literal["shuffled", "given"] = Field(
        default="shuffled",
        description="the order trials start in: shuffled (seeded by seed), so that "
        "successive halving judges the first trials against a fair sample rather than one "
        "corner of the grid; given: as listed (a baseline first)",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        unknown = sorted(set(self.parameters) - set(TrainingSpec.model_fields))
        if unknown:
            raise ValueError(f"not training settings: {', '.join(unknown)}")
        fixed = sorted(set(self.parameters) & FIXED_FIELDS)
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)}: the budget is the same for every trial (set it in base)"
            )
        if self.method == "random" and self.trials is None:
            raise ValueError("random search needs trials (how many)")
        if self.method == "grid" and self.trials is not None:
            raise ValueError("trials is for random search; a grid runs every combination")
        return self

    def start_order(self, count: int) -> list[int]:
        """The trials' indexes in the order they start."""
        order = list(range(count))
        if self.order == "shuffled":
            random.Random(self.seed).shuffle(order)  # noqa: S311 - reproducible, not a secret
        return order

    def points(self) -> list[dict[str, Scalar]]:
        """Every trial's settings, in the order they run."""
        names = list(self.parameters)
        if self.method == "grid":
            axes = [
                d.values if isinstance(d, Values) else d.grid() for d in self.parameters.values()
            ]
            count = math.prod(len(a) for a in axes)
            if count > MAX_TRIALS:
                raise ValueError(f"the grid has {count} combinations; at most {MAX_TRIALS}")
            return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]
        rng = random.Random(self.seed)  # noqa: S311 - a reproducible draw, not a secret
        return [
            {
                name: rng.choice(d.values) if isinstance(d, Values) else d.draw(rng)
                for name, d in self.parameters.items()
            }
            for _ in range(self.trials or 0)
        ]


class Asha(_Model):
    """Early stopping of poor trials by asynchronous successive halving (sweeps/asha.py)."""

    grace: float | None = Field(
        default=None,
        gt=0,
        description="the first rung, in the budget's unit (steps or seconds); default: the "
        "budget / reduction_factor^2",
    )
    reduction_factor: int = Field(default=3, ge=2, le=8)


class Trial(_Model):
    """One trial as the sweep will submit it: its run's request (as stored in the run's
    record) and job payload, both validated at submit."""

    index: int
    run_id: str
    params: dict[str, JsonValue]
    request: dict[str, JsonValue]
    job: TrainJob


class SweepPlan(_Model):
    """A sweep's payload: everything its driver needs, fixed at submit."""

    sweep_id: str
    owner: str | None
    trials: list[Trial]
    order: list[int]  # the trials' indexes in the order they start (and are judged)
    max_concurrent: int
    resource: Literal["steps", "seconds"]
    budget: float
    rungs: list[float]  # empty: no early stopping
    reduction_factor: int


def rungs_for(budget: float, asha: Asha | None) -> list[float]:
    """The rungs below `budget`: grace, grace x eta, grace x eta^2..."""
    if asha is None:
        return []
    eta = asha.reduction_factor
    grace = asha.grace if asha.grace is not None else budget / eta**2
    rungs: list[float] = []
    rung = grace
    while rung < budget and len(rungs) < 8:
        rungs.append(round(rung, 3))
        rung *= eta
    return rungs
