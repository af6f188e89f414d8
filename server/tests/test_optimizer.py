"""The run's optimizer: which parameters Muon takes, its update against torch's, the plan."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model_trainer.training.config import TrainingSpec
from model_trainer.training.model import build_model, model_spec, output_head
from model_trainer.training.optimizer import CpuMuon, make_optimizer, split_parameters


def _model(**fields: object) -> tuple[nn.Module, TrainingSpec]:
    config = TrainingSpec.model_validate(
        {"n_layer": 2, "n_head": 2, "n_embd": 32, "max_seq_len": 16, **fields}
    )
    return build_model(model_spec(config, 100, 0, None), config.model_family, seed=1), config


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(family: str) -> None:
    model, _ = _model(model_family=family, tie_word_embeddings=False)
    split = split_parameters(model, use_muon=True)
    on_muon = {id(p) for params in split.muon.values() for p in params}
    adamw = {id(p) for p in split.decay + split.no_decay}
    names = {id(p): name for name, p in model.named_parameters()}
    assert on_muon.isdisjoint(adamw) and on_muon | adamw == set(names)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    assert embeddings | {id(output_head(model))} <= adamw
    for pid in on_muon:
        assert ".h." in names[pid] or ".layers." in names[pid], names[pid]
    # Every 2-D weight inside the blocks is Muon's; norms, biases are not.
    in_blocks = {pid for pid, name in names.items() if ".h." in name or ".layers." in name}
    matrices = {pid for pid in in_blocks if dict(model.named_parameters())[names[pid]].dim() == 2}
    assert on_muon == matrices


def test_gpt2s_transposed_conv1d_gets_the_scale_of_its_true_shape() -> None:
    model, _ = _model(model_family="gpt2")
    split = split_parameters(model, use_muon=True)
    # c_attn is d x 3d (in x out): torch would scale by 1, the true out/in ratio is 3; the
    # MLP's c_proj is 4d x d: torch would scale by 2, the truth is 1; c_fc: 1 -> 2.
    assert sorted(split.muon) == pytest.approx([0.5, 1.0, math.sqrt(3), 2.0])


@pytest.mark.parametrize("ns_dtype", [torch.float32, torch.bfloat16])
def test_cpu_muon_updates_as_torchs_muon_does(ns_dtype: torch.dtype) -> None:
    """One group of matrices of three shapes, two of them twice (batched together): each
    updated as torch's Muon updates it alone, in fp32 or in bf16 (torch's own precision)."""
    torch.manual_seed(0)
    shapes = [(64, 32), (32, 96), (64, 32), (48, 48), (32, 96)]
    ours_params = [nn.Parameter(torch.randn(*shape)) for shape in shapes]
    theirs_params = [nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = CpuMuon(ours_params, lr=0.02, weight_decay=0.1, ns_dtype=ns_dtype)
    theirs: list[torch.optim.Optimizer] = [
        torch.optim.Muon([p], lr=0.02, weight_decay=0.1) for p in theirs_params
    ]
    for _ in range(3):
        for a, b in zip(ours_params, theirs_params, strict=True):
            grad = torch.randn(*a.shape)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        for optimizer in theirs:
            optimizer.step()
    for a, b, optimizer in zip(ours_params, theirs_params, theirs, strict=True):
        # torch iterates in bf16: in bf16 ours is its update exactly, batching included; in
        # fp32 the same update to bf16's precision.
        assert torch.allclose(a, b, atol=1e-3)
        assert torch.equal(a, b) is (ns_dtype == torch.bfloat16)
        assert set(ours.state[a]) == set(optimizer.state[b]) == {"momentum_buffer"}
    theirs_groups = theirs[0].state_dict()["param_groups"]
    assert {k: v for k, v in ours.state_dict()["param_groups"][0].items() if k != "params"} == {
        k: v for k, v in theirs_groups[0].items() if k != "params"
    }


def test_every_group_follows_the_plan_from_its_own_peak() -> None:
    model, config = _model(model_family="llama", optimizer="muon", muon_learning_rate=0.05)
    optimizer = make_optimizer(model, config)
    optimizer.set_lr_factor(0.5)
    muon_lrs = {g["lr"] for g in optimizer.parts["muon"].param_groups}
    adamw_lrs = {g["lr"] for g in optimizer.parts["adamw"].param_groups}
    assert muon_lrs == {0.025}
    assert adamw_lrs == {config.learning_rate / 2}
    # Muon's decay shrinks a matrix per step as AdamW's would: lr x weight_decay.
    for group in optimizer.parts["muon"].param_groups:
        assert group["lr"] * group["weight_decay"] == pytest.approx(
            config.learning_rate / 2 * config.weight_decay
        )
