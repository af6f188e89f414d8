"""Checkpoints: everything needed to continue a run as if it had never stopped.

`checkpoints/last.pt` holds the model, the optimizer, the loop's counters and metrics, the
sampler's generator and the torch / numpy / Python random states; a run that finds it
resumes there, and with the same threads it continues bit for bit. `checkpoints/best.pt`
holds only the weights with the lowest validation loss so far (for people, not for resuming).

Files are written to a temporary name and renamed, so a crash mid-write leaves the previous
checkpoint intact. Only tensors and plain Python values are stored, so loading uses
`torch.load(weights_only=True)`, which cannot run code from a tampered file.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
FORMAT_VERSION = 1


class MetricRow(BaseModel):
    """One line of `metrics.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    step: int
    train_loss: float | None
    val_loss: float | None
    lr: float
    tokens_per_sec: float | None
    elapsed: float


class LoopState(BaseModel):
    """The training loop's counters, saved with every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training, summed over every session of this run
    total_steps: int = 0  # the plan's current estimate of where training ends
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_eval_step: int | None = None
    window_loss_sum: float = 0.0  # training losses since the last metrics row
    window_steps: int = 0
    resumed_at: list[int] = Field(default_factory=list)
    metrics: list[MetricRow] = Field(default_factory=list)


@dataclass(frozen=True)
class TrainingCheckpoint:
    config_json: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, object]
    sampler: dict[str, torch.Tensor]
    loop: LoopState


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def save_last(run_dir: Path, ckpt: TrainingCheckpoint) -> Path:
    payload = {
        "format_version": FORMAT_VERSION,
        "config_json": ckpt.config_json,
        "model": ckpt.model,
        "optimizer": ckpt.optimizer,
        "sampler": ckpt.sampler,
        "loop": ckpt.loop.model_dump(),
        "rng": _rng_states(),
    }
    return _save_atomic(checkpoint_dir(run_dir) / LAST, payload)


def save_best(run_dir: Path, model: dict[str, torch.Tensor], step: int, val_loss: float) -> Path:
    payload = {"format_version": FORMAT_VERSION, "model": model, "step": step, "val_loss": val_loss}
    return _save_atomic(checkpoint_dir(run_dir) / BEST, payload)


def _save_atomic(path: Path, payload: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def load_last(run_dir: Path) -> TrainingCheckpoint | None:
    """The run's last checkpoint, with the random states restored; None if there is none."""
    path = checkpoint_dir(run_dir) / LAST
    if not path.is_file():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=True)
    data = _dict(raw, "checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {data.get('format_version')!r}")
    state = LoopState.model_validate(data["loop"])
    _restore_rng(_dict(data["rng"], "rng"))
    config_json = data["config_json"]
    if not isinstance(config_json, str):
        raise ValueError(f"{path}: config_json is not text")
    return TrainingCheckpoint(
        config_json=config_json,
        model=_tensors(data["model"], "model"),
        optimizer={str(k): v for k, v in _dict(data["optimizer"], "optimizer").items()},
        sampler=_tensors(data["sampler"], "sampler"),
        loop=state,
    )


def _rng_states() -> dict[str, object]:
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):
        raise TypeError("numpy returned a non-legacy random state")
    _, keys, pos, has_gauss, cached = np_state
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "python_version": int(py_version),
        "python_internal": list(py_internal),
        "python_gauss": py_gauss,
    }


def _restore_rng(rng: dict[object, object]) -> None:
    torch_state = rng["torch"]
    np_keys = rng["numpy_keys"]
    if not isinstance(torch_state, torch.Tensor) or not isinstance(np_keys, torch.Tensor):
        raise ValueError("checkpoint random states are malformed")
    torch.set_rng_state(torch_state)
    np.random.set_state(
        (
            "MT19937",
            np_keys.numpy().astype(np.uint32),
            _int(rng["numpy_pos"]),
            _int(rng["numpy_has_gauss"]),
            _float(rng["numpy_cached_gaussian"]),
        )
    )
    gauss = rng["python_gauss"]
    random.setstate(
        (
            _int(rng["python_version"]),
            tuple(_int(v) for v in _list(rng["python_internal"], "python_internal")),
            gauss if isinstance(gauss, float) else None,
        )
    )


# torch.load returns untyped data: narrow each piece before use.
def _dict(value: object, what: str) -> dict[object, object]:
    if not isinstance(value, dict):
        raise ValueError(f"checkpoint field {what} is not a mapping")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"checkpoint field {what} is not a list")
    return value


def _tensors(value: object, what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in _dict(value, what).items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"checkpoint field {what}.{k} is not a tensor")
        out[str(k)] = v
    return out


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"expected an int in the checkpoint, got {type(value).__name__}")
    return value


def _float(value: object) -> float:
    if not isinstance(value, int | float):
        raise ValueError(f"expected a number in the checkpoint, got {type(value).__name__}")
    return float(value)
