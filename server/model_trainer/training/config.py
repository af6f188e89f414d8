"""What a training run trains and how: `TrainingSpec` (the API's request, api/schemas.py
`TrainRequest`, adds where the data comes from and how the run is routed).

Everything the training loop needs that is not the data itself lives here, validated up
front so that a spec that cannot work (a width not divisible by the head count, a context of 0, two
budgets at once, a model far larger than any CPU worker holds...) is refused at submit time
with a message that names the field. Whether a config fits a worker's memory is checked at
submit too (training/memory.py).

The defaults are the demo's: they are the settings that gave the best validation bits per
character on tinyshakespeare at a fixed time budget on a 2-core CPU (a qwen3 `tiny` trained
with Muon; see docs/benchmarks.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ModelFamily(StrEnum):
    """Architectures the trainer can build (see `model.MODEL_BUILDERS`)."""

    GPT2 = "gpt2"  # learned positions, LayerNorm with biases, GELU MLP 4x wide
    LLAMA = "llama"  # rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention option
    QWEN3 = "qwen3"  # llama's block plus an RMSNorm on each head's queries and keys


# Families with rotary positions, RMSNorm and a SwiGLU MLP (transformers' LLaMA lineage).
ROTARY_FAMILIES = frozenset({ModelFamily.LLAMA, ModelFamily.QWEN3})


class Optimizer(StrEnum):
    ADAMW = "adamw"  # AdamW for every parameter
    MUON = "muon"  # Muon for the blocks' weight matrices, AdamW for the rest (loop.py)


class ModelSize(StrEnum):
    TINY = "tiny"  # nanoGPT's CPU recipe
    MINI = "mini"  # nanoGPT's "baby GPT" for shakespeare_char
    SMALL = "small"  # GPT-2 small (124M with GPT-2's vocabulary)


class LrSchedule(StrEnum):
    COSINE = "cosine"  # linear warmup, then cosine decay to the floor
    LINEAR = "linear"  # linear warmup, then linear decay to the floor
    CONSTANT = "constant"  # linear warmup, then flat


class Precision(StrEnum):
    AUTO = "auto"  # measured at run start: see training/precision.py
    FP32 = "fp32"
    BF16 = "bf16"


class CompileMode(StrEnum):
    """Whether the training step runs through `torch.compile` (see training/execution.py)."""

    AUTO = "auto"  # when the expected saving over the run's budget exceeds the compile time
    ON = "on"
    OFF = "off"


class Device(StrEnum):
    """Where a run trains (see DESIGN.md, "Devices and precision")."""

    AUTO = "auto"  # whatever the worker that takes it has; the ordinary queue
    CPU = "cpu"  # the CPU, even on a GPU worker; the ordinary queue
    CUDA = "cuda"  # an NVIDIA GPU: the GPU queue, which only GPU workers serve


class FineTuneMethod(StrEnum):
    """How a run with a `base_model` trains it (see training/finetune.py)."""

    FULL = "full"  # every weight of the base model
    LORA = "lora"  # low-rank adapters beside the frozen base weights (peft)


# A base model: a Data Bank file id (a tar of a transformers model folder), or a hub model
# `hf:<org>/<name>[@<revision>]`.
BASE_MODEL_PATTERN = (
    r"^([0-9a-f]{64}"
    r"|hf:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}(@[A-Za-z0-9._/-]{1,100})?)$"
)

# What a fine-tuning run starts from where the request gives nothing: AdamW (Muon is built
# for training from scratch), no weight decay, and the usual peak rates of full fine-tuning
# and of LoRA (peft's and LLaMA-Factory's examples: 1e-5 to 5e-5 full, 1e-4 to 3e-4 LoRA).
FINE_TUNE_DEFAULTS: dict[FineTuneMethod, dict[str, object]] = {
    FineTuneMethod.FULL: {"optimizer": "adamw", "learning_rate": 3e-5, "weight_decay": 0.0},
    FineTuneMethod.LORA: {"optimizer": "adamw", "learning_rate": 2e-4, "weight_decay": 0.0},
}


class LoraSpec(BaseModel):
    """LoRA's settings (peft's `LoraConfig`): rank, scale (alpha / r), dropout on the adapter's
    input, and the modules that get adapters (default: the architecture's attention and MLP
    projections, training/finetune.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=8, ge=1, le=512)
    alpha: int = Field(default=16, ge=1, le=4096)
    # 0 by default (peft's and LLaMA-Factory's): above 0 each adapter keeps its own dropped
    # copy of its input for the backward pass; 0.05 cost a 100M-parameter Llama a third of
    # its tokens/s and 0.67 GiB on a 2-core CPU (docs/benchmarks.md, "Fine-tuning").
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,64}$")]] | None = Field(
        default=None, min_length=1, max_length=32
    )


