"""Checkpoints: everything needed to continue a run as if it had never stopped.

`checkpoints/last.pt` holds the model, the optimizer, the loop's counters and metrics, the
sampler's generator and the torch / numpy / Python random states; a run that finds it
resumes there, and with the same threads it continues bit for bit. `checkpoints/best.pt`
holds only the weights with the lowest validation loss so far (what the artifact ships by
default, see run.py); either file's `model` entry can start another run (`load_weights`).

Each `.pt` has a sidecar, `last.json` / `best.json` (`CheckpointFile`): its kind, step,
validation loss, size and SHA-256, so that the job can upload the pair to Data Bank and a
later attempt, on any machine, can put the pair back in a fresh run folder and resume.

Files are written to a temporary name and renamed, so a crash mid-write leaves the previous
checkpoint intact. The old sidecar is removed before the new `.pt` takes its place and the
new one is written after it, so a sidecar never describes another `.pt` than the one beside
it (`read_checkpoint_file` also checks the size). Only tensors and plain Python values are
stored, so loading uses `torch.load(weights_only=True)`, which cannot run code from a
tampered file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_trainer.errors import CheckpointInvalid
from model_trainer.training.evaluate import EvalMetrics
from model_trainer.training.execution import Execution

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
FORMAT_VERSION = 2  # 2: LoopState records the whole execution (compiled or not)
HASH_CHUNK = 1 << 20

CheckpointKind = Literal["last", "best"]


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

    # Chosen once, at the run's start (execution.choose_execution): a resumed run keeps it,
    # whatever a probe on the resuming machine would say, so its numerics never change midway.
    execution: Execution
    step: int = 0
    tokens_seen: int = 0
    # Seconds of the budget spent, summed over every session of this run: training, and each
    # session's setup (probe, compile), which `setup_seconds` also counts on its own.
    elapsed: float = 0.0
    setup_seconds: float = 0.0
    total_steps: int = 0  # the plan's current estimate of where training ends
    best_val_loss: float | None = None
    best_step: int | None = None  # the step of best.pt's weights
    evals_since_best: int = 0  # validations in a row without a new best (early stopping)
    stopped_early: bool = False  # the loop ended on early_stopping_patience, not the budget
    last_val_loss: float | None = None
    last_eval_step: int | None = None
    initialised_from: str | None = None  # whose weights a fresh run started from, if any
    # A fine-tuning run's base model, scored before its first step on the whole validation
    # split (the artifact's evaluation is the same on the fine-tuned weights).
    base_eval: EvalMetrics | None = None
    window_loss_sum: float = 0.0  # training losses since the last metrics row
    window_steps: int = 0
    window_grad_norm_sum: float = 0.0  # their gradients' total norms, before clipping
    resumed_at: list[int] = Field(default_factory=list)
    metrics: list[MetricRow] = Field(default_factory=list)


class CheckpointFile(BaseModel):
    """The sidecar of a checkpoint (`last.json`, `best.json`): what the `.pt` beside it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CheckpointKind
    step: int
    val_loss: float | None  # best: the loss of these weights; last: the latest validation
    sha256: str  # hex digest of the .pt file's bytes
    size: int  # bytes of the .pt file
    elapsed: float | None  # seconds of training up to this checkpoint (last only)


@dataclass(frozen=True)
class TrainingCheckpoint:
    config_json: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, object]
    sampler: dict[str, torch.Tensor]
    loop: LoopState


@dataclass(frozen=True)
class BestWeights:
    model: dict[str, torch.Tensor]
    step: int
    val_loss: float


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def checkpoint_path(run_dir: Path, kind: CheckpointKind) -> Path:
    """`run_dir/checkpoints/last.pt` or `best.pt`."""
    return checkpoint_dir(run_dir) / (LAST if kind == "last" else BEST)


def sidecar_path(run_dir: Path, kind: CheckpointKind) -> Path:
    """`run_dir/checkpoints/last.json` or `best.json`, the `CheckpointFile` of the `.pt`."""
    return checkpoint_path(run_dir, kind).with_suffix(".json")


