"""The real worker (`model_trainer.jobs.worker.main`), also allowed to run the small jobs of
tests/jobs_for_tests.py: the RQ adapter's tests need jobs that sleep, fail or record on
command. The shipped worker runs this project's job functions only; this one, those and the
ones `FUNCTIONS` names, and refuses everything else the same way."""

from __future__ import annotations

import sys

from model_trainer.jobs.queue import JOB_FUNCTIONS
from model_trainer.jobs.worker import main
from tests.jobs_for_tests import FUNCTIONS

if __name__ == "__main__":
    sys.exit(main(frozenset({*JOB_FUNCTIONS.values(), *FUNCTIONS.values()})))
