"""The artifact loads in stock transformers and generates; evaluation scores the whole split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from model_trainer.training.config import ModelTrainConfig, Precision
from model_trainer.training.data import EvalSplit
from model_trainer.training.evaluate import CanGenerate, EvalMetrics, evaluate_folder
from model_trainer.training.hardware import CpuInfo, resolve_precision
from model_trainer.training.run import TrainingResult, run_training
from tests.test_training_data import file_id, train_bpe, write_corpus

CONFIG = {
    "tokenizer_id": "tok-artifact",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "max_seq_len": 32,
    "batch_size": 8,
    "max_steps": 40,
    "learning_rate": 3e-3,
    "eval_interval": 20,
    "eval_batches": 2,
    "threads": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cpu: CpuInfo) -> tuple[TrainingResult, Path]:
    root = tmp_path_factory.mktemp("artifact")
    tok_dir = train_bpe(root / "tok", write_corpus(root / "corpus.txt"))
    config = ModelTrainConfig.model_validate(
        {**CONFIG, "corpus_file_id": file_id(root / "corpus.txt")}
    )
    result = run_training(
        config, root / "corpus.txt", tok_dir, root / "run", root / "cache", cpu=cpu
    )
    return result, root


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
    assert manifest["architecture"] == {"n_layer": 2, "n_head": 2, "n_embd": 32}
    # `auto` is whatever the resolver says for this machine's facts (tested both ways in
    # test_hardware.py), and the manifest records both the facts and the choice.
    assert manifest["precision_requested"] == "auto"
    assert manifest["precision"] == resolve_precision(Precision.AUTO, cpu).value
    assert manifest["cpu"]["native_bf16"] is cpu.native_bf16
    assert manifest["threads"] == 1
    assert manifest["data"]["token_dtype"] in {"uint16"}
    assert set(manifest["versions"]) >= {"torch", "transformers", "tokenizers", "python"}
    assert manifest["training"]["steps"] == 40
    assert result.eval is not None
    assert manifest["eval"]["bits_per_char"] == pytest.approx(result.eval.bits_per_char)


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
        result.artifact_dir, corpus, root / "cache", out_dir, corpus_id=file_id(corpus), split=split
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
