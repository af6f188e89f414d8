"""The artifact loads in stock transformers and generates; evaluation scores the whole split."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from model_trainer.training.checkpoint import (
    checkpoint_path,
    load_best,
    save_best,
    sidecar_path,
)
from model_trainer.training.config import Precision, TrainingSpec
from model_trainer.training.data import EvalSplit
from model_trainer.training.evaluate import CanGenerate, EvalMetrics, evaluate_folder
from model_trainer.training.execution import Execution
from model_trainer.training.hardware import NO_GPU, CpuInfo
from model_trainer.training.precision import choose_precision
from model_trainer.training.run import TrainingResult, run_training
from tests.test_training_data import file_id, token_cache, train_bpe, write_corpus

CONFIG = {
    "model_family": "gpt2",
    "optimizer": "adamw",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "max_seq_len": 32,
    "batch_size": 8,
    "max_steps": 40,
    "learning_rate": 3e-3,
    "eval_interval": 20,
    "eval_batches": 2,
}


def train(root: Path, run_dir: Path, cpu: CpuInfo, **fields: object) -> TrainingResult:
    """A run on `root`'s corpus and tokenizer (made by the `trained` fixture)."""
    config = TrainingSpec.model_validate({**CONFIG, **fields})
    return run_training(
        config,
        root / "corpus.txt",
        root / "tok",
        run_dir,
        token_cache(root),
        cpu=cpu,
        threads=1,
        corpus_id=file_id(root / "corpus.txt"),
        tokenizer_id="tok-artifact",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cpu: CpuInfo) -> tuple[TrainingResult, Path]:
    root = tmp_path_factory.mktemp("artifact")
    train_bpe(root / "tok", write_corpus(root / "corpus.txt"))
    return train(root, root / "run", cpu), root


def artifact_weights(result: TrainingResult) -> dict[str, torch.Tensor]:
    assert result.artifact_dir is not None
    return load_file(result.artifact_dir / "model.safetensors")


def same_weights(saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> bool:
    # The artifact leaves out the head tied to the token embedding; the rest must match.
    assert len(saved) >= len(model) - 1
    return all(torch.equal(tensor, model[name]) for name, tensor in saved.items())


def test_artifact_folder_has_model_tokenizer_manifest_and_eval(
    trained: tuple[TrainingResult, Path], cpu: CpuInfo
) -> None:
    result, _ = trained
    folder = result.artifact_dir
    assert folder is not None
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
        "metrics.jsonl",
        "eval/metrics.json",
        "eval/samples.jsonl",
    } <= names
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["max_steps"] == 40
    assert manifest["architecture"] == {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "n_kv_head": 2,
        "intermediate_size": 128,
        "tie_word_embeddings": True,
    }
    assert (manifest["config"]["model_family"], manifest["config"]["optimizer"]) == (
        "gpt2",
        "adamw",
    )
    # `auto` is what the chooser says for this machine's facts and, with native bf16, the
    # probe's timings (both ways in test_hardware.py); the manifest records facts, timings,
    # choice and reason.
    assert manifest["precision_requested"] == "auto"
    execution = Execution.model_validate(manifest["execution"])
    probe = execution.precision_probe
    expected = choose_precision(Precision.AUTO, torch.device("cpu"), cpu, NO_GPU, probe)
    assert manifest["precision"] == execution.precision.value == expected.precision.value
    assert execution.precision_reason == expected.reason
    assert (probe is not None) is cpu.native_bf16
    # 40 steps of a tiny model: compiling would cost far more than it could save.
    assert manifest["compile_requested"] == "auto"
    assert manifest["compiled"] is False
    assert execution.compile_reason.startswith("auto: not worth it, saving ")
    assert manifest["timings"]["setup_seconds"] == execution.setup_seconds > 0
    assert manifest["device_requested"] == "auto"
    assert manifest["device"] == "cpu"
    assert manifest["gpu"] is None
    assert manifest["cpu"]["native_bf16"] is cpu.native_bf16
    assert manifest["threads"] == 1
    assert manifest["data"]["token_dtype"] in {"uint16"}
    assert set(manifest["versions"]) >= {"torch", "transformers", "tokenizers", "python"}
    assert manifest["training"]["steps"] == 40
    assert manifest["training"]["stopped_early"] is False
    assert manifest["initialised_from"] is None
    assert result.eval is not None
    assert manifest["eval"]["bits_per_char"] == pytest.approx(result.eval.bits_per_char)


