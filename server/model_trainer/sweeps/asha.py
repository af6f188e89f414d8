"""Asynchronous successive halving (ASHA; Li et al. 2018, as Ray Tune's ASHAScheduler runs
it): when a trial reaches a rung, its validation loss there is compared with those of the
trials that reached that rung before it; it goes on only if it is within the best
1/reduction_factor of them (the first to arrive always goes on). Trials are never held
back waiting for others, so no worker idles; a sweep whose trials run one by one judges
each against all before it.
"""

from __future__ import annotations


def cutoff(earlier: list[float], reduction_factor: int) -> float | None:
    """The loss a trial must not exceed at a rung: the 1/reduction_factor quantile (linear
    interpolation, as numpy's percentile) of the earlier results there; None when none."""
    if not earlier:
        return None
    ordered = sorted(earlier)
    position = (len(ordered) - 1) / reduction_factor
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def stops(value: float, earlier: list[float], reduction_factor: int) -> tuple[bool, float | None]:
    """Whether a trial with `value` (lower is better) stops at a rung, and the cutoff."""
    limit = cutoff(earlier, reduction_factor)
    return (limit is not None and value > limit), limit
