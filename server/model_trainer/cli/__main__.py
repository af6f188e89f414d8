"""`python -m model_trainer.cli` is the `modeltrainer` console script."""

from model_trainer.cli.app import main

main()