def test_the_artifact_ships_the_best_weights_by_default(
    trained: tuple[TrainingResult, Path],
) -> None:
    result, root = trained
    assert result.manifest is not None
    weights, training = result.manifest.weights, result.manifest.training
    assert weights.kind == "best"
    assert weights.step == training.best_step and weights.step <= training.steps
    assert weights.val_loss == training.best_val_loss
    best = load_best(root / "run")
    assert best is not None and best.step == weights.step
    assert same_weights(artifact_weights(result), best.model)


def test_the_best_weights_are_those_of_the_best_step_not_the_last(
    trained: tuple[TrainingResult, Path], cpu: CpuInfo, tmp_path: Path
) -> None:
    root = trained[1]
    # An update too small to change the loss (see test_training_loop.FROZEN_LR): no
    # validation beats step 0's, yet the zero-initialised biases do move, by 1e-30.
    result = train(root, tmp_path / "run", cpu, learning_rate=1e-30, max_steps=10, eval_interval=5)
    assert result.manifest is not None
    assert (result.manifest.weights.kind, result.manifest.weights.step) == ("best", 0)
    best = load_best(tmp_path / "run")
    last = torch.load(checkpoint_path(tmp_path / "run", "last"), weights_only=True)["model"]
    assert best is not None
    assert same_weights(artifact_weights(result), best.model)
    assert not same_weights(artifact_weights(result), last)


def test_the_artifact_ships_the_last_weights_when_asked(
    trained: tuple[TrainingResult, Path], cpu: CpuInfo, tmp_path: Path
) -> None:
    root = trained[1]
    result = train(root, tmp_path / "run", cpu, artifact_weights="last")
    assert result.manifest is not None
    weights = result.manifest.weights
    assert (weights.kind, weights.step) == ("last", 40)
    assert weights.val_loss == result.manifest.training.final_val_loss
    last = torch.load(checkpoint_path(tmp_path / "run", "last"), weights_only=True)["model"]
    assert same_weights(artifact_weights(result), last)


def test_without_the_runs_best_checkpoint_the_last_weights_ship(
    trained: tuple[TrainingResult, Path],
    cpu: CpuInfo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="model_trainer.training")
    root = trained[1]
    # The finished run's last checkpoint alone, as a retry on another worker could fetch it.
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for path in (checkpoint_path(root / "run", "last"), sidecar_path(root / "run", "last")):
        shutil.copyfile(path, run_dir / "checkpoints" / path.name)
    last = torch.load(checkpoint_path(run_dir, "last"), weights_only=True)["model"]
    # A best.pt from past the resumed checkpoint (a rolled-back stretch) is not the run's.
    save_best(run_dir, {k: torch.zeros_like(v) for k, v in last.items()}, 41, 0.5)

    result = train(root, run_dir, cpu)
    assert result.manifest is not None
    assert (result.manifest.weights.kind, result.manifest.weights.step) == ("last", 40)
    assert same_weights(artifact_weights(result), last)
    missing = [r for r in caplog.records if r.__dict__.get("event") == "best_weights_missing"]
    assert len(missing) == 1 and missing[0].levelno == logging.WARNING


def test_artifact_loads_with_auto_classes_and_generates(
    trained: tuple[TrainingResult, Path],
) -> None:
    folder = trained[0].artifact_dir
    assert folder is not None
    # Typed as object first: transformers' own annotation of generate() does not type-check
    # under mypy --strict; CanGenerate is the part of it we call.
    model: object = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, CanGenerate)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    ids = tokenizer("the quick", return_tensors="pt")["input_ids"]
    assert isinstance(ids, torch.Tensor)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=True, pad_token_id=0)
    assert isinstance(out, torch.Tensor)
    assert out.shape[0] == 1 and out.shape[1] > ids.shape[1]
    text = tokenizer.decode(out[0].tolist())
    assert isinstance(text, str) and text.startswith("the quick")