class Shape(BaseModel):
    """A preset's depth, heads and width; the same for every family (see `Architecture`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layer: int
    n_head: int
    n_embd: int


# One table for all families: a LLaMA or Qwen3 block with a SwiGLU MLP of 8/3 n_embd and as
# many key/value heads as query heads has GPT-2's 12 n_embd^2 weights, so at each size the
# three families have about the same parameter count (docs/benchmarks.md, research log).
PRESETS: dict[ModelSize, Shape] = {
    ModelSize.TINY: Shape(n_layer=4, n_head=4, n_embd=128),
    ModelSize.MINI: Shape(n_layer=6, n_head=6, n_embd=384),
    ModelSize.SMALL: Shape(n_layer=12, n_head=12, n_embd=768),
}

# SwiGLU's hidden width is rounded to a multiple of this (whole SIMD tiles for the matmuls).
SWIGLU_MULTIPLE = 64


def mlp_width(family: ModelFamily, n_embd: int) -> int:
    """The MLP's hidden width: GPT-2's 4 n_embd, or SwiGLU's 8/3 n_embd (three matrices of
    that width cost what GPT-2's two of 4 n_embd do), to the nearest multiple of 64."""
    if family not in ROTARY_FAMILIES:
        return 4 * n_embd
    return max(SWIGLU_MULTIPLE, round(8 * n_embd / 3 / SWIGLU_MULTIPLE) * SWIGLU_MULTIPLE)


class Architecture(BaseModel):
    """The effective model shape: a preset with the request's overrides and the family's
    rules applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layer: int
    n_head: int
    n_embd: int
    n_kv_head: int  # key/value heads; n_head unless grouped-query attention
    intermediate_size: int  # the MLP's hidden width
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Without any of the three budgets, a run trains for this long (the demo's budget).
DEFAULT_MAX_TRAIN_SECONDS = 95.0

# Upper bounds, generous for real use on CPUs; past them no worker could hold the model, or
# the number means nothing. Within them, a run whose memory estimate exceeds what a worker
# may use is refused at submit (training/memory.py, api/services.py).
MAX_N_LAYER = 48  # GPT-2 XL's depth
MAX_N_HEAD = 128
MAX_N_EMBD = 4096  # 2.5x GPT-2 XL's; one block is then 201M parameters, 3.2 GB with AdamW
MAX_SEQ_LEN = 8192  # 8x GPT-2's context
MAX_BATCH_SIZE = 1024  # windows per step (GPT-2 trained with 512; the demo uses 12)
MAX_EVAL_BATCHES = 1000  # the validation windows stay in memory for the whole run
MAX_INTERVAL_STEPS = 1_000_000  # eval_interval, checkpoint_interval, warmup_steps
# AdamW moves each weight by about the learning rate per step and weights start near 0.02:
# nothing trains above ~1. Up to 100 is accepted, and fails fast as a diverged run (a user
# error that names learning_rate); more is a typo.
MAX_LEARNING_RATE = 100.0
# Muon's learning rate for the hidden matrices (torch's Muon, adjust_lr_fn "original": the
# rate is scaled by sqrt(max(1, rows / columns))): Keller Jordan's value for GPT-2-sized
# models, also modded-nanogpt's (docs/benchmarks.md, research log).
DEFAULT_MUON_LEARNING_RATE = 0.02
MAX_GRAD_CLIP = 1000.0


class Budget(BaseModel):
    """How long to train: exactly one of epochs, optimizer steps or seconds of training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["epochs", "steps", "seconds"]
    value: float


