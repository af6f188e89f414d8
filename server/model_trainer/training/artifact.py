"""The artifact folder: a stock `transformers` checkpoint plus what explains it.

    config.json, generation_config.json, model.safetensors   model.save_pretrained
    tokenizer.json, tokenizer_config.json                     AutoTokenizer.from_pretrained
    manifest.json                                             config, versions, CPU, timings,
                                                              metrics summary (written with
                                                              model_trainer.manifest)
    metrics.jsonl                                             the loss curve
    eval/metrics.json, eval/samples.jsonl                     see evaluate.py

The folder is assembled under a temporary name and renamed into place, so a crash never
leaves a half-written artifact behind.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from model_trainer.tokenization.handle import TokenizerHandle
from model_trainer.tokenization.transformers_files import (
    SPECIAL_TOKENS_MAP_JSON,
    TOKENIZER_CONFIG_JSON,
    TOKENIZER_JSON,
    read_special_tokens,
    write_special_token_files,
)
from model_trainer.training.config import (
    Architecture,
    CompileMode,
    Device,
    FineTuneMethod,
    Precision,
    TrainingSpec,
)
from model_trainer.training.evaluate import EvalMetrics
from model_trainer.training.execution import Execution
from model_trainer.training.hardware import CpuInfo, GpuInfo

# Copied from the tokenizer folder when present (`load_tokenizer` insists on tokenizer.json
# and on the special tokens' roles, from one of the other two).
# A base model's chat template may be a file of its own (transformers 4.43 and later).
TOKENIZER_FILES = (
    TOKENIZER_JSON,
    TOKENIZER_CONFIG_JSON,
    SPECIAL_TOKENS_MAP_JSON,
    "chat_template.jinja",
)


class DataSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus_sha256: str
    tokenizer_id: str
    vocab_size: int
    token_dtype: str
    tokens_from_cache: bool
    train_tokens: int
    validation_tokens: int
    train_chars: int
    validation_chars: int
    test_tokens: int
    test_chars: int


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokenize_seconds: float
    # The budget spent, summed over sessions (a resumed run has several): training and setup.
    train_seconds: float
    setup_seconds: float  # of train_seconds: precision probes and compilation
    session_seconds: float  # this session's training loop
    eval_seconds: float
    total_seconds: float  # this session, tokenization to artifact


class TrainingSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int
    tokens_seen: int
    epochs: float
    resumed_at_steps: list[int]
    stopped_early: bool  # early_stopping_patience ended the run before its budget
    stopped_early_at_step: int | None
    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    tokens_per_sec: float | None  # mean over the run's metrics rows


class ArtifactWeights(BaseModel):
    """Which weights the artifact holds: the run's best by validation loss, or its last."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["best", "last"]
    step: int
    val_loss: float | None


class FineTuning(BaseModel):
    """What a run with a base model started from and trained (see training/finetune.py)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_model: str  # the request's: a Data Bank file id or hf:<org>/<name>[@<revision>]
    model_type: str  # config.json's, e.g. llama
    architecture: str  # e.g. LlamaForCausalLM
    method: FineTuneMethod
    trainable_params: int
    artifact_format: Literal["merged", "adapter"]
    # The base model on the same validation split, before training: the "before" of
    # before/after (the manifest's `eval` is the after).
    base_eval: EvalMetrics | None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = 1
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    config: TrainingSpec
    architecture: Architecture | None  # our presets' shape; None for a base model's
    fine_tuning: FineTuning | None
    n_params: int
    flops_per_token: int
    seed: int
    precision_requested: Precision
    precision: Precision
    compile_requested: CompileMode
    compiled: bool
    # Why each was chosen ("probe: bf16 41.2 ms/step vs ...", "auto: not worth it, saving
    # ~4 s of a 30 s run ..."), with the timings behind it.
    execution: Execution
    device_requested: Device
    device: Literal["cpu", "cuda"]  # where this session trained
    threads: int
    cpu: CpuInfo
    gpu: GpuInfo | None  # the GPU it trained on, if any
    versions: dict[str, str]
    data: DataSummary
    timings: Timings
    training: TrainingSummary
    weights: ArtifactWeights
    initialised_from: str | None  # the checkpoint a fresh run started from, if any
    eval: EvalMetrics | None  # of `weights`, on the whole validation split


def staging_dir(artifact_dir: Path) -> Path:
    """A clean folder to assemble the artifact in; `publish` renames it into place."""
    staging = artifact_dir.with_name(artifact_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def save_model(model: PreTrainedModel, tokenizer: TokenizerHandle, folder: Path) -> None:
    model.save_pretrained(folder)  # safetensors (the only format transformers 5 writes)
    save_tokenizer_files(tokenizer, folder)


def save_tokenizer_files(tokenizer: TokenizerHandle, folder: Path) -> None:
    """The tokenizer's files beside the weights. Roles the handle filled in (a base model's
    pad, the end-of-text token) are written down, so that every reader agrees with training."""
    for name in TOKENIZER_FILES:
        source = tokenizer.folder / name
        if source.is_file():
            shutil.copyfile(source, folder / name)
    if not (folder / TOKENIZER_CONFIG_JSON).is_file():
        # Without it AutoTokenizer would guess a class from config.json (GPT2Tokenizer) and
        # its GPT-2 defaults; the roles come from special_tokens_map.json, which the loader
        # found when this one is missing.
        write_special_token_files(folder, read_special_tokens(tokenizer.folder))
    roles = read_special_tokens(folder)
    if "pad_token" not in roles:
        config_path = folder / TOKENIZER_CONFIG_JSON
        config: dict[str, object] = json.loads(config_path.read_text(encoding="utf-8"))
        config["pad_token"] = tokenizer.decode([tokenizer.pad_id])
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")


def publish(staging: Path, artifact_dir: Path) -> Path:
    shutil.rmtree(artifact_dir, ignore_errors=True)
    staging.rename(artifact_dir)
    return artifact_dir
