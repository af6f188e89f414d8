"""Build a fresh (randomly initialised) causal language model from a training config.

Each model family maps to a builder that turns a `ModelSpec` into a `transformers` model,
so the artifact is a stock checkpoint that `AutoModelForCausalLM.from_pretrained` loads:
`gpt2` (GPT2LMHeadModel), `llama` (LlamaForCausalLM: rotary positions, RMSNorm, SwiGLU,
grouped-query attention when n_kv_head < n_head) and `qwen3` (Qwen3ForCausalLM: LLaMA's
block with an RMSNorm on each head's queries and keys). The training loop only sees a
`PreTrainedModel` that maps input ids to logits.

Nothing is ever downloaded: we build from a config object, never from a hub name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from model_trainer.errors import ErrorCode, UserError
from model_trainer.pretrained import PICKLE_WEIGHT_SUFFIXES
from model_trainer.training.config import ModelFamily, TrainingSpec

# PyTorch's fused scaled-dot-product attention: on 2-core CPUs it was measurably faster than
# transformers' eager path (matmul, softmax, matmul), in eager steps and compiled ones alike,
# where inductor fuses the eager path (docs/benchmarks.md, "Attention in a compiled step").
ATTENTION = "sdpa"
# peft's adapter-only folder (a LoRA run's artifact with artifact_format adapter).
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    max_seq_len: int
    dropout: float
    eos_id: int | None
    pad_id: int | None
    n_kv_head: int
    intermediate_size: int
    tie_word_embeddings: bool


def _build_gpt2(spec: ModelSpec) -> PreTrainedModel:
    config = GPT2Config(
        vocab_size=spec.vocab_size,
        n_positions=spec.max_seq_len,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        # GPT-2's own GELU (tanh approximation) as PyTorch's one kernel: the config default,
        # "gelu_new", computes the same formula op by op, which cost 16% of an eager
        # forward and backward at `tiny` (docs/benchmarks.md, "Where a step's time goes").
        activation_function="gelu_pytorch_tanh",
        # GPT-2's defaults point at id 50256; ours come from the tokenizer we trained.
        bos_token_id=spec.eos_id,
        eos_token_id=spec.eos_id,
        pad_token_id=spec.pad_id,
        # Input embedding and output head share one matrix by default (GPT-2, nanoGPT):
        # fewer parameters to learn in a short budget.
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    model = GPT2LMHeadModel(config)
    model.set_attn_implementation(ATTENTION)
    return model


class _RotaryFields(TypedDict):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    attention_dropout: float
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    tie_word_embeddings: bool


def _rotary_fields(spec: ModelSpec) -> _RotaryFields:
    """What LlamaConfig and Qwen3Config share: the shape, no biases (both families' own
    defaults), dropout on attention only (they have no residual or embedding dropout)."""
    return _RotaryFields(
        vocab_size=spec.vocab_size,
        hidden_size=spec.n_embd,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.n_layer,
        num_attention_heads=spec.n_head,
        num_key_value_heads=spec.n_kv_head,
        # Qwen3's default is 128 whatever the width; ours is always width / heads.
        head_dim=spec.n_embd // spec.n_head,
        max_position_embeddings=spec.max_seq_len,
        attention_dropout=spec.dropout,
        bos_token_id=spec.eos_id,
        eos_token_id=spec.eos_id,
        pad_token_id=spec.pad_id,
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def _build_llama(spec: ModelSpec) -> PreTrainedModel:
    model = LlamaForCausalLM(LlamaConfig(**_rotary_fields(spec)))
    model.set_attn_implementation(ATTENTION)
    return model


def _build_qwen3(spec: ModelSpec) -> PreTrainedModel:
    model = Qwen3ForCausalLM(Qwen3Config(**_rotary_fields(spec)))
    model.set_attn_implementation(ATTENTION)
    return model


MODEL_BUILDERS: dict[ModelFamily, Callable[[ModelSpec], PreTrainedModel]] = {
    ModelFamily.GPT2: _build_gpt2,
    ModelFamily.LLAMA: _build_llama,
    ModelFamily.QWEN3: _build_qwen3,
}


def model_spec(
    config: TrainingSpec, vocab_size: int, eos_id: int | None, pad_id: int | None
) -> ModelSpec:
    arch = config.resolved()
    return ModelSpec(
        vocab_size=vocab_size,
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        n_embd=arch.n_embd,
        max_seq_len=config.max_seq_len,
        dropout=config.dropout,
        eos_id=eos_id,
        pad_id=pad_id,
        n_kv_head=arch.n_kv_head,
        intermediate_size=arch.intermediate_size,
        tie_word_embeddings=arch.tie_word_embeddings,
    )


def build_model(spec: ModelSpec, family: ModelFamily, seed: int) -> PreTrainedModel:
    """A new model with weights drawn from `seed` (the same seed gives the same weights)."""
    torch.manual_seed(seed)
    return MODEL_BUILDERS[family](spec)


def load_pretrained(folder: Path) -> PreTrainedModel:
    """The model of an artifact folder (ours: `save_pretrained`'s), from safetensors only.

    A folder with pickle-based weights anywhere, or without safetensors, is refused with a
    `UserError` naming the files, before transformers opens anything; `use_safetensors`
    then keeps transformers from falling back to any other format.
    """
    pickled = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in PICKLE_WEIGHT_SUFFIXES
    )
    if pickled:
        raise UserError(
            f"the model artifact holds pickle-based weights ({', '.join(pickled[:5])}): "
            "only safetensors weights are loaded, and this file is not opened; "
            "use an artifact that holds model.safetensors only"
        )
    if (folder / ADAPTER_CONFIG).is_file():
        # transformers would go and find the adapter's base model by the name it records.
        raise UserError(
            "the artifact holds a LoRA adapter only (artifact_format adapter): load it with "
            "peft onto its base model; runs that fine-tune with artifact_format merged have "
            "a model this service evaluates and generates with"
        )
    if not any(folder.glob("*.safetensors")):
        raise UserError("the model artifact has no safetensors weights (model.safetensors)")
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"{folder} does not hold a causal language model")
    return model


def frozen_names(model: nn.Module) -> set[str]:
    """The state-dict names of the weights that do not train (every name of a tied one)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of `model`: its whole state, or, when some weights are frozen
    (LoRA's base), all but those: they are the base model's, loaded again on resuming."""
    frozen = frozen_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a `trainable_state` back; anything else missing, or left over, is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    absent = sorted(set(missing) - frozen_names(model))
    if absent or unexpected:
        raise UserError(
            f"the checkpoint does not fit the model (missing {absent[:3]}, unexpected "
            f"{sorted(unexpected)[:3]})",
            ErrorCode.CONFIG_INVALID,
        )


def count_params(model: torch.nn.Module) -> int:
    # `parameters()` yields a tied matrix once, so the shared embedding/head counts once.
    return sum(p.numel() for p in model.parameters())


# The output projection's name in every family's *ForCausalLM / *LMHeadModel.
HEAD_MODULE = "lm_head"


def output_head(model: nn.Module) -> torch.Tensor:
    """The output head's weight (the token embedding itself when they are tied)."""
    head = dict(model.named_modules()).get(HEAD_MODULE)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no {HEAD_MODULE} projection")
    return head.weight


def lookup_tables(model: nn.Module) -> list[torch.Tensor]:
    """Embedding matrices that are only looked up (GPT-2's position table, an untied token
    embedding): no arithmetic. A token embedding tied to the output head is left out: it is
    also the head, a real matrix multiply."""
    head = output_head(model)
    return [
        m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is not head
    ]


def flops_per_token(model: PreTrainedModel, n_layer: int, width: int, context: int) -> int:
    """Training FLOPs per token: 6 N for the weights plus attention (PaLM appendix B).

    N counts the matrices that multiply (SwiGLU's three, grouped-query attention's smaller
    key and value projections, as built) and leaves out tables that are only looked up.
    Attention's scores and weighted sum cost 12 L T per query dimension (n_head x head_dim =
    n_embd in every family): grouped-query attention shares keys and values between heads
    but every query head still attends to every position.
    """
    n = count_params(model) - sum(p.numel() for p in lookup_tables(model))
    return 6 * n + 12 * n_layer * width * context
