"""The training loop on a tiny model: it learns, it fails clearly, it stops, it resumes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from model_trainer.errors import ErrorCode, UserError
from model_trainer.training.checkpoint import checkpoint_path, read_checkpoint_file, sidecar_path
from model_trainer.training.config import MAX_LEARNING_RATE, TrainingSpec
from model_trainer.training.hardware import CpuInfo
from model_trainer.training.loop import (
    METRICS_FILE,
    CheckpointInfo,
    Outcome,
    ProgressInfo,
    TrainingCallbacks,
)
from model_trainer.training.run import TrainingResult, run_training
from tests.test_training_data import file_id, token_cache, train_bpe, write_corpus

LEARNING_RATE = 3e-3
# The loop's mechanics, measured on GPT-2 with AdamW (the defaults before the grid; the
# other families and Muon have their own cases below and in test_training_runs.py).
TOKENIZER_ID = "tok-loop"
TINY = {
    "model_family": "gpt2",
    "optimizer": "adamw",
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
    # Stated, not measured: `auto` probes the machine, and two runs compared bit for bit must
    # not depend on what a busy machine's probe picked (test_training_artifact tests auto).
    "precision": "fp32",
}
TOKENS_PER_STEP = 8 * 32
# An update so small that no weight moves (w - 1e-30 == w in float32 for any weight that
# is not itself that small): every validation then gives exactly the step-0 loss, so early
# stopping's "no better loss" is certain on any machine.
FROZEN_LR = 1e-30


class Inputs:
    def __init__(self, root: Path, cpu: CpuInfo) -> None:
        self.corpus = root / "corpus.txt"
        self.tokenizer = train_bpe(root / "tok", write_corpus(self.corpus))
        self.corpus_id = file_id(self.corpus)
        self.cache = token_cache(root)
        self.cpu = cpu

    def run(
        self, run_dir: Path, callbacks: TrainingCallbacks | None = None, **fields: object
    ) -> tuple[Outcome, int]:
        result = self.train(run_dir, fields, callbacks)
        return result.outcome, result.steps

    def train(
        self,
        run_dir: Path,
        fields: Mapping[str, object],
        callbacks: TrainingCallbacks | None = None,
        *,
        checkpoint_every_seconds: float | None = None,
        init_weights: Path | None = None,
        init_label: str | None = None,
        cpu: CpuInfo | None = None,
    ) -> TrainingResult:
        config = TrainingSpec.model_validate({**TINY, **fields})
        return run_training(
            config,
            self.corpus,
            self.tokenizer,
            run_dir,
            self.cache,
            cpu=cpu or self.cpu,
            threads=1,
            corpus_id=self.corpus_id,
            tokenizer_id=TOKENIZER_ID,
            callbacks=callbacks,
            checkpoint_every_seconds=checkpoint_every_seconds,
            init_weights=init_weights,
            init_label=init_label,
        )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, cpu: CpuInfo) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("loop"), cpu)


def metrics(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def curve(run_dir: Path) -> list[tuple[object, object, object]]:
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in metrics(run_dir)]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.__dict__.get("event") == name]


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
    result = inputs.train(tmp_path / "run", {"max_steps": 60}, recorder)
    assert (result.outcome, result.steps) == (Outcome.COMPLETED, 60)
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
    # Rows between validations carry the latest loss, and say that it is not fresh.
    progress = [(p.step, p.evaluated, p.val_loss) for p in recorder.progress]
    by_step = dict(val)
    assert progress == [
        (0, True, by_step[0]),
        (10, False, by_step[0]),
        (20, True, by_step[20]),
        (30, False, by_step[20]),
        (40, True, by_step[40]),
        (50, False, by_step[40]),
        (60, True, by_step[60]),
    ]
    assert result.manifest is not None
    train_tokens = result.manifest.data.train_tokens
    for p in recorder.progress:
        assert p.total_epochs == pytest.approx(60 * TOKENS_PER_STEP / train_tokens)
        assert p.epoch == pytest.approx(p.step * TOKENS_PER_STEP / train_tokens)
    kinds = {(c.kind, c.step) for c in recorder.checkpoints}
    assert {("last", 20), ("last", 40), ("last", 60), ("best", 0)} <= kinds
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_eval_at_validates_at_those_points_too(inputs: Inputs, tmp_path: Path) -> None:
    """A sweep's rungs: validations at the given steps besides every `eval_interval`."""
    inputs.train(tmp_path / "run", {"max_steps": 40, "eval_interval": 1000, "eval_at": [7, 23]})
    assert [s for s, _ in losses(metrics(tmp_path / "run"), "val_loss")] == [0, 7, 23, 40]


