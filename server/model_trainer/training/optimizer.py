"""The optimizer of a run: AdamW for every parameter, or Muon for the blocks' weight matrices
and AdamW for the rest, stepped, scheduled and checkpointed as one (`RunOptimizer`).

`adamw`: torch's fused AdamW; weight decay on the matrices (the blocks' and an untied output
head), none on embeddings, norms and biases.

`muon`: torch's Muon (momentum, then Newton-Schulz orthogonalisation of each update) for
every 2-D weight inside the blocks (attention and MLP projections), at `muon_learning_rate`;
AdamW, as above, at `learning_rate` for the rest: token and position embeddings and the
output head (Muon is for hidden layers: an embedding's rows are looked up one at a time and
the head maps to a distribution, neither is a linear map to orthogonalise), norms and
biases (Muon only takes matrices).

Both follow the learning-rate plan: each parameter group has its own peak and the loop sets
every group to its peak times the plan's factor (`set_lr_factor`).

Muon details that matter:
- torch's default `adjust_lr_fn` ("original", Keller Jordan's) scales a matrix's rate by
  sqrt(max(1, rows / columns)) of the stored tensor. GPT-2's Conv1D stores its weight
  transposed (in x out), so its groups carry the factor that puts the scale back on the
  real output / input ratio.
- torch's Muon decays a weight by `lr x weight_decay` of its group each step. The Muon
  groups' `weight_decay` is set so that a hidden matrix shrinks each step by what AdamW's
  would (`learning_rate x weight_decay` at the same point of the plan): `weight_decay`
  means the same pull towards zero whichever optimizer runs.

Muon's Newton-Schulz iteration (`CpuMuon`) runs in the run's precision: bf16 as torch's
does where the run chose bf16 (native on its CPU: the iteration is pure matmuls, 1.7-4x
faster there), fp32 otherwise (emulated bf16 measured 750 ms a step for a tiny llama whose
forward and backward take 90 ms; fp32 costs a few ms). The matrices of one shape go through
it as one batch. At `mini` the iteration is a third of a step's arithmetic, at `tiny` two
fifths (docs/benchmarks.md). The rest of the update is torch's, and so is the state (one
`momentum_buffer` per matrix).

Checkpoints: with adamw, `state_dict()` is AdamW's own, exactly what checkpoints held before
Muon existed (so they still load); with muon it is `{"muon": ..., "adamw": ...}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from model_trainer.errors import CheckpointInvalid
from model_trainer.training.config import Optimizer, Precision, TrainingSpec
from model_trainer.training.model import output_head

# AdamW betas as nanoGPT uses for small batches (beta2 0.99 rather than 0.999).
BETAS = (0.9, 0.99)
# Muon's momentum (torch's default, Keller Jordan's and modded-nanogpt's value), Nesterov.
MUON_MOMENTUM = 0.95


@dataclass(frozen=True)
class ParameterSplit:
    """Which optimizer updates which parameter (each parameter once, tied ones included)."""

    muon: dict[float, list[nn.Parameter]]  # by the factor that corrects torch's lr scale
    decay: list[nn.Parameter]  # AdamW with weight decay
    no_decay: list[nn.Parameter]  # AdamW without


def split_parameters(model: nn.Module, use_muon: bool) -> ParameterSplit:
    """Muon (when `use_muon`) for the 2-D weights that are neither an embedding nor the
    output head; AdamW for the rest, with decay on matrices other than embeddings. Frozen
    weights (a LoRA run's base model) are left out."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = id(output_head(model))
    split = ParameterSplit(muon={}, decay=[], no_decay=[])
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:  # tied: two modules; frozen: LoRA's base
                continue
            seen.add(id(p))
            lookup = id(p) in embeddings
            if use_muon and p.dim() == 2 and not lookup and id(p) != head:
                transposed = isinstance(module, Conv1D)
                split.muon.setdefault(_muon_scale(p.shape, transposed), []).append(p)
            elif p.dim() >= 2 and not lookup:
                split.decay.append(p)
            else:
                split.no_decay.append(p)
    return split


def _muon_scale(shape: torch.Size, transposed: bool) -> float:
    """What corrects torch's sqrt(max(1, shape[0] / shape[1])) when the tensor is stored
    in x out (Conv1D) rather than out x in (nn.Linear): 1 for a Linear."""
    rows, columns = shape
    if not transposed:
        return 1.0
    return math.sqrt(max(1.0, columns / rows)) / math.sqrt(max(1.0, rows / columns))


def orthogonalise(
    updates: torch.Tensor, group: dict[str, object], dtype: torch.dtype
) -> torch.Tensor:
    """torch's Newton-Schulz iteration (its quintic coefficients, steps and epsilon from the
    group), in `dtype`: the nearest semi-orthogonal matrix, roughly, of each matrix of a
    batch (n x rows x columns) at once."""
    a, b, c = _coefficients(group["ns_coefficients"])
    steps, eps = group["ns_steps"], group["eps"]
    if not isinstance(steps, int) or not isinstance(eps, float):
        raise TypeError("Muon's ns_steps and eps must be an int and a float")
    x = updates.to(dtype)
    wide = x.size(1) > x.size(2)
    if wide:
        x = x.mT
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # spectral norms at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if wide else x


def _coefficients(value: object) -> tuple[float, float, float]:
    if not isinstance(value, tuple) or len(value) != 3:
        raise TypeError("Muon's ns_coefficients must be three numbers")
    a, b, c = value
    return float(a), float(b), float(c)


class CpuMuon(torch.optim.Muon):
    """torch's Muon (its arguments, checks, groups and state), stepping with a batched
    Newton-Schulz iteration in `ns_dtype` (see the module docstring)."""

    def __init__(
        self,
        params: list[dict[str, object]] | list[nn.Parameter],
        *,
        lr: float,
        ns_dtype: torch.dtype = torch.float32,
        weight_decay: float = 0.1,
        momentum: float = MUON_MOMENTUM,
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.ns_dtype = ns_dtype

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            # The matrices of one shape are orthogonalised together, as one batch: a model's
            # blocks repeat a handful of shapes, and at `tiny` sizes one batched matmul costs
            # little more than one of its matrices' (the per-matrix loop was most of a step).
            by_shape: dict[torch.Size, list[tuple[nn.Parameter, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                # torch's update, in its order: momentum, Nesterov, orthogonalise, decay.
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                by_shape.setdefault(p.shape, []).append((p, update))
            for (rows, columns), pairs in by_shape.items():
                updates = orthogonalise(torch.stack([u for _, u in pairs]), group, self.ns_dtype)
                # adjust_lr_fn "original": lr x sqrt(max(1, rows / columns)).
                alpha = -lr * math.sqrt(max(1.0, rows / columns))
                for (p, _), update in zip(pairs, updates, strict=True):
                    p.mul_(1 - lr * decay)
                    p.add_(update, alpha=alpha)
        return loss


class RunOptimizer:
    """One or two torch optimizers, each group with its own peak learning rate."""

    def __init__(self, kind: Optimizer, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.kind = kind
        self.parts = parts
        # Each group's peak, in the groups' order (load_state_dict keeps it).
        self.peaks = [[float(g["lr"]) for g in o.param_groups] for o in parts.values()]

    def set_lr_factor(self, factor: float) -> None:
        """Every group at its peak times `factor` (the plan's lr / learning_rate)."""
        for optimizer, peaks in zip(self.parts.values(), self.peaks, strict=True):
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = peak * factor

    def step(self) -> None:
        for optimizer in self.parts.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.parts.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, object]:
        return {name: o.state_dict() for name, o in self.parts.items()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name, optimizer in self.parts.items():
            part = state.get(name)
            if not isinstance(part, dict):
                raise CheckpointInvalid(f"the checkpoint holds no {name} state for {self.kind}")
            optimizer.load_state_dict({str(k): v for k, v in part.items()})


def make_optimizer(
    model: nn.Module, config: TrainingSpec, precision: Precision = Precision.FP32
) -> RunOptimizer:
    """`precision`: the run's chosen precision (not `auto`), which Muon's iteration follows."""
    use_muon = config.optimizer is Optimizer.MUON
    split = split_parameters(model, use_muon)
    groups: list[dict[str, object]] = [
        {"params": split.decay, "weight_decay": config.weight_decay},
        {"params": split.no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel does the whole update in one pass over memory (faster on CPU).
    adamw = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.learning_rate, betas=BETAS, fused=True
    )
    if not use_muon:
        return RunOptimizer(Optimizer.ADAMW, {"adamw": adamw})
    muon_groups: list[dict[str, object]] = []
    for scale, params in sorted(split.muon.items()):
        lr = config.muon_lr() * scale
        # The same shrink per step as AdamW's decay (see the module docstring).
        decay = config.weight_decay * config.learning_rate / lr
        muon_groups.append({"params": params, "lr": lr, "weight_decay": decay})
    ns_dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float32
    muon = CpuMuon(muon_groups, lr=config.muon_lr(), ns_dtype=ns_dtype)
    return RunOptimizer(Optimizer.MUON, {"muon": muon, "adamw": adamw})
