"""Graceful stop of a running job.

The worker's parent process asks its job process (the "horse") to stop by a signal (see
`worker.py`); the handler only sets this event. Long jobs call `check_shutdown()` at safe
points (between training steps), save what they have and raise `WorkerShutdown`, which RQ
records as a failure and retries on the next worker: the run resumes from its checkpoint.
"""

from __future__ import annotations

import threading

stop_requested = threading.Event()


class WorkerShutdown(Exception):
    """The worker is shutting down; the job stopped at a safe point and will be retried."""


def check_shutdown() -> None:
    if stop_requested.is_set():
        raise WorkerShutdown("worker shutting down; job will resume on the next worker")
