"""Stopping a tokenizer job early (cancelled by the user, or the worker shutting down).

The trainers themselves run in Rust / C++ and cannot be interrupted, so the job checks the
caller's `should_stop` between phases and while it streams the corpus (every chunk of a
few megabytes), which covers reading, the trainers' input loading, and the stats.
"""

from __future__ import annotations

from collections.abc import Callable

StopCheck = Callable[[], bool]


class TrainingStopped(Exception):
    """`should_stop()` answered true; nothing was written to the output folder's final files."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"tokenizer training stopped during {phase}")
        self.phase = phase


def check_stop(should_stop: StopCheck | None, phase: str) -> None:
    if should_stop is not None and should_stop():
        raise TrainingStopped(phase)