def test_a_huge_learning_rate_fails_with_a_message_about_it(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="learning rate") as caught:
        inputs.run(tmp_path / "run", max_steps=50, learning_rate=MAX_LEARNING_RATE, warmup_steps=0)
    assert "learning_rate" in caught.value.message


def test_should_stop_stops_within_one_step(inputs: Inputs, tmp_path: Path) -> None:
    recorder = Recorder(stop_after_steps=7)
    outcome, steps = inputs.run(tmp_path / "run", recorder, max_steps=1000)
    assert (outcome, steps) == (Outcome.CANCELLED, 7)
    assert not (tmp_path / "run" / "artifact").exists()


@pytest.mark.parametrize(
    "fields",
    [{}, {"model_family": "llama", "optimizer": "muon", "n_kv_head": 1}],
    ids=["gpt2-adamw", "llama-muon"],
)
def test_resume_after_a_crash_continues_the_same_curve(
    inputs: Inputs, tmp_path: Path, fields: dict[str, object]
) -> None:
    budget = {"max_steps": 60, **fields}
    straight = tmp_path / "straight"
    inputs.train(straight, budget)

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        inputs.train(crashed, budget, Recorder(crash_at=30))  # last checkpoint: step 20
    assert [r["step"] for r in metrics(crashed)][-1] == 30
    # Another worker gets only the pair the job uploaded, in a folder of its own.
    fetched = tmp_path / "fetched"
    (fetched / "checkpoints").mkdir(parents=True)
    for path in (checkpoint_path(crashed, "last"), sidecar_path(crashed, "last")):
        shutil.copyfile(path, fetched / "checkpoints" / path.name)
    recorder = Recorder()
    result = inputs.train(crashed, budget, recorder)
    assert (result.outcome, result.steps) == (Outcome.COMPLETED, 60)
    assert recorder.progress[0].step == 30  # the first row after resuming at step 20
    result = inputs.train(fetched, budget)
    assert (result.outcome, result.steps) == (Outcome.COMPLETED, 60)

    # Same rows (the crashed session's rows past the checkpoint were dropped) and the same
    # weights and optimizer state, bit for bit: data order, dropout and optimizer state
    # (AdamW's moments; Muon's momentum too) all resumed exactly.
    assert curve(crashed) == curve(straight)
    assert curve(fetched) == curve(straight)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    if fields.get("optimizer") == "muon":
        assert set(a["optimizer"]) == {"muon", "adamw"}
        assert a["optimizer"]["muon"]["state"], "Muon's momentum buffers are saved"
    for resumed in (crashed, fetched):
        manifest = json.loads((resumed / "artifact" / "manifest.json").read_text())
        assert manifest["training"]["resumed_at_steps"] == [20]
        b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert _tensors_of(a["optimizer"]) == _tensors_of(b["optimizer"])


def _tensors_of(state: object, prefix: str = "") -> dict[str, bytes]:
    """Every tensor in an optimizer state, by its path, as bytes (for exact comparison)."""
    if isinstance(state, torch.Tensor):
        return {prefix: state.numpy().tobytes()}
    items: list[tuple[object, object]]
    if isinstance(state, dict):
        items = list(state.items())
    elif isinstance(state, list):
        items = list(enumerate(state))
    else:
        return {}
    out: dict[str, bytes] = {}
    for key, value in items:
        out.update(_tensors_of(value, f"{prefix}/{key}"))
    return out


StorageLike = torch.types.Storage | torch.storage.TypedStorage | torch.storage.UntypedStorage


