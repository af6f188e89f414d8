"""Stopping a tokenizer job early (cancelled by the user, or the worker shutting down).

The trainers themselves run in Rust / C++ and cannot be interrupted, so the job checks the
caller's `should_stop` between phases and whenever it reads a chunk of a few megabytes:
during the corpus scan, the stats and SentencePiece's input loading (its sentences are
streamed from Python). Byte-level BPE reads its training file itself, so once it starts, a
stop takes effect when its training ends.
"""

from __future__ import annotations

from collections.abc import Callable

from model_trainer.errors import TrainingStopped

StopCheck = Callable[[], bool]

__all__ = ["StopCheck", "TrainingStopped", "check_stop"]


def check_stop(should_stop: StopCheck | None, phase: str) -> None:
    if should_stop is not None and should_stop():
        raise TrainingStopped(phase)
