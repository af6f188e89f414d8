"""How much memory a training run needs, estimated from its config before it is queued.

Pure arithmetic on `ModelTrainConfig` and the tokenizer's vocabulary size: the API imports
this module, so it must never import torch (nor anything that does).

The model is `transformers`' `GPT2LMHeadModel` as `training.model` builds it: V = vocab_size,
T = max_seq_len (the position table and the context), d = n_embd, L = n_layer, H = n_head,
B = batch_size, and the output head tied to the token embedding.

Parameters (exact; `tests/test_admission.py` checks it against a built model):

    P = V d + T d                   token and position embeddings (the head reuses V d)
      + L (12 d² + 13 d)            per block: ln_1 (2d), attention c_attn (3d² + 3d) and
                                    c_proj (d² + d), ln_2 (2d), MLP c_fc (4d² + 4d) and
                                    c_proj (4d² + d)
      + 2 d                         final layer norm

Bytes at the peak of one training step, everything in fp32 (4 bytes a number):

    state       16 P                weights, gradients, AdamW's two moments (4 x 4 bytes)
    activations 4 B T (L (34 d + H a) + 4 d)
                                    what autograd keeps per token for the backward pass:
                                    about 34 d numbers per block (layer-norm inputs and
                                    outputs, q/k/v, attention output, the MLP's 4d-wide
                                    input, and the several 4d-wide intermediates of GPT-2's
                                    tanh GELU, which is computed op by op), 4 d outside the
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

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from model_trainer.training.config import ModelTrainConfig

GIB = 1024**3
FLOAT_BYTES = 4  # fp32
INDEX_BYTES = 8  # int64 token ids in batches and validation windows
# Weights, gradients and AdamW's exp_avg and exp_avg_sq, each fp32.
STATE_BYTES_PER_PARAMETER = 4 * FLOAT_BYTES
# Numbers autograd keeps per token per block, as a multiple of n_embd (measured, see above).
BLOCK_ACTIVATIONS_PER_EMBD = 34
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
    state_bytes: int  # weights, gradients, AdamW moments
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
        """`45.2 GiB (weights, gradients and AdamW state 12.1 GiB for 805.3M parameters; ...)`"""
        scores = self.attention_score_bytes
        parts = [
            f"weights, gradients and AdamW state {gib(self.state_bytes)} for "
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


def gpt2_parameters(vocab_size: int, n_layer: int, n_embd: int, max_seq_len: int) -> int:
    """Parameters of the tied-head GPT-2 that `training.model` builds (exact)."""
    d = n_embd
    block = 12 * d * d + 13 * d
    return vocab_size * d + max_seq_len * d + n_layer * block + 2 * d


def estimate_run_memory(config: ModelTrainConfig, vocab_size: int) -> MemoryEstimate:
    """Peak memory of a training step of `config` with a `vocab_size`-token vocabulary."""
    arch = config.resolved()
    d, layers, heads = arch.n_embd, arch.n_layer, arch.n_head
    context, batch = config.max_seq_len, config.batch_size
    tokens = batch * context
    parameters = gpt2_parameters(vocab_size, layers, d, context)
    score_copies = ATTENTION_SCORE_COPIES * context if config.dropout > 0 else 0
    # One logsumexp per head and position (flash kernel), or the kept copies of the scores.
    attention = heads * (score_copies or 1)
    per_token = layers * (BLOCK_ACTIVATIONS_PER_EMBD * d + attention)
    per_token += OUTSIDE_ACTIVATIONS_PER_EMBD * d
    return MemoryEstimate(
        parameters=parameters,
        state_bytes=STATE_BYTES_PER_PARAMETER * parameters,
        activation_bytes=FLOAT_BYTES * tokens * per_token,
        attention_score_bytes=FLOAT_BYTES * tokens * layers * heads * score_copies,
        logits_bytes=LOGITS_COPIES * FLOAT_BYTES * tokens * vocab_size,
        window_bytes=INDEX_BYTES * (config.eval_batches + 2) * batch * (context + 1),
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