def save_last(run_dir: Path, ckpt: TrainingCheckpoint) -> CheckpointFile:
    payload = {
        "format_version": FORMAT_VERSION,
        "config_json": ckpt.config_json,
        "model": ckpt.model,
        "optimizer": ckpt.optimizer,
        "sampler": ckpt.sampler,
        "loop": ckpt.loop.model_dump(mode="json"),
        "rng": _rng_states(),
    }
    loop = ckpt.loop
    return _save_pair(
        run_dir, "last", payload, step=loop.step, val_loss=loop.last_val_loss, elapsed=loop.elapsed
    )


def save_best(
    run_dir: Path, model: dict[str, torch.Tensor], step: int, val_loss: float
) -> CheckpointFile:
    payload = {"format_version": FORMAT_VERSION, "model": model, "step": step, "val_loss": val_loss}
    return _save_pair(run_dir, "best", payload, step=step, val_loss=val_loss, elapsed=None)


def write_checkpoint_file(run_dir: Path, info: CheckpointFile) -> Path:
    """Write the sidecar of `info.kind` atomically (e.g. beside a `.pt` fetched back)."""
    path = sidecar_path(run_dir, info.kind)
    with _temporary_beside(path) as tmp:
        with tmp.open("wb") as f:
            f.write(info.model_dump_json().encode())
            _sync(f)
        os.replace(tmp, path)
    return path


def read_checkpoint_file(run_dir: Path, kind: CheckpointKind) -> CheckpointFile | None:
    """The sidecar of `kind`; None when it or its `.pt` is missing, or they do not match.

    Only the size is compared (hashing a large `.pt` on every read would be slow); a
    caller that must be sure of the bytes compares `sha256` with the file's own digest.
    """
    pt, sidecar = checkpoint_path(run_dir, kind), sidecar_path(run_dir, kind)
    try:
        info = CheckpointFile.model_validate_json(sidecar.read_bytes())
        size = pt.stat().st_size
    except (OSError, ValidationError):  # missing, or torn or foreign JSON: as good as absent
        return None
    if info.kind != kind or info.size != size:
        return None
    return info


def _save_pair(
    run_dir: Path,
    kind: CheckpointKind,
    payload: dict[str, object],
    *,
    step: int,
    val_loss: float | None,
    elapsed: float | None,
) -> CheckpointFile:
    """Write the `.pt`, then its sidecar, each atomically."""
    path, sidecar = checkpoint_path(run_dir, kind), sidecar_path(run_dir, kind)
    with _temporary_beside(path) as tmp:
        with tmp.open("wb") as f:
            torch.save(payload, f)
            _sync(f)
        sha256, size = _sha256(tmp), tmp.stat().st_size
        # From the rename until the new sidecar is written, the old sidecar would describe
        # the wrong file: remove it first, so that a crash in between leaves none.
        sidecar.unlink(missing_ok=True)
        os.replace(tmp, path)
    info = CheckpointFile(
        kind=kind, step=step, val_loss=val_loss, sha256=sha256, size=size, elapsed=elapsed
    )
    write_checkpoint_file(run_dir, info)
    return info


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file in `path`'s folder (a rename onto `path` is then atomic).

    Removed on the way out unless it was renamed, so a crash leaves no stray file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_last(run_dir: Path) -> TrainingCheckpoint | None:
    """The run's last checkpoint, with the random states restored; None if there is none."""
    path = checkpoint_path(run_dir, "last")
    if not path.is_file():
        return None
    data = _load(path)
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


def load_best(run_dir: Path) -> BestWeights | None:
    """The run's best weights, with their step and validation loss; None if there are none."""
    path = checkpoint_path(run_dir, "best")
    if not path.is_file():
        return None
    data = _load(path)
    return BestWeights(
        model=_tensors(data["model"], "model"),
        step=_int(data["step"]),
        val_loss=_float(data["val_loss"]),
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The `model` entry of any checkpoint file, `last.pt` or `best.pt` (of any run)."""
    return _tensors(_load(path)["model"], "model")


def _load(path: Path) -> dict[object, object]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        # torch raises any of these for a file that is not a checkpoint, or a damaged one.
        raise CheckpointInvalid(f"{path.name} is not a readable checkpoint: {exc}") from exc
    data = _dict(raw, "checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointInvalid(
            f"{path.name}: unsupported checkpoint format {data.get('format_version')!r}"
        )
    return data


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