@contextlib.contextmanager
def saved_as_if_on_cuda() -> Iterator[None]:
    """torch.save tags every CPU tensor `cuda:0` meanwhile: the file a GPU worker writes."""

    def tag(storage: StorageLike) -> str | None:
        return "cuda:0" if storage.device.type == "cpu" else None

    def no_restore(storage: StorageLike, location: str) -> StorageLike | None:
        return None  # loading is left to torch's own handlers

    entry = (1, tag, no_restore)
    torch.serialization.register_package(*entry)
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def test_a_checkpoint_written_on_a_gpu_resumes_on_a_cpu(inputs: Inputs, tmp_path: Path) -> None:
    """Checkpoints load with map_location="cpu" and are then copied to the run's device, so
    a GPU worker's last.pt (its tensors tagged cuda:0) resumes on a CPU worker."""
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        inputs.run(run_dir, Recorder(crash_at=30), max_steps=60)  # last checkpoint: step 20
    last = checkpoint_path(run_dir, "last")
    data = torch.load(last, map_location="cpu", weights_only=True)
    with saved_as_if_on_cuda():
        torch.save(data, last)
    if not torch.cuda.is_available():  # the file really names a CUDA device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(last, weights_only=True)
    assert inputs.run(run_dir, max_steps=60) == (Outcome.COMPLETED, 60)
    manifest = json.loads((run_dir / "artifact" / "manifest.json").read_text())
    assert manifest["training"]["resumed_at_steps"] == [20]
    assert manifest["device"] == "cpu"


