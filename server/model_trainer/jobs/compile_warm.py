"""`python -m model_trainer.jobs.compile_warm`: the worker's background warm-up of the
compile cache (APP__COMPILE_WARM_PRESETS; training/warm.py). The worker starts it and does
not wait: it takes jobs meanwhile, and a run of a shape still being warmed compiles itself.
"""

from __future__ import annotations

import sys

from model_trainer.settings import load_settings
from model_trainer.training.config import ModelSize
from model_trainer.training.hardware import cpu_info, resolve_threads
from model_trainer.training.warm import warm_compile_cache
from service_common.jsonlog import setup_logging


def main() -> int:
    settings = load_settings()
    setup_logging(settings.logging.level, service="compile-warm")
    app = settings.app
    warm_compile_cache(
        [ModelSize(size) for size in app.compile_warm_presets],
        app.compile_cache(),
        cpu_info(app.native_bf16, app.compile_steps),
        # The threads a run gets when its request does not say (jobs/model_training.py):
        # inductor's kernels are specific to the thread count.
        resolve_threads(app.threads),
        app.compile_warm_vocab_size,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
