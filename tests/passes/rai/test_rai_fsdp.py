"""A lifted model under FSDP2 (fully_shard): 2 CPU processes (gloo), each with its own ids.

``rai.fsdp`` leaves the tables out of FSDP (each process owns the rows of its ids, as with
``rai.ddp``) and shards the weights: the weights end equal in both processes and equal to
one process training on all ids. Plain ``fully_shard`` cannot take the tables' row-sparse
gradients: that failure is checked too, so a torch that lifts it is noticed."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import gloo_worker
from test_rai_ddp import N, lifted_model, train

from vgpcompile import rai

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def worker(rank: int, world: int, store: str, out: str, plain: bool) -> None:
    with gloo_worker(rank, world, store):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        lifted = lifted_model()
        (fully_shard if plain else rai.fsdp)(lifted, mesh=mesh)
        train(lifted, lifted, torch.arange(N // world * rank, N // world * (rank + 1)))
        state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in lifted.state_dict().items()}
        torch.save({k: v.detach().clone() for k, v in state.items()}, f"{out}/rank{rank}.pt")


def test_fsdp_two_processes_each_with_its_own_ids(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path), False), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = lifted_model()
    train(single, single, torch.arange(N))
    ref = single.state_dict()
    weights = [k for k in ref if not k.startswith("rai_cut_")]
    for key in weights:
        assert torch.equal(states[0][key], states[1][key]), key
        assert torch.allclose(states[0][key], ref[key], atol=1e-6), key
    for rank, state in enumerate(states):  # each process's tables hold the rows of its own ids only
        own = torch.zeros(N, dtype=torch.bool)
        own[N // 2 * rank : N // 2 * (rank + 1)] = True
        for key in [k for k in state if k.endswith(".seen")]:
            assert torch.equal(state[key], own)
            assert not state[key.replace(".seen", ".table")][~own].any()


@pytest.mark.slow
def test_plain_fully_shard_fails_on_the_row_sparse_tables(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="fsdp::chunk_cat' with arguments from the 'SparseCPU'"):
        mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path), True), nprocs=2, join=True)