def test_a_gpt2_artifact_is_the_same_model_under_gpt2s_original_gelu(
    trained: tuple[TrainingResult, Path],
) -> None:
    """Our GPT-2 runs PyTorch's one-kernel tanh GELU; GPT-2's own `gelu_new` computes the
    same formula op by op, so tools that assume it get the same model."""
    folder = trained[0].artifact_dir
    assert folder is not None
    config = json.loads((folder / "config.json").read_text())
    assert config["activation_function"] == "gelu_pytorch_tanh"
    ours: object = AutoModelForCausalLM.from_pretrained(folder)
    original: object = AutoModelForCausalLM.from_pretrained(folder, activation_function="gelu_new")
    assert isinstance(ours, torch.nn.Module) and isinstance(original, torch.nn.Module)
    ids = torch.randint(config["vocab_size"], (2, config["n_positions"]))
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, original(input_ids=ids).logits
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _evaluate(
    trained: tuple[TrainingResult, Path], out_dir: Path, split: EvalSplit
) -> tuple[EvalMetrics, EvalMetrics, dict[str, object]]:
    """Evaluate the run's artifact on its own corpus, as an evaluation request does.

    Returns the metrics, the run's own end-of-run ones and the manifest's data summary.
    """
    result, root = trained
    assert result.artifact_dir is not None and result.eval is not None
    corpus = root / "corpus.txt"
    metrics = evaluate_folder(
        result.artifact_dir,
        corpus,
        token_cache(root),
        out_dir,
        corpus_id=file_id(corpus),
        split=split,
    )
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    return metrics, result.eval, manifest["data"]


def test_evaluate_scores_the_validation_split_and_writes_files(
    trained: tuple[TrainingResult, Path], tmp_path: Path
) -> None:
    metrics, run_eval, data = _evaluate(trained, tmp_path / "eval", "validation")
    for value in (metrics.loss, metrics.perplexity, metrics.bits_per_char, metrics.tokens_per_char):
        assert math.isfinite(value) and value > 0
    assert metrics.perplexity == pytest.approx(math.exp(metrics.loss))
    assert metrics.bits_per_char == pytest.approx(
        metrics.loss * metrics.tokens_per_char / math.log(2)
    )
    # The same numbers as the run's own evaluation: the saved weights are the trained ones.
    assert metrics.loss == pytest.approx(run_eval.loss, rel=1e-5)
    assert metrics.n_chars == data["validation_chars"]
    assert metrics.n_tokens == data["validation_tokens"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["bits_per_char"] == pytest.approx(metrics.bits_per_char)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").open()]
    assert len(samples) == 3
    assert all(isinstance(s["completion"], str) and s["completion"] for s in samples)


def test_evaluate_test_scores_the_test_split_apart_from_validation(
    trained: tuple[TrainingResult, Path], tmp_path: Path
) -> None:
    metrics, run_eval, data = _evaluate(trained, tmp_path / "eval", "test")
    assert metrics.split == "test"
    # Every test token scored, exactly the test split's characters: not validation's.
    assert metrics.n_tokens == data["test_tokens"]
    assert metrics.n_chars == data["test_chars"]
    assert metrics.loss != pytest.approx(run_eval.loss, rel=1e-9)


def test_auto_precision_on_native_bf16_is_measured_and_leaves_the_run_as_it_was(
    trained: tuple[TrainingResult, Path], cpu: CpuInfo, tmp_path: Path
) -> None:
    """With native bf16 (stated: the facts are passed in) a real run probes fp32 and bf16,
    records the timings and the reason, and then trains exactly as a run that asked for the
    chosen precision: the probe leaves weights and random state as they were."""
    root = trained[1]
    with_bf16 = cpu.model_copy(update={"native_bf16": True, "native_bf16_source": "setting"})
    probed = train(root, tmp_path / "auto", with_bf16, max_steps=10)
    assert probed.manifest is not None
    execution = probed.manifest.execution
    probe = execution.precision_probe
    assert probe is not None and probe.pairs >= 1
    assert probe.fp32_ms > 0 and probe.bf16_ms > 0
    assert execution.precision_reason.startswith("probe: bf16 ")
    # The probe is part of the setup, which is part of the budget spent.
    assert probed.manifest.timings.setup_seconds >= probe.seconds > 0
    chosen = probed.manifest.precision
    assert chosen in (Precision.FP32, Precision.BF16)

    asked = train(root, tmp_path / "asked", with_bf16, max_steps=10, precision=chosen.value)
    assert asked.manifest is not None
    assert asked.manifest.execution.precision_probe is None
    assert asked.manifest.execution.precision_reason == f"requested {chosen.value}"
    assert asked.manifest.training.final_val_loss == probed.manifest.training.final_val_loss
    assert same_weights(artifact_weights(asked), artifact_weights(probed))
