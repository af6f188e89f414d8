"""The execution choice (eager or compiled, fp32 or bf16), the compile cache and the budget.

The hardware facts are passed in (`CpuInfo`, both answers), never read from this machine;
no assertion depends on how fast it is. Compiling is real (inductor, tiny shapes) and takes
tens of seconds on a cold cache, so the compiled cases share one cache folder per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from model_trainer.errors import ErrorCode, UserError
from model_trainer.training.checkpoint import checkpoint_path, load_last
from model_trainer.training.config import CompileMode, Precision, TrainingSpec
from model_trainer.training.evaluate import CanGenerate
from model_trainer.training.execution import (
    COLD_COMPILE_BASE_SECONDS,
    COLD_COMPILE_SECONDS_PER_LAYER,
    PRIOR_SPEEDUP,
    WARM_COMPILE_FRACTION,
    CompileEstimate,
    CompileMemo,
    CompileMemoEntry,
    choose_compile,
    choose_execution,
    estimate_compile,
)
from model_trainer.training.hardware import NO_GPU, CpuInfo
from model_trainer.training.loop import METRICS_FILE, Outcome, ProgressInfo, TrainingCallbacks
from model_trainer.training.model import build_model, model_spec
from model_trainer.training.run import TrainingResult, run_training
from tests.test_training_data import file_id, token_cache, train_bpe, write_corpus

ROOT = Path(__file__).resolve().parent.parent
# Small enough to compile in seconds on a warm cache: one block, width 32.
TINY = {
    "model_family": "gpt2",
    "optimizer": "adamw",
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "max_seq_len": 32,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "warmup_steps": 2,
    "eval_interval": 10,
    "eval_batches": 2,
    "checkpoint_interval": 10,
    "precision": "fp32",
}
CPU_DEVICE = torch.device("cpu")


def facts(cpu: CpuInfo, native_bf16: bool) -> CpuInfo:
    return cpu.model_copy(update={"native_bf16": native_bf16, "native_bf16_source": "setting"})


def needs_a_compiler(cpu: CpuInfo) -> None:
    """Compiling for real needs the C++ compiler inductor calls (the Makefile's system-deps)."""
    if cpu.cpp_compiler is None:
        pytest.skip("no C++ compiler here: inductor cannot build the compiled step")


# --- the pure choice ---------------------------------------------------------------------


def test_a_short_run_does_not_compile_when_compiling_costs_more_than_it_saves() -> None:
    estimate = CompileEstimate(seconds=25, speedup=1.3, source="rule, cold cache")
    # 30 s at 1.3x saves ~7 s: not the 25 s compiling costs.
    short = choose_compile(CompileMode.AUTO, estimate, run_seconds=30, can_compile=True)
    assert not short.compiled
    assert short.reason.startswith("auto: not worth it, saving ~7 s of a 30 s run at 1.30x")
    # 10 minutes at 1.3x saves ~138 s: compile.
    long = choose_compile(CompileMode.AUTO, estimate, run_seconds=600, can_compile=True)
    assert long.compiled
    assert long.reason.startswith("auto: saving ~138 s of a 600 s run")
    # Even an unbounded speedup cannot save more than the run lasts.
    fast = estimate.model_copy(update={"speedup": 1e9})
    assert not choose_compile(CompileMode.AUTO, fast, run_seconds=24, can_compile=True).compiled


def test_an_explicit_request_is_kept_whatever_the_figures() -> None:
    estimate = CompileEstimate(seconds=1000, speedup=1.01, source="rule, cold cache")
    on = choose_compile(CompileMode.ON, estimate, run_seconds=1, can_compile=True)
    off = choose_compile(CompileMode.OFF, None, None, can_compile=True)
    assert (on.compiled, on.reason) == (True, "requested on")
    assert (off.compiled, off.reason) == (False, "requested off")
    with pytest.raises(ValueError, match="needs the compile estimate"):
        choose_compile(CompileMode.AUTO, None, 30, can_compile=True)


def test_without_a_cpp_compiler_auto_stays_eager_and_on_is_refused() -> None:
    """Inductor builds CPU kernels with a C++ compiler: a worker without one (a slim image)
    runs `auto` eager, and refuses `on` as a configuration error that says what to do."""
    estimate = CompileEstimate(seconds=1, speedup=5, source="rule, cold cache")
    auto = choose_compile(CompileMode.AUTO, estimate, run_seconds=3600, can_compile=False)
    assert (auto.compiled, auto.reason) == (False, "auto: no C++ compiler on this worker")
    with pytest.raises(UserError, match="no C\\+\\+ compiler") as refused:
        choose_compile(CompileMode.ON, estimate, run_seconds=3600, can_compile=False)
    assert refused.value.code is ErrorCode.CONFIG_INVALID


def test_the_estimate_comes_from_the_rule_then_from_this_workers_memo() -> None:
    rule = estimate_compile(4, None)
    assert rule.seconds == COLD_COMPILE_BASE_SECONDS + 4 * COLD_COMPILE_SECONDS_PER_LAYER
    assert (rule.speedup, rule.source) == (PRIOR_SPEEDUP, "rule, cold cache")
    # A cold compile filled the cache: the next one loads its graphs, a fraction of the time.
    cold = CompileMemoEntry(compile_seconds=40, warm=False, eager_ms=30, compiled_ms=20)
    after_cold = estimate_compile(4, cold)
    assert after_cold.seconds == pytest.approx(40 * WARM_COMPILE_FRACTION)
    assert after_cold.speedup == 1.5
    warm = cold.model_copy(update={"compile_seconds": 3.0, "warm": True, "eager_ms": None})
    assert estimate_compile(4, warm) == CompileEstimate(
        seconds=3.0, speedup=PRIOR_SPEEDUP, source="measured on this worker"
    )


def test_the_memo_survives_a_torn_file(tmp_path: Path) -> None:
    memo = CompileMemo(tmp_path)
    entry = CompileMemoEntry(compile_seconds=2.5, warm=True, eager_ms=10, compiled_ms=8)
    memo.put("shape", entry)
    assert CompileMemo(tmp_path).get("shape") == entry
    (tmp_path / "compile-memo.json").write_text("{not json")
    assert memo.get("shape") is None
    assert CompileMemo(None).get("shape") is None


@pytest.mark.parametrize("native_bf16", [False, True])
def test_a_short_auto_run_measures_eager_steps_and_stays_eager(
    cpu: CpuInfo, native_bf16: bool, tmp_path: Path
) -> None:
    """Both answers of the hardware facts: without native bf16 no probe and fp32; with it a
    probe, whose eager timing then prices the run. Ten steps never pay for a compile."""
    config = TrainingSpec.model_validate(
        {**TINY, "precision": "auto", "compile": "auto", "max_steps": 10}
    )
    model = build_model(model_spec(config, 300, None, None), config.model_family, config.seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    execution, _ = choose_execution(
        model,
        config,
        300,
        CPU_DEVICE,
        facts(cpu, native_bf16),
        NO_GPU,
        threads=1,
        planned_steps=10,
        memo=CompileMemo(tmp_path),
    )
    assert (execution.precision_probe is not None) is native_bf16
    if not native_bf16:
        assert execution.precision is Precision.FP32
        assert execution.precision_reason == "no native bf16 (setting)"
    assert not execution.compiled
    assert execution.compile_reason.startswith("auto: not worth it, saving ~")
    timings = execution.compile_timings
    assert timings is not None and timings.eager_ms is not None and timings.eager_ms > 0
    assert timings.compile_seconds is None and timings.estimate is not None
    assert execution.setup_seconds > 0
    # Measuring changed nothing the run depends on.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not (tmp_path / "compile-memo.json").exists()  # nothing compiled, nothing to note


# --- real runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("execution")
    train_bpe(folder / "tok", write_corpus(folder / "corpus.txt"))
    return folder


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


class Recorder(TrainingCallbacks):
    def __init__(self, hand_back_at: int | None = None) -> None:
        self.progress: list[ProgressInfo] = []
        self.hand_back_at = hand_back_at

    def on_progress(self, info: ProgressInfo) -> None:
        self.progress.append(info)

    def should_hand_back(self) -> bool:
        at = self.hand_back_at
        return at is not None and bool(self.progress) and self.progress[-1].step >= at


def train(
    root: Path,
    run_dir: Path,
    cpu: CpuInfo,
    callbacks: TrainingCallbacks | None = None,
    compile_cache: Path | None = None,
    **fields: object,
) -> TrainingResult:
    return run_training(
        TrainingSpec.model_validate({**TINY, **fields}),
        root / "corpus.txt",
        root / "tok",
        run_dir,
        token_cache(root),
        cpu=cpu,
        threads=1,
        corpus_id=file_id(root / "corpus.txt"),
        tokenizer_id="tok-execution",
        callbacks=callbacks,
        compile_cache_dir=compile_cache,
    )


COMPILED = {"compile": "on", "max_steps": 20}


@pytest.fixture(scope="module")
def compiled_session(
    root: Path, cpu: CpuInfo, compile_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainingResult]:
    """The first session of a compiled run, handed back at step 10: the one cold compile of
    this module (tens of seconds), which fills `compile_cache`."""
    needs_a_compiler(cpu)
    run_dir = tmp_path_factory.mktemp("compiled") / "run"
    first = train(root, run_dir, cpu, Recorder(hand_back_at=10), compile_cache, **COMPILED)
    return run_dir, first


@pytest.mark.e2e  # compiles: tens of seconds
def test_a_compiled_run_trains_checkpoints_resumes_evaluates_and_ships_plain_weights(
    root: Path, cpu: CpuInfo, compile_cache: Path, compiled_session: tuple[Path, TrainingResult]
) -> None:
    run_dir, first = compiled_session
    assert (first.outcome, first.steps) == (Outcome.INTERRUPTED, 10)
    checkpoint = load_last(run_dir)
    assert checkpoint is not None
    chosen = checkpoint.loop.execution
    assert (chosen.compiled, chosen.compile_reason) == (True, "requested on")
    timings = chosen.compile_timings
    assert timings is not None and timings.compile_seconds is not None
    assert timings.cache_hits == 0  # a cold cache: compiled from scratch
    assert timings.compiled_ms is not None and timings.compiled_ms > 0
    # The module was never wrapped: its checkpoint has the model's own keys.
    assert checkpoint.model and not any("_orig_mod" in k for k in checkpoint.model)
    assert checkpoint_path(run_dir, "best").is_file()

    # The second session compiles again (the same execution), and continues from step 10.
    recorder = Recorder()
    result = train(root, run_dir, cpu, recorder, compile_cache, **COMPILED)
    assert (result.outcome, result.steps) == (Outcome.COMPLETED, 20)
    assert recorder.progress[0].step > 10
    manifest = result.manifest
    assert manifest is not None
    assert manifest.compiled and manifest.training.resumed_at_steps == [10]
    assert manifest.execution.compile_reason == "requested on; kept on resuming at step 10"
    # Compiled again (in this process dynamo still holds the graph: another process would
    # load it from the cache, see the last test).
    resumed = manifest.execution.compile_timings
    assert resumed is not None and resumed.compiled_ms is not None
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert all(r["train_loss"] is None or r["train_loss"] > 0 for r in rows)
    assert manifest.eval is not None and manifest.eval.loss > 0
    # Both sessions' setups were spent from the budget's seconds.
    assert resumed.compile_seconds is not None
    assert manifest.timings.setup_seconds >= chosen.setup_seconds + resumed.compile_seconds
    assert manifest.timings.train_seconds > manifest.timings.setup_seconds

    # The artifact: plain keys, loadable and usable by stock transformers.
    assert result.artifact_dir is not None
    keys = load_file(result.artifact_dir / "model.safetensors").keys()
    assert keys and not any("_orig_mod" in k for k in keys)
    model: object = AutoModelForCausalLM.from_pretrained(result.artifact_dir)
    assert isinstance(model, CanGenerate)  # see test_training_artifact
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 7)


def test_a_time_budget_covers_the_probe_and_the_setup(
    root: Path, cpu: CpuInfo, tmp_path: Path
) -> None:
    """With native bf16 (stated) `auto` probes; the probe's seconds come out of the budget:
    the run records them, starts its clock with them spent, and ends within the budget."""
    budget = 4.0
    recorder = Recorder()
    result = train(
        root,
        tmp_path / "run",
        facts(cpu, True),
        recorder,
        precision="auto",
        compile="auto",
        max_train_seconds=budget,
        # Validations at step 0 and at the end only: the rows between are written right
        # after the loop's decision to go on (below).
        eval_interval=1_000_000,
    )
    assert result.outcome is Outcome.COMPLETED and result.manifest is not None
    execution = result.manifest.execution
    assert execution.precision_probe is not None
    assert not execution.compiled  # a 4 s run: compiling is never worth it
    timings = result.manifest.timings
    assert timings.setup_seconds == execution.setup_seconds >= execution.precision_probe.seconds
    # The first row (step 0) is written after the setup: the clock started with it spent.
    assert recorder.progress[0].elapsed >= timings.setup_seconds
    assert timings.train_seconds == pytest.approx(
        timings.setup_seconds + timings.session_seconds, abs=0.002
    )
    # The loop decided inside the budget to go on after every row but the last (the row of
    # step 0 comes before any decision). How far the final evaluation and checkpoint run
    # past the budget depends on the machine's load: the test asserts the loop's decisions,
    # not a wall-clock margin.
    went_on = [row for row in recorder.progress[:-1] if not row.evaluated]
    assert went_on and all(row.elapsed < budget for row in went_on)


# --- the compile cache, across processes -------------------------------------------------

# A new session of the compiled shape in a process of its own, on the same compile cache.
COMPILE_AGAIN = """
import json, sys, time
from pathlib import Path
from model_trainer.training.hardware import CpuInfo
from tests.test_execution import COMPILED, train

root, run_dir, cache, cpu_json = sys.argv[1:]
result = train(
    Path(root), Path(run_dir), CpuInfo.model_validate_json(cpu_json), None, Path(cache),
    **{**COMPILED, "max_steps": 2},
)
timings = result.manifest.execution.compile_timings
print(json.dumps({"cache_hits": timings.cache_hits, "compile_seconds": timings.compile_seconds}))
"""


@pytest.mark.e2e
@pytest.mark.usefixtures("compiled_session")
def test_a_second_process_finds_the_compiled_step_in_the_cache(
    root: Path, cpu: CpuInfo, compile_cache: Path, tmp_path: Path
) -> None:
    """The module's cold compile (`compiled_session`) filled the cache; a new process
    compiling the same shape loads its graphs from there instead of compiling them again."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            COMPILE_AGAIN,
            str(root),
            str(tmp_path / "run"),
            str(compile_cache),
            cpu.model_dump_json(),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    warm = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\ncompile cache, a second process: {warm}")
    assert warm["cache_hits"] > 0  # forward and backward graphs, from the first's disk
    # The memo beside the cache now knows this shape's compile time, from a warm cache.
    memo = json.loads((compile_cache / "compile-memo.json").read_text())
    assert len(memo) == 1 and next(iter(memo.values()))["warm"] is True
