"""Build a fresh (randomly initialised) causal language model from a training config.

Each model family maps to a builder that turns a `ModelSpec` into a `transformers` model,
so the artifact is a stock checkpoint that `AutoModelForCausalLM.from_pretrained` loads.
Adding LLaMA or Qwen means adding an enum value in `config.ModelFamily` and a builder here
(e.g. `LlamaForCausalLM(LlamaConfig(hidden_size=..., intermediate_size=...))`); the training
loop only sees a `PreTrainedModel` that maps input ids to logits.

Nothing is ever downloaded: we build from a config object, never from a hub name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from model_trainer.training.config import ModelFamily, ModelTrainConfig

# PyTorch's fused scaled-dot-product attention: on this 2-core CPU it was measurably faster
# than the eager (matmul + softmax) path, the more so at longer contexts
# (docs/benchmarks.md, "attention").
ATTENTION = "sdpa"


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
        # GPT-2's defaults point at id 50256; ours come from the tokenizer we trained.
        bos_token_id=spec.eos_id,
        eos_token_id=spec.eos_id,
        pad_token_id=spec.pad_id,
        # Input embedding and output head share one matrix (GPT-2, nanoGPT): fewer
        # parameters to learn in a short budget.
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    model.set_attn_implementation(ATTENTION)
    return model


MODEL_BUILDERS: dict[ModelFamily, Callable[[ModelSpec], PreTrainedModel]] = {
    ModelFamily.GPT2: _build_gpt2,
}


def model_spec(
    config: ModelTrainConfig, vocab_size: int, eos_id: int | None, pad_id: int | None
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
    )


def build_model(spec: ModelSpec, family: ModelFamily, seed: int) -> PreTrainedModel:
    """A new model with weights drawn from `seed` (the same seed gives the same weights)."""
    torch.manual_seed(seed)
    return MODEL_BUILDERS[family](spec)


def count_params(model: torch.nn.Module) -> int:
    # `parameters()` yields a tied matrix once, so the shared embedding/head counts once.
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: PreTrainedModel, spec: ModelSpec) -> int:
    """Training FLOPs per token: 6 N for the weights plus attention (PaLM appendix B).

    N leaves out the position table (a lookup, no arithmetic); the tied token embedding
    counts because it is also the output head, a real matrix multiply.
    """
    n = count_params(model) - spec.max_seq_len * spec.n_embd
    return 6 * n + 12 * spec.n_layer * spec.n_embd * spec.max_seq_len