def test_hand_back_checkpoints_then_resumes(inputs: Inputs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    class StopAtStep(Recorder):
        asked = False

        def on_progress(self, info: ProgressInfo) -> None:
            self.asked = self.asked or info.step == 10  # as the worker's shutdown does

        def should_hand_back(self) -> bool:
            return self.asked

    assert inputs.run(run_dir, StopAtStep(), max_steps=30, dropout=0.1) == (
        Outcome.INTERRUPTED,
        10,
    )
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["loop"]["step"] == 10
    outcome, steps = inputs.run(run_dir, max_steps=30, dropout=0.1)
    assert (outcome, steps) == (Outcome.COMPLETED, 30)
    assert [r["step"] for r in metrics(run_dir)] == [0, 10, 20, 30]
    shutil.rmtree(run_dir)


def test_a_resumed_run_keeps_the_precision_its_start_chose(inputs: Inputs, tmp_path: Path) -> None:
    """`auto` is decided once: a run resumed on a CPU with native bf16 (where `auto` would
    probe and might pick bf16) goes on in the fp32 its first session chose without bf16."""
    run_dir = tmp_path / "run"
    without = inputs.cpu.model_copy(update={"native_bf16": False, "native_bf16_source": "setting"})
    with_bf16 = inputs.cpu.model_copy(update={"native_bf16": True, "native_bf16_source": "setting"})

    class StopAtStep(Recorder):
        def should_hand_back(self) -> bool:
            return bool(self.progress) and self.progress[-1].step >= 10

    budget = {"max_steps": 20, "precision": "auto"}
    first = inputs.train(run_dir, budget, StopAtStep(), cpu=without)
    assert (first.outcome, first.steps) == (Outcome.INTERRUPTED, 10)
    result = inputs.train(run_dir, budget, cpu=with_bf16)
    assert result.manifest is not None
    assert result.manifest.precision.value == "fp32"
    assert result.manifest.execution.precision_reason == (
        "no native bf16 (setting); kept on resuming at step 10"
    )
    assert result.manifest.execution.precision_probe is None


def test_a_time_budget_ends_on_time_with_the_schedule_decayed(
    inputs: Inputs, tmp_path: Path
) -> None:
    recorder = Recorder()
    outcome, steps = inputs.run(tmp_path / "run", recorder, max_train_seconds=3, warmup_steps=2)
    assert outcome is Outcome.COMPLETED
    *_, before, last = recorder.progress
    assert (last.step, last.total_steps, last.eta_seconds) == (steps, steps, 0.0)
    assert 2.0 < last.elapsed < 3.5
    # The plan re-estimated the total from measured step times and decayed towards its floor
    # (0.1 of the peak) as the time ran out.
    assert before.total_steps == pytest.approx(steps, rel=0.25)
    assert last.lr < 0.5 * LEARNING_RATE
    # The planned epochs follow the plan's steps, for a time budget too.
    for p in recorder.progress[1:]:  # epoch / step: the training tokens' share of one step
        assert p.total_epochs == pytest.approx(p.total_steps * p.epoch / p.step)
    assert last.total_epochs == pytest.approx(last.epoch)


def test_checkpoints_are_written_on_time_as_well_as_every_n_steps(
    inputs: Inputs, tmp_path: Path
) -> None:
    def last_steps(recorder: Recorder) -> list[int]:
        return [c.step for c in recorder.checkpoints if c.kind == "last"]

    by_steps = Recorder()
    inputs.train(tmp_path / "steps", {"max_steps": 5, "checkpoint_interval": 2}, by_steps)
    assert last_steps(by_steps) == [2, 4, 5]
    # The step interval never comes; any time at all since the previous checkpoint is enough.
    by_time = Recorder()
    inputs.train(
        tmp_path / "time",
        {"max_steps": 5, "checkpoint_interval": 1_000_000},
        by_time,
        checkpoint_every_seconds=1e-9,
    )
    assert last_steps(by_time) == [1, 2, 3, 4, 5]
    elapsed = [c.elapsed for c in by_time.checkpoints if c.kind == "last"]
    assert elapsed == sorted(elapsed)


def test_checkpoint_files_have_sidecars_that_identify_them(inputs: Inputs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    recorder = Recorder()
    inputs.train(run_dir, {"max_steps": 40}, recorder)
    for kind in ("last", "best"):
        info = [c for c in recorder.checkpoints if c.kind == kind][-1]
        assert info.path == checkpoint_path(run_dir, kind)
        data = info.path.read_bytes()
        file = info.file
        assert (file.kind, file.step, file.size) == (kind, info.step, len(data))
        assert file.sha256 == hashlib.sha256(data).hexdigest()
        assert read_checkpoint_file(run_dir, kind) == file
    last, best = read_checkpoint_file(run_dir, "last"), read_checkpoint_file(run_dir, "best")
    assert last is not None and best is not None
    assert (last.step, last.val_loss) == (40, metrics(run_dir)[-1]["val_loss"])
    assert last.elapsed == recorder.checkpoints[-1].elapsed
    saved = torch.load(checkpoint_path(run_dir, "best"), weights_only=True)
    assert (best.step, best.val_loss, best.elapsed) == (saved["step"], saved["val_loss"], None)

    # A sidecar that does not go with its file reads as no checkpoint at all.
    sidecar = sidecar_path(run_dir, "best")
    sidecar.write_text(sidecar_path(run_dir, "last").read_text())  # describes last.pt
    assert read_checkpoint_file(run_dir, "best") is None
    sidecar.write_text('{"kind": "best", "step": 4')  # torn
    assert read_checkpoint_file(run_dir, "best") is None
    with checkpoint_path(run_dir, "last").open("ab") as f:
        f.write(b"0")  # a .pt replaced after its sidecar was written
    assert read_checkpoint_file(run_dir, "last") is None
    sidecar_path(run_dir, "last").unlink()
    assert read_checkpoint_file(run_dir, "last") is None


def test_early_stopping_ends_a_run_whose_loss_stops_improving(
    inputs: Inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model_trainer.training")
    run_dir = tmp_path / "run"
    frozen = {"learning_rate": FROZEN_LR, "eval_interval": 5, "early_stopping_patience": 2}
    recorder = Recorder()
    result = inputs.train(run_dir, {**frozen, "max_steps": 100}, recorder)
    # Step 0 sets the best; 5 and 10 do not beat it: two in a row, long before step 100.
    assert (result.outcome, result.steps) == (Outcome.EARLY_STOPPED, 10)
    val = losses(metrics(run_dir), "val_loss")
    assert [s for s, _ in val] == [0, 5, 10] and len({v for _, v in val}) == 1
    last = recorder.progress[-1]
    assert (last.step, last.total_steps, last.eta_seconds) == (10, 10, 0.0)
    assert [r.__dict__["fields"]["step"] for r in events(caplog, "early_stopped")] == [10]
    # Ended like a completed run: final checkpoint, artifact, evaluation and manifest.
    assert result.manifest is not None and result.eval is not None
    assert result.manifest.training.stopped_early is True
    assert result.manifest.training.stopped_early_at_step == 10
    assert (run_dir / "artifact" / "model.safetensors").is_file()
    ckpt = read_checkpoint_file(run_dir, "last")
    assert ckpt is not None and ckpt.step == 10
    # A retry of the finished run (say its upload failed) stops at once, where it stopped.
    again = inputs.train(run_dir, {**frozen, "max_steps": 100})
    assert (again.outcome, again.steps) == (Outcome.EARLY_STOPPED, 10)

    # Patience that runs out on the budget's last step: the budget ended the run.
    ended = inputs.train(tmp_path / "ended", {**frozen, "max_steps": 10})
    assert (ended.outcome, ended.steps) == (Outcome.COMPLETED, 10)
    assert ended.manifest is not None and ended.manifest.training.stopped_early is False


def test_early_stopping_counts_validations_across_a_resume(inputs: Inputs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    frozen = {
        "learning_rate": FROZEN_LR,
        "eval_interval": 5,
        "checkpoint_interval": 5,
        "early_stopping_patience": 3,
        "max_steps": 100,
    }
    with pytest.raises(RuntimeError, match="simulated crash"):
        inputs.run(run_dir, Recorder(crash_at=10), **frozen)  # checkpoint at 5: 1 without
    result = inputs.train(run_dir, frozen)
    # 10 and 15 are the 2nd and 3rd validations without a better loss; had the count
    # restarted at the resume, the run would have gone on to step 20.
    assert (result.outcome, result.steps) == (Outcome.EARLY_STOPPED, 15)
    assert result.manifest is not None
    assert result.manifest.training.resumed_at_steps == [5]


def test_a_run_can_start_from_another_runs_weights(
    inputs: Inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model_trainer.training")
    a = inputs.train(tmp_path / "a", {"max_steps": 40})
    assert a.manifest is not None and a.manifest.initialised_from is None
    a_rows = metrics(tmp_path / "a")

    b_dir = tmp_path / "b"
    a_last = checkpoint_path(tmp_path / "a", "last")
    b = inputs.train(b_dir, {"max_steps": 20}, init_weights=a_last, init_label="A")
    # B's first validation sees A's final weights: A's final loss, far below a fresh model's.
    b_start = metrics(b_dir)[0]
    assert b_start["step"] == 0
    assert b_start["val_loss"] == pytest.approx(a_rows[-1]["val_loss"], rel=1e-6)
    assert isinstance(b_start["val_loss"], float) and isinstance(a_rows[0]["val_loss"], float)
    assert b_start["val_loss"] < a_rows[0]["val_loss"] - 1.0
    assert b.manifest is not None and b.manifest.initialised_from == "A"
    assert [r.__dict__["fields"]["source"] for r in events(caplog, "initialised_from")] == ["A"]
    # A retry resumes from B's own checkpoint: the weights to start from are not read again.
    again = inputs.train(b_dir, {"max_steps": 20}, init_weights=tmp_path / "gone.pt")
    assert again.manifest is not None and again.manifest.initialised_from == "A"

    # A best.pt starts a run as well; by default the manifest names the file.
    a_best = checkpoint_path(tmp_path / "a", "best")
    c = inputs.train(tmp_path / "c", {"max_steps": 1}, init_weights=a_best)
    assert c.manifest is not None and c.manifest.initialised_from == "best.pt"
    assert metrics(tmp_path / "c")[0]["val_loss"] == pytest.approx(
        a.manifest.training.best_val_loss, rel=1e-6
    )


def test_starting_from_weights_of_another_shape_is_refused(inputs: Inputs, tmp_path: Path) -> None:
    inputs.train(tmp_path / "a", {"max_steps": 1})
    narrower = {"max_steps": 1, "n_embd": 16}
    with pytest.raises(UserError, match="architectures differ") as caught:
        inputs.train(tmp_path / "b", narrower, init_weights=checkpoint_path(tmp_path / "a", "last"))
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert not (tmp_path / "b" / "checkpoints").exists()
