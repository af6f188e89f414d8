"""The learning-rate plan: linear warmup, then cosine (or linear, or no) decay to a floor.

The decay needs to know where training ends. With a step or epoch budget that is fixed;
with a time budget (`max_train_seconds`) it is an estimate, `steps so far + seconds left /
measured seconds per step`, which the loop refreshes as it runs (`replan`), so the
schedule lands on its floor when the time runs out.
"""

from __future__ import annotations

import math

from model_trainer.training.config import LrSchedule


class LrPlan:
    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        schedule: LrSchedule,
        min_lr_ratio: float,
        total_steps: int,
    ) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.floor = peak * min_lr_ratio
        self.total_steps = max(1, total_steps)

    def lr(self, step: int) -> float:
        """Learning rate for the update that takes the model from `step` to `step + 1`."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / (self.warmup_steps + 1)
        if self.schedule is LrSchedule.CONSTANT:
            return self.peak
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.schedule is LrSchedule.LINEAR:
            return self.peak - progress * (self.peak - self.floor)
        return self.floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.peak - self.floor)

    def replan(self, step: int, seconds_left: float, seconds_per_step: float) -> None:
        """Move the planned end to where the time budget will run out."""
        if seconds_per_step > 0:
            self.total_steps = max(step + 1, step + round(seconds_left / seconds_per_step))
