"""The run's TensorBoard log, written into its artifact: `tensorboard --logdir <artifact>`.

Written once, when the artifact is assembled, from the run's metric rows (the loop keeps
every row in its state, and checkpoints carry the state): a run resumed on another worker
from a checkpoint still gets one log of its whole curve. Scalars: `loss/train`,
`loss/validation`, `lr`, `tokens_per_sec`, against the step; and the hyper-parameters with
the final metrics (TensorBoard's HParams tab).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from model_trainer.training.checkpoint import MetricRow
from model_trainer.training.config import TrainingSpec

TENSORBOARD_DIR = "tensorboard"


def write_tensorboard(
    folder: Path, rows: Sequence[MetricRow], config: TrainingSpec, final: dict[str, float]
) -> Path:
    """Event files under `folder/tensorboard`; returns that folder."""
    # Imported here: TensorBoard's writer loads protobuf and numpy plugins (~0.5 s), which
    # only the end of a run needs.
    from torch.utils.tensorboard import SummaryWriter

    out = folder / TENSORBOARD_DIR
    with SummaryWriter(log_dir=str(out)) as writer:
        for row in rows:
            if row.train_loss is not None:
                writer.add_scalar("loss/train", row.train_loss, row.step)
            if row.val_loss is not None:
                writer.add_scalar("loss/validation", row.val_loss, row.step)
            writer.add_scalar("lr", row.lr, row.step)
            if row.tokens_per_sec is not None:
                writer.add_scalar("tokens_per_sec", row.tokens_per_sec, row.step)
        writer.add_hparams(
            hyper_parameters(config),
            {f"final/{name}": value for name, value in final.items()},
            run_name=".",
        )
    return out


def hyper_parameters(config: TrainingSpec) -> dict[str, bool | str | float | int]:
    """The config's set values as TensorBoard (and MLflow) take them: scalars and strings."""
    params: dict[str, bool | str | float | int] = {}
    for name, value in config.model_dump(mode="json", exclude_none=True).items():
        if isinstance(value, bool | int | float | str):
            params[name] = value
        else:
            params[name] = str(value)
    arch = config.resolved()
    params.update(n_layer=arch.n_layer, n_embd=arch.n_embd, n_head=arch.n_head)
    return params
