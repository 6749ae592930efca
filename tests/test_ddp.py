"""A modality absent from one rank's batch under DistributedDataParallel (gloo, 2 CPU processes).

Every tower runs (on an empty slice when it has no token), so all parameters get a gradient on
every rank and DDP works without ``find_unused_parameters=True``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mot_neuro.model import ModalityLayout, MoTBackbone, MoTConfig

MODALITIES = ("gene", "brain", "behaviour")


def _worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = MoTBackbone(MoTConfig(MODALITIES, dim=16, n_layers=2, n_heads=2))
    ddp = DistributedDataParallel(model)  # find_unused_parameters left False on purpose
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        x = torch.randn(2, 9, 16, generator=g)
        if rank == 0:  # general path, no behaviour token on this rank
            ids = torch.randint(0, 2, (2, 9), generator=g)
            out = ddp(x, ids)
        else:  # fixed layout without gene tokens
            out = ddp(x, ModalityLayout(("brain", "behaviour"), (5, 4)))
        optimizer.zero_grad()
        out.square().mean().backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(torch.stack(gathered), result_file)
    # Both ranks reach here before either tears down the gloo group and its file store; without it a
    # rank exiting early made the other abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two DDP processes
def test_ddp_with_a_modality_absent_on_one_rank(tmp_path):
    result = tmp_path / "params.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    params = torch.load(result)
    torch.manual_seed(0)
    initial = torch.cat(
        [p.detach().flatten() for p in MoTBackbone(MoTConfig(MODALITIES, dim=16, n_layers=2, n_heads=2)).parameters()]
    )
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)  # ranks stayed in sync
    assert not torch.allclose(params[0], initial)  # and they did train
