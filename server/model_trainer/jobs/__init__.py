"""The queue and worker side: what the API enqueues and the worker runs.

    queue.py             the JobQueue boundary (the only module the API imports from here,
                         with payloads.py): job names, RQ adapter
    payloads.py          what a job receives, validated by the API and again by the job
    runner.py            what every job shares: status, heartbeat, logs, failure policy
    artifacts.py         Data Bank steps jobs share: fetch a corpus or artifact, publish one
    tokenizer_training.py, model_training.py, model_evaluation.py   one module per job
    shutdown.py          the graceful-stop flag long jobs check
    worker.py            `modeltrainer-rq-worker`, the process that runs them

Job modules import torch; the API never imports them (jobs are named by dotted path).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# Jobs enqueued by releases before the jobs/ package named these functions
# `model_trainer.jobs.<name>`; RQ resolves that path by attribute, so keep it resolving
# (lazily: importing a job module imports torch, which the API must never do).
_LEGACY_JOBS = {
    "train_tokenizer": "model_trainer.jobs.tokenizer_training",
    "train_model": "model_trainer.jobs.model_training",
    "evaluate_model": "model_trainer.jobs.model_evaluation",
}


def __getattr__(name: str) -> Callable[[str], None]:
    module_name = _LEGACY_JOBS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    run: Callable[[str], None] = importlib.import_module(module_name).run
    return run
