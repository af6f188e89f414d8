"""The training loop on a tiny model: it learns, it fails clearly, it stops, it resumes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_trainer.errors import UserError
from model_trainer.shutdown import WorkerShutdown, stop_requested
from model_trainer.training.config import ModelTrainConfig
from model_trainer.training.hardware import CpuInfo
from model_trainer.training.loop import (
    METRICS_FILE,
    CheckpointInfo,
    Outcome,
    ProgressInfo,
    TrainingCallbacks,
)
from model_trainer.training.run import run_training
from tests.test_training_data import file_id, train_bpe, write_corpus

LEARNING_RATE = 3e-3
TINY = {
    "tokenizer_id": "tok-loop",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "max_seq_len": 32,
    "batch_size": 8,
    "learning_rate": LEARNING_RATE,
    "warmup_steps": 5,
    "eval_interval": 20,
    "eval_batches": 2,
    "checkpoint_interval": 20,
    "threads": 1,
}


class Inputs:
    def __init__(self, root: Path, cpu: CpuInfo) -> None:
        self.corpus = root / "corpus.txt"
        self.tokenizer = train_bpe(root / "tok", write_corpus(self.corpus))
        self.corpus_id = file_id(self.corpus)
        self.cache = root / "cache"
        self.cpu = cpu

    def run(
        self, run_dir: Path, callbacks: TrainingCallbacks | None = None, **fields: object
    ) -> tuple[Outcome, int]:
        config = ModelTrainConfig.model_validate(
            {**TINY, "corpus_file_id": self.corpus_id, **fields}
        )
        result = run_training(
            config,
            self.corpus,
            self.tokenizer,
            run_dir,
            self.cache,
            cpu=self.cpu,
            callbacks=callbacks,
        )
        return result.outcome, result.steps


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, cpu: CpuInfo) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("loop"), cpu)


@pytest.fixture
def clean_shutdown_flag() -> Iterator[None]:
    stop_requested.clear()
    yield
    stop_requested.clear()


def metrics(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def losses(rows: list[dict[str, object]], key: str) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for row in rows:
        step, value = row["step"], row[key]
        if isinstance(step, int) and isinstance(value, float):
            out.append((step, value))
    return out


class Recorder(TrainingCallbacks):
    def __init__(self, stop_after_steps: int | None = None, crash_at: int | None = None) -> None:
        self.progress: list[ProgressInfo] = []
        self.checkpoints: list[CheckpointInfo] = []
        self.step_checks = 0
        self.stop_after_steps = stop_after_steps
        self.crash_at = crash_at

    def on_progress(self, info: ProgressInfo) -> None:
        self.progress.append(info)
        if info.step == self.crash_at:
            raise RuntimeError("simulated crash")

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)

    def should_stop(self) -> bool:
        self.step_checks += 1
        # Asked once before every step: answering True on call n+1 allows exactly n steps.
        return self.stop_after_steps is not None and self.step_checks > self.stop_after_steps


def test_loss_goes_down_and_metrics_are_logged(inputs: Inputs, tmp_path: Path) -> None:
    recorder = Recorder()
    outcome, steps = inputs.run(tmp_path / "run", recorder, max_steps=60)
    assert (outcome, steps) == (Outcome.COMPLETED, 60)
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    train = losses(rows, "train_loss")
    val = losses(rows, "val_loss")
    assert [s for s, _ in val] == [0, 20, 40, 60]
    assert train[-1][1] < train[0][1] - 1.0
    assert val[-1][1] < val[0][1] - 1.0
    assert set(rows[-1]) == {"step", "train_loss", "val_loss", "lr", "tokens_per_sec", "elapsed"}
    last = recorder.progress[-1]
    assert (last.step, last.total_steps, last.eta_seconds) == (60, 60, 0.0)
    assert last.tokens_per_sec is not None and last.tokens_per_sec > 0
    kinds = {(c.kind, c.step) for c in recorder.checkpoints}
    assert {("last", 20), ("last", 40), ("last", 60), ("best", 0)} <= kinds
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_a_huge_learning_rate_fails_with_a_message_about_it(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="learning rate") as caught:
        inputs.run(tmp_path / "run", max_steps=50, learning_rate=1e6, warmup_steps=0)
    assert "learning_rate" in caught.value.message


def test_should_stop_stops_within_one_step(inputs: Inputs, tmp_path: Path) -> None:
    recorder = Recorder(stop_after_steps=7)
    outcome, steps = inputs.run(tmp_path / "run", recorder, max_steps=1000)
    assert (outcome, steps) == (Outcome.CANCELLED, 7)
    assert not (tmp_path / "run" / "artifact").exists()


def test_resume_after_a_crash_continues_the_same_curve(inputs: Inputs, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    inputs.run(straight, max_steps=60)

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        inputs.run(crashed, Recorder(crash_at=30), max_steps=60)  # last checkpoint: step 20
    assert [r["step"] for r in metrics(crashed)][-1] == 30
    recorder = Recorder()
    outcome, steps = inputs.run(crashed, recorder, max_steps=60)
    assert (outcome, steps) == (Outcome.COMPLETED, 60)
    assert recorder.progress[0].step == 30  # the first row after resuming at step 20

    def curve(run_dir: Path) -> list[tuple[object, object, object]]:
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in metrics(run_dir)]

    # Same rows (the crashed session's rows past the checkpoint were dropped) and the same
    # weights, bit for bit: data order, dropout and optimizer state all resumed exactly.
    assert curve(crashed) == curve(straight)
    manifest = json.loads((crashed / "artifact" / "manifest.json").read_text())
    assert manifest["training"]["resumed_at_steps"] == [20]
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_worker_shutdown_checkpoints_then_resumes(
    inputs: Inputs, tmp_path: Path, clean_shutdown_flag: None
) -> None:
    run_dir = tmp_path / "run"

    class StopAtStep(Recorder):
        def on_progress(self, info: ProgressInfo) -> None:
            if info.step == 10:
                stop_requested.set()  # as the worker's signal handler does

    with pytest.raises(WorkerShutdown):
        inputs.run(run_dir, StopAtStep(), max_steps=30, dropout=0.1)
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["loop"]["step"] == 10
    stop_requested.clear()
    outcome, steps = inputs.run(run_dir, max_steps=30, dropout=0.1)
    assert (outcome, steps) == (Outcome.COMPLETED, 30)
    assert [r["step"] for r in metrics(run_dir)] == [0, 10, 20, 30]
    shutil.rmtree(run_dir)


def test_a_time_budget_ends_on_time_with_the_schedule_decayed(
    inputs: Inputs, tmp_path: Path
) -> None:
    recorder = Recorder()
    outcome, steps = inputs.run(tmp_path / "run", recorder, max_train_seconds=3, warmup_steps=2)
    assert outcome is Outcome.COMPLETED
    last = recorder.progress[-1]
    assert last.step == steps
    assert 2.0 < last.elapsed < 3.5
    # The plan re-estimated the total from measured step times and decayed towards its floor
    # (0.1 of the peak) as the time ran out.
    assert last.total_steps == pytest.approx(steps, rel=0.25)
    assert last.lr < 0.5 * LEARNING_RATE