class TrainingSpec(BaseModel):
    """What a run trains and how: everything the training loop needs, and what a checkpoint
    must match to be resumed (`identity`). Where the data comes from, who is told and which
    worker runs it are the job's (jobs/payloads.py `TrainJob`); the HTTP body is
    `TrainRequest`."""

    # `model_` is pydantic's protected prefix; our field names are the API's, so lift it.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # The defaults (qwen3, muon, the rest below) gave the best validation bits per character
    # in the family x optimizer grid at a 76 s budget (docs/benchmarks.md, "Families and
    # optimizers").
    model_family: ModelFamily = ModelFamily.QWEN3
    model_size: ModelSize = ModelSize.TINY
    n_layer: int | None = Field(
        default=None, ge=1, le=MAX_N_LAYER, description="overrides the preset"
    )
    n_head: int | None = Field(
        default=None, ge=1, le=MAX_N_HEAD, description="overrides the preset"
    )
    n_embd: int | None = Field(
        default=None, ge=8, le=MAX_N_EMBD, description="overrides the preset"
    )
    n_kv_head: int | None = Field(
        default=None,
        ge=1,
        le=MAX_N_HEAD,
        description="key/value heads (grouped-query attention; llama and qwen3 only); must "
        "divide n_head; default n_head",
    )
    tie_word_embeddings: bool = Field(
        default=True, description="the output head shares the token embedding's matrix"
    )
    max_seq_len: int = Field(
        default=64, ge=2, le=MAX_SEQ_LEN, description="context length in tokens"
    )
    batch_size: int = Field(
        default=12, ge=1, le=MAX_BATCH_SIZE, description="windows per optimizer step"
    )

    num_epochs: float | None = Field(default=None, gt=0, le=10_000, allow_inf_nan=False)
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    max_train_seconds: float | None = Field(
        default=None, gt=0, le=30 * 24 * 3600, allow_inf_nan=False
    )

    optimizer: Optimizer = Field(
        default=Optimizer.MUON,
        description="muon: Muon for the blocks' weight matrices at muon_learning_rate, AdamW "
        "at learning_rate for embeddings, head, norms and biases; or adamw for everything",
    )
    learning_rate: float = Field(
        default=2e-3,
        gt=0,
        le=MAX_LEARNING_RATE,
        allow_inf_nan=False,
        description="AdamW's peak learning rate (with muon: of the parameters AdamW updates)",
    )
    muon_learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=MAX_LEARNING_RATE,
        allow_inf_nan=False,
        description=f"Muon's peak learning rate (optimizer muon only); default "
        f"{DEFAULT_MUON_LEARNING_RATE}",
    )
    warmup_steps: int = Field(default=50, ge=0, le=MAX_INTERVAL_STEPS)
    lr_schedule: LrSchedule = LrSchedule.COSINE
    min_lr_ratio: float = Field(
        default=0.1, ge=0, le=1, description="floor of the decay, as a fraction of learning_rate"
    )
    weight_decay: float = Field(default=0.1, ge=0, le=10, allow_inf_nan=False)
    grad_clip: float = Field(
        default=1.0, ge=0, le=MAX_GRAD_CLIP, allow_inf_nan=False, description="0 disables"
    )
    dropout: float = Field(default=0.0, ge=0, lt=1)

    eval_interval: int = Field(
        default=250, ge=1, le=MAX_INTERVAL_STEPS, description="steps between validations"
    )
    eval_at: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=list,
        max_length=16,
        description="validate also at these points of the budget (steps, or seconds of "
        "training for a time budget): a sweep's rungs",
    )
    eval_batches: int = Field(
        default=8, ge=1, le=MAX_EVAL_BATCHES, description="batches per validation"
    )
    checkpoint_interval: int = Field(
        default=500, ge=1, le=MAX_INTERVAL_STEPS, description="steps between checkpoints"
    )
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="end the run after this many validations without a new best loss",
    )
    artifact_weights: Literal["best", "last"] = Field(
        default="best",
        description="weights the artifact ships: the best by validation loss, or the last",
    )
    precision: Precision = Precision.AUTO
    compile: CompileMode = Field(
        default=CompileMode.AUTO,
        description="compile the training step (torch.compile, inductor): auto when the "
        "expected saving over the run's budget exceeds the compile time",
    )
    seed: int = Field(default=1337, ge=0, le=2**32 - 1)
    base_model: str | None = Field(
        default=None,
        pattern=BASE_MODEL_PATTERN,
        description="fine-tune this model instead of training one from scratch: the Data "
        "Bank file id of a tar of a transformers model folder (POST /models), or "
        "hf:<org>/<name>[@<revision>]; its own tokenizer is used, and the architecture "
        "fields (model_family, model_size, n_layer ...) do not apply",
    )
    method: FineTuneMethod = Field(
        default=FineTuneMethod.FULL,
        description="with base_model: full (every weight) or lora (adapters only)",
    )
    lora: LoraSpec | None = Field(default=None, description="LoRA's settings (method lora)")
    artifact_format: Literal["merged", "adapter"] = Field(
        default="merged",
        description="method lora: the artifact is the base model with the adapter merged "
        "in (loads with AutoModelForCausalLM), or the adapter alone",
    )
    loss_on: Literal["assistant", "all"] = Field(
        default="assistant",
        description="a chat corpus (corpus_format chat): train on the assistant's tokens "
        "only, or on every token of the rendered conversations",
    )
    holdout_fraction: float = Field(
        default=0.1,
        ge=0.001,
        le=0.5,
        description="Tail of the token stream kept out of training: its first half is the "
        "validation split, its second half the test split (see training.data.Holdout).",
    )

    @model_validator(mode="before")
    @classmethod
    def _fine_tune_defaults(cls, data: object) -> object:
        """A run with a base model starts from fine-tuning's defaults (`FINE_TUNE_DEFAULTS`)
        for what the request leaves out; they are then its values, like any other."""
        if not isinstance(data, dict) or data.get("base_model") is None:
            return data
        try:
            method = FineTuneMethod(data.get("method", FineTuneMethod.FULL))
        except ValueError:
            return data  # the field's own validation says what is wrong
        defaults = FINE_TUNE_DEFAULTS[method]
        filled = {k: v for k, v in defaults.items() if k not in data}
        if method is FineTuneMethod.LORA and data.get("lora") is None:
            filled["lora"] = {}
        return {**data, **filled}

    @field_validator("n_kv_head")
    @classmethod
    def _check_kv_heads(cls, value: int | None, info: ValidationInfo) -> int | None:
        family = info.data.get("model_family")
        if value is None or not isinstance(family, ModelFamily):
            return value
        if family not in ROTARY_FAMILIES:
            raise ValueError(
                f"n_kv_head (grouped-query attention) applies to model_family llama and "
                f"qwen3; {family.value} has one key/value head per query head"
            )
        size, n_head = info.data.get("model_size"), info.data.get("n_head")
        if not isinstance(n_head, int) and isinstance(size, ModelSize):
            n_head = PRESETS[size].n_head
        if isinstance(n_head, int) and n_head % value != 0:
            raise ValueError(
                f"n_kv_head ({value}) must divide n_head ({n_head}): each key/value head "
                f"serves the same number of query heads"
            )
        return value

    @field_validator("muon_learning_rate")
    @classmethod
    def _check_muon_rate(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("optimizer") is not Optimizer.MUON:
            raise ValueError(
                "muon_learning_rate applies to optimizer muon only; with adamw every "
                "parameter follows learning_rate"
            )
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> Self:
        budgets = [
            name
            for name in ("num_epochs", "max_steps", "max_train_seconds")
            if getattr(self, name) is not None
        ]
        if len(budgets) > 1:
            raise ValueError(
                f"give at most one of num_epochs, max_steps, max_train_seconds "
                f"(got {', '.join(budgets)})"
            )
        if self.base_model is not None:
            return self._check_fine_tuning()
        for name, value, default in (
            ("method", self.method, FineTuneMethod.FULL),
            ("lora", self.lora, None),
            ("artifact_format", self.artifact_format, "merged"),
        ):
            if value != default:
                raise ValueError(f"{name} applies to fine-tuning: give base_model as well")
        arch = self.resolved()
        if arch.n_embd % arch.n_head != 0:
            raise ValueError(
                f"n_embd ({arch.n_embd}) must be divisible by n_head ({arch.n_head}); "
                f"model_size {self.model_size.value!r} gives "
                f"{PRESETS[self.model_size].n_embd} wide with {PRESETS[self.model_size].n_head} "
                f"heads before overrides"
            )
        if self.model_family in ROTARY_FAMILIES and arch.head_dim % 2 != 0:
            # Rotary embeddings rotate pairs of each head's dimensions.
            raise ValueError(
                f"n_embd / n_head ({arch.n_embd} / {arch.n_head} = {arch.head_dim}) must be "
                f"even for model_family {self.model_family.value} (rotary positions rotate "
                f"pairs of dimensions)"
            )
        return self

    def _check_fine_tuning(self) -> Self:
        # The architecture is the base model's: a field that would size another is an error.
        given = [
            name
            for name in ("n_layer", "n_head", "n_embd", "n_kv_head")
            if getattr(self, name) is not None
        ]
        if self.model_family is not ModelFamily.QWEN3 or self.model_size is not ModelSize.TINY:
            given = ["model_family / model_size", *given]
        if given:
            raise ValueError(
                f"{', '.join(given)} do not apply with base_model: the architecture is the "
                "base model's"
            )
        if self.method is FineTuneMethod.LORA:
            if self.optimizer is Optimizer.MUON:
                raise ValueError(
                    "method lora trains its low-rank adapters with adamw, not muon (Muon "
                    "orthogonalises whole weight matrices)"
                )
        elif self.lora is not None or self.artifact_format != "merged":
            raise ValueError("lora and artifact_format apply to method lora")
        return self

    def fine_tunes(self) -> bool:
        return self.base_model is not None

    # How often a run validates and checkpoints does not change what it computes: a resumed
    # run may take other values. Nor does its budget, up to where it stops: a paused run is
    # resumed with a larger one (the learning-rate plan stretches from the resumed step).
    _NOT_IDENTITY: ClassVar[frozenset[str]] = frozenset(
        {
            "eval_interval",
            "eval_at",
            "checkpoint_interval",
            "max_steps",
            "num_epochs",
            "max_train_seconds",
        }
    )

    def identity(self) -> dict[str, object]:
        """What a checkpoint must match to be resumed by a run of this spec."""
        return self.model_dump(mode="json", exclude=set(self._NOT_IDENTITY))

    def resolved(self) -> Architecture:
        """The effective architecture: the preset, then any override, then the family's
        rules (MLP width, key/value heads)."""
        preset = PRESETS[self.model_size]
        n_head = self.n_head if self.n_head is not None else preset.n_head
        n_embd = self.n_embd if self.n_embd is not None else preset.n_embd
        return Architecture(
            n_layer=self.n_layer if self.n_layer is not None else preset.n_layer,
            n_head=n_head,
            n_embd=n_embd,
            n_kv_head=self.n_kv_head if self.n_kv_head is not None else n_head,
            intermediate_size=mlp_width(self.model_family, n_embd),
            tie_word_embeddings=self.tie_word_embeddings,
        )

    def muon_lr(self) -> float:
        """Muon's peak learning rate (used only with optimizer muon)."""
        if self.muon_learning_rate is not None:
            return self.muon_learning_rate
        return DEFAULT_MUON_LEARNING_RATE

    def budget(self) -> Budget:
        if self.num_epochs is not None:
            return Budget(kind="epochs", value=self.num_epochs)
        if self.max_steps is not None:
            return Budget(kind="steps", value=self.max_steps)
        seconds = self.max_train_seconds
        return Budget(kind="seconds", value=seconds or DEFAULT_MAX_TRAIN_SECONDS)
