"""How much memory a training run needs, estimated from its config before it is queued.

Pure arithmetic on `TrainingSpec` and the tokenizer's vocabulary size: the API imports
this module, so it must never import torch (nor anything that does).

The model is what `training.model` builds for the family: V = vocab_size, T = max_seq_len
(GPT-2's position table and the context), d = n_embd, L = n_layer, H = n_head, B =
batch_size, I = the MLP's hidden width (4 d for gpt2, SwiGLU's 8/3 d rounded to 64 for
llama and qwen3), kv = n_kv_head x head_dim, and the output head tied to the token embedding
unless `tie_word_embeddings` is false (then + V d).

Parameters (exact; `tests/test_admission.py` checks them against built models):

    gpt2:  P = V d + T d            token and position embeddings (the head reuses V d)
             + L (12 d² + 13 d)     per block: ln_1 (2d), attention c_attn (3d² + 3d) and
                                    c_proj (d² + d), ln_2 (2d), MLP c_fc (4d² + 4d) and
                                    c_proj (4d² + d)
             + 2 d                  final layer norm
    llama: P = V d                  token embedding (no position table: rotary)
             + L (2 d² + 2 d kv     q and o (d x d), k and v (d x kv); no biases
                  + 3 d I + 2 d)    SwiGLU gate, up and down; two RMSNorm weights
             + d                    final RMSNorm
    qwen3: llama's + L 2 head_dim   the RMSNorms of each head's queries and keys

Bytes at the peak of one training step, everything in fp32 (4 bytes a number):

    state       16 P - 4 M          weights, gradients, AdamW's two moments (4 x 4 bytes);
                                    M = the parameters Muon updates under optimizer muon
                                    (the blocks' matrices), which keep one momentum
                                    buffer instead of two moments
    activations 4 B T (L (e d + m I + H a) + 4 d)
                                    what autograd keeps per token for the backward pass:
                                    gpt2 e = 18, m = 2: about 26 d numbers per block
                                    (layer-norm inputs and outputs, q/k/v, attention
                                    output, the GELU's 4d-wide input and output: PyTorch's
                                    one tanh-GELU kernel keeps no intermediates); llama e = 22,
                                    qwen3 e = 28, m = 4 (SwiGLU's gate, up, silu and
                                    product; RMSNorm op by op, rotary copies of q and k,
                                    qwen3's q/k norms), measured on 3 shapes each at
                                    0.96x to 1.1x of the real growth; 4 d outside the
                                    blocks (embedding sum, final norm); a = 1 (one logsumexp
                                    per head and position) when dropout is 0, because
                                    PyTorch's CPU scaled-dot-product attention then uses its
                                    flash kernel and never stores the T x T scores; with
                                    dropout > 0 it falls back to the math path, which keeps
                                    about 4 copies of them (scores, softmax, dropout mask
                                    and output): a = 4 T
    logits      4 x 4 B T V         logits, cross-entropy's log-softmax, and their two
                                    gradients
    windows     8 (eval_batches + 2) B (T + 1)
                                    the fixed validation windows (int64, kept for the whole
                                    run) and one training batch of inputs and targets
    runtime     1 GiB               the worker's parent process and the job's own process,
                                    each with Python, PyTorch and transformers loaded
                                    (about 0.36 GiB measured), plus allocator slack

Assumptions: the factors 34 and 4 come from measuring the peak RSS growth of real steps
(fp32, 2-core x86 CPU, torch 2.13, transformers 5.23): over 15 shapes (d 128 to 1024, T 256
to 2048, V 256 and 32000, dropout 0 and 0.1) the estimate without runtime was 0.76x to 1.14x
of the measured growth. bf16 autocast (`precision` bf16, or auto where its probe picks
bf16) keeps activations in 2 bytes and measured about 0.6x of the fp32 peak, so fp32 is
the upper bound used for admission. Not counted: the token stream
(memory-mapped, its pages reclaimable), the transient copy of a checkpoint while it is
loaded (smaller than the activations of a step it precedes), and evaluation forward passes
(no autograd state: less than a training step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from model_trainer.pretrained import ModelFolder
from model_trainer.training.config import (
    ROTARY_FAMILIES,
    Architecture,
    FineTuneMethod,
    LoraSpec,
    ModelFamily,
    Optimizer,
    TrainingSpec,
)

GIB = 1024**3
FLOAT_BYTES = 4  # fp32
INDEX_BYTES = 8  # int64 token ids in batches and validation windows
# Weights, gradients and AdamW's exp_avg and exp_avg_sq, each fp32.
STATE_BYTES_PER_PARAMETER = 4 * FLOAT_BYTES


@dataclass(frozen=True)
class BlockActivations:
    """Numbers autograd keeps per token per block: per_embd x n_embd + per_mlp x the MLP's
    hidden width (measured, see above)."""

    per_embd: int
    per_mlp: int


# GPT-2: 26 d with its 4 d-wide MLP (18 d outside the MLP, 2 copies of its hidden layer:
# the GELU's input and output, one kernel; measured 1.07x of the estimate's growth).
GPT2_BLOCK_ACTIVATIONS = BlockActivations(per_embd=18, per_mlp=2)
BLOCK_ACTIVATIONS = {
    ModelFamily.GPT2: GPT2_BLOCK_ACTIVATIONS,
    # SwiGLU keeps gate, up, silu(gate) and their product (4 x 8/3 d); RMSNorm computed op
    # by op and the rotary copies of q and k make the rest (measured 33-36 d in all).
    ModelFamily.LLAMA: BlockActivations(per_embd=22, per_mlp=4),
    # LLaMA's, plus the per-head RMSNorm of q and k (measured 41 d in all).
    ModelFamily.QWEN3: BlockActivations(per_embd=28, per_mlp=4),
}
# Per token outside the blocks: embedding sum, final layer norm input and output.
OUTSIDE_ACTIVATIONS_PER_EMBD = 4
# Copies of the B x H x T x T attention scores kept per block when dropout > 0.
ATTENTION_SCORE_COPIES = 4
# Logits, log-softmax, and the gradients of both.
LOGITS_COPIES = 4
RUNTIME_BYTES = 1 * GIB
SHOWN = GIB // 100  # `describe` leaves out parts that would print as 0.00 GiB

CGROUP_V2_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
MEMINFO = Path("/proc/meminfo")


class MemoryEstimate(BaseModel):
    """Peak bytes of one training step, by what holds them (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: int
    state_bytes: int  # weights, gradients, AdamW moments and Muon momentum
    activation_bytes: int  # autograd's saved tensors, attention scores included
    attention_score_bytes: int  # the part of activation_bytes that is T x T scores
    logits_bytes: int
    window_bytes: int  # validation windows and one batch of token ids
    runtime_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.state_bytes
            + self.activation_bytes
            + self.logits_bytes
            + self.window_bytes
            + self.runtime_bytes
        )

    def describe(self) -> str:
        """`45.2 GiB (weights, gradients and optimizer state 12.1 GiB for 805.3M params; ...)`"""
        scores = self.attention_score_bytes
        parts = [
            f"weights, gradients and optimizer state {gib(self.state_bytes)} for "
            f"{self.parameters / 1e6:.1f}M parameters",
            f"activations of one step {gib(self.activation_bytes)}"
            + (f", of which attention scores {gib(scores)}" if scores >= SHOWN else ""),
            f"logits {gib(self.logits_bytes)}" if self.logits_bytes >= SHOWN else "",
            f"token windows {gib(self.window_bytes)}" if self.window_bytes >= SHOWN else "",
            f"runtime {gib(self.runtime_bytes)}",
        ]
        return f"{gib(self.total_bytes)} ({'; '.join(p for p in parts if p)})"


def gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def gpt2_parameters(
    vocab_size: int, n_layer: int, n_embd: int, max_seq_len: int, tied: bool = True
) -> int:
    """Parameters of the GPT-2 that `training.model` builds (exact)."""
    d = n_embd
    block = 12 * d * d + 13 * d
    head = 0 if tied else vocab_size * d
    return vocab_size * d + head + max_seq_len * d + n_layer * block + 2 * d


def rotary_parameters(family: ModelFamily, vocab_size: int, arch: Architecture) -> int:
    """Parameters of the LLaMA or Qwen3 that `training.model` builds (exact): no biases,
    no position table, RMSNorm weights only, q and k norms of head_dim in qwen3."""
    d, kv = arch.n_embd, arch.n_kv_head * arch.head_dim
    attention = 2 * d * d + 2 * d * kv  # q and o are d x d; k and v are d x kv
    mlp = 3 * d * arch.intermediate_size  # gate, up and down projections
    norms = 2 * d + (2 * arch.head_dim if family is ModelFamily.QWEN3 else 0)
    head = 0 if arch.tie_word_embeddings else vocab_size * d
    return vocab_size * d + head + arch.n_layer * (attention + mlp + norms) + d


def model_parameters(config: TrainingSpec, vocab_size: int) -> int:
    """Parameters of the model `config` describes (exact, any family)."""
    arch = config.resolved()
    if config.model_family in ROTARY_FAMILIES:
        return rotary_parameters(config.model_family, vocab_size, arch)
    return gpt2_parameters(
        vocab_size, arch.n_layer, arch.n_embd, config.max_seq_len, arch.tie_word_embeddings
    )


def muon_parameters(config: TrainingSpec) -> int:
    """Parameters Muon updates under optimizer muon: the blocks' weight matrices."""
    arch = config.resolved()
    d, layers = arch.n_embd, arch.n_layer
    if config.model_family in ROTARY_FAMILIES:
        kv = arch.n_kv_head * arch.head_dim
        return layers * (2 * d * d + 2 * d * kv + 3 * d * arch.intermediate_size)
    return layers * 12 * d * d


