"""The training step's forward pass and loss, eager or compiled with `torch.compile`.

Only this function is compiled, never the module: the model stays a plain `PreTrainedModel`,
so its `state_dict` has its own keys (no `_orig_mod.` prefix), and checkpoints, evaluation,
generation and the artifact use it eagerly, exactly as for an eager run. The optimizer step
and gradient clipping stay eager too (Muon's Newton-Schulz is already a few matmuls).

Inductor keeps what it compiles in `TORCHINDUCTOR_CACHE_DIR` (its FX graph cache and AOT
autograd cache, both on by default): `use_compile_cache` points it at the worker's disk, so a
later run of the same shape (in any process) loads kernels instead of compiling them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from model_trainer.training.config import Precision

CPU = torch.device("cpu")

# (inputs, targets) -> mean cross-entropy, a scalar with a graph to backpropagate.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def autocast(
    precision: Precision, device: torch.device = CPU
) -> contextlib.AbstractContextManager[None]:
    if precision is Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    output = model(input_ids=input_ids, use_cache=False)
    logits = output.logits
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{type(model).__name__} returned no logits")
    return logits


def loss_function(
    model: PreTrainedModel, precision: Precision, device: torch.device, *, compiled: bool
) -> LossFn:
    """The step's forward and loss for `model`; compiled lazily, on its first call.

    Shapes are static (every training batch is batch_size x max_seq_len), so `dynamic=False`:
    one graph, no recompilation for a symbolic size.
    """

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            logits = forward_logits(model, x)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    if not compiled:
        return loss
    return torch.compile(loss, dynamic=False)


def time_step(loss_fn: LossFn, model: PreTrainedModel, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one forward and backward, as the loop does them; the gradients are dropped."""
    t0 = time.perf_counter()
    torch.autograd.backward(loss_fn(x, y))
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def use_compile_cache(directory: Path) -> None:
    """Keep inductor's compiled graphs in `directory`, for this process and its children.

    Set before the first compilation: inductor reads the variable when it first looks for
    its cache. The two caches are on by default; they are set here because the design
    relies on them.
    """
    # Imported here, not at the top: inductor takes a second to import, which processes
    # that never compile (the API, evaluation jobs) should not pay.
    import torch._functorch.config
    import torch._inductor.config

    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory.resolve())
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True


def cache_hits() -> int:
    """Graphs this process has loaded from inductor's FX graph cache so far."""
    from torch._dynamo.utils import counters  # see use_compile_cache

    return int(counters["inductor"]["fxgraph_cache_hit"])
