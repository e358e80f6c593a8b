"""A lifted model under DistributedDataParallel: 2 CPU processes (gloo), each with its own ids."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import gloo_worker
from torch import nn

from vgpcompile import rai, vgpcompile

N, STEPS = 8, 2


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, 3, generator=gen), torch.randint(0, 2, (N, 1), generator=gen).float()


def lifted_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1))
    return vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": N}})


def train(model: nn.Module, lifted: nn.Module, ids: torch.Tensor) -> None:
    x, y = data()
    opts = rai.optimizers(lifted, "adam", lr=0.05)
    model.train()
    for _ in range(STEPS):  # the first step moves only the output table; the second the weights too
        for opt in opts:
            opt.zero_grad()
        out = model(x[ids], ids)
        (F.binary_cross_entropy_with_logits(out, y[ids]) + rai.loss(model)).backward()
        for opt in opts:
            opt.step()


def worker(rank: int, world: int, store: str, out: str) -> None:
    with gloo_worker(rank, world, store):
        lifted = lifted_model()
        train(rai.ddp(lifted), lifted, torch.arange(N // world * rank, N // world * (rank + 1)))
        torch.save({k: v.detach().clone() for k, v in lifted.state_dict().items()}, f"{out}/rank{rank}.pt")


def test_ddp_two_processes_each_with_its_own_ids(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    weights = [k for k in states[0] if not k.startswith("rai_cut_")]
    for key in weights:  # gradients averaged: the same weights in both processes
        assert torch.equal(states[0][key], states[1][key]), key
    # ... equal to one process training on all ids (the mean over 8 = the mean of two means over 4)
    single = lifted_model()
    train(single, single, torch.arange(N))
    ref = single.state_dict()
    init = lifted_model().state_dict()
    assert any(not torch.equal(states[0][k], init[k]) for k in weights)
    for key in weights:
        assert torch.allclose(states[0][key], ref[key], atol=1e-6), key
    # each process owns the rows of its ids; the other rows were never visited there
    for rank, state in enumerate(states):
        own = torch.zeros(N, dtype=torch.bool)
        own[N // 2 * rank : N // 2 * (rank + 1)] = True
        for key in [k for k in state if k.endswith(".seen")]:
            assert torch.equal(state[key], own)
            table = state[key.replace(".seen", ".table")]
            assert not table[~own].any() and table[own].any()