def estimate_run_memory(config: TrainingSpec, vocab_size: int) -> MemoryEstimate:
    """Peak memory of a training step of `config` with a `vocab_size`-token vocabulary."""
    arch = config.resolved()
    d, layers, heads = arch.n_embd, arch.n_layer, arch.n_head
    context, batch = config.max_seq_len, config.batch_size
    tokens = batch * context
    parameters = model_parameters(config, vocab_size)
    # Muon keeps one momentum buffer where AdamW keeps two moments.
    on_muon = muon_parameters(config) if config.optimizer is Optimizer.MUON else 0
    state = STATE_BYTES_PER_PARAMETER * parameters - FLOAT_BYTES * on_muon
    score_copies = ATTENTION_SCORE_COPIES * context if config.dropout > 0 else 0
    # One logsumexp per head and position (flash kernel), or the kept copies of the scores.
    attention = heads * (score_copies or 1)
    block = BLOCK_ACTIVATIONS.get(config.model_family, GPT2_BLOCK_ACTIVATIONS)
    per_token = layers * (block.per_embd * d + block.per_mlp * arch.intermediate_size)
    per_token += layers * attention + OUTSIDE_ACTIVATIONS_PER_EMBD * d
    return MemoryEstimate(
        parameters=parameters,
        state_bytes=state,
        activation_bytes=FLOAT_BYTES * tokens * per_token,
        attention_score_bytes=FLOAT_BYTES * tokens * layers * heads * score_copies,
        logits_bytes=LOGITS_COPIES * FLOAT_BYTES * tokens * vocab_size,
        window_bytes=INDEX_BYTES * (config.eval_batches + 2) * batch * (context + 1),
        runtime_bytes=RUNTIME_BYTES,
    )


# LoRA's adapters per layer, in units of r: about (d + d) for each attention projection
# (q, k, v, o: 8 d) and (d + I) for each MLP one (gate, up, down: 3 d + 3 I).
LORA_PER_RANK_EMBD, LORA_PER_RANK_MLP = 11, 3


def estimate_fine_tune_memory(config: TrainingSpec, base: ModelFolder) -> MemoryEstimate:
    """Peak memory of a training step of `config` on the base model `base` describes (its
    parameters counted from its safetensors headers, its shape from config.json).

    Full fine-tuning keeps what a run from scratch keeps for every weight (16 bytes: weight,
    gradient, AdamW's two moments); LoRA keeps the frozen weights (4 bytes) and the full
    state of its adapters only. Activations and logits as for our families (the largest
    per-block factor, qwen3's: base models vary); unknown sizes count as 0 (a lower bound).
    """
    d = base.hidden_size or 0
    layers = base.num_layers or 0
    mlp = base.intermediate_size or 4 * d
    vocab = base.vocab_size or 0
    tokens = config.batch_size * config.max_seq_len
    if config.method is FineTuneMethod.LORA:
        rank = (config.lora or LoraSpec()).r
        adapters = layers * rank * (LORA_PER_RANK_EMBD * d + LORA_PER_RANK_MLP * mlp)
        state = FLOAT_BYTES * base.n_params + STATE_BYTES_PER_PARAMETER * adapters
    else:
        state = STATE_BYTES_PER_PARAMETER * base.n_params
    block = BLOCK_ACTIVATIONS[ModelFamily.QWEN3]
    per_token = layers * (block.per_embd * d + block.per_mlp * mlp + 1)
    per_token += OUTSIDE_ACTIVATIONS_PER_EMBD * d
    return MemoryEstimate(
        parameters=base.n_params,
        state_bytes=state,
        activation_bytes=FLOAT_BYTES * tokens * per_token,
        attention_score_bytes=0,
        logits_bytes=LOGITS_COPIES * FLOAT_BYTES * tokens * vocab,
        window_bytes=INDEX_BYTES
        * (config.eval_batches + 2)
        * config.batch_size
        * (config.max_seq_len + 1),
        runtime_bytes=RUNTIME_BYTES,
    )


def machine_memory_bytes(
    cgroup_limits: tuple[Path, ...] = (CGROUP_V2_MEMORY_MAX, CGROUP_V1_MEMORY_LIMIT),
    meminfo: Path = MEMINFO,
) -> int | None:
    """The memory this process's machine or container may use: the smallest of the cgroup
    memory limits (v2 `memory.max`, v1 `memory.limit_in_bytes`; "max" or a huge v1 value
    means none) and the machine's MemTotal. None when none of them can be read."""
    found = [v for v in (_cgroup_limit(p) for p in cgroup_limits) if v is not None]
    total = _mem_total(meminfo)
    if total is not None:
        found.append(total)
    return min(found) if found else None


def _cgroup_limit(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    # v2 says "max" for no limit; v1 says a page-rounded LONG_MAX, larger than any MemTotal.
    return int(text) if text.isdigit() and int(text) > 0 else None


def _mem_total(path: Path) -> int | None:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, _, value = line.partition(":")
        fields = value.split()
        if name == "MemTotal" and fields and fields[0].isdigit():
            unit = fields[1].lower() if len(fields) > 1 else "b"
            return int(fields[0]) * (1024 if unit == "kb" else 1)
    return None
