"""Two gloo processes (spawned) with gathered-with-gradient features reproduce the single-process
loss and gradients on the global batch (DDP-averaged), for the ITC objective."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from xvl.objectives.contrastive import contrastive_loss

B, D_IN, D = 4, 6, 5


def _problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2 * B, D_IN, generator=g), torch.randn(2 * B, D_IN, generator=g)
    wa, wb = torch.randn(D_IN, D, generator=g), torch.randn(D_IN, D, generator=g)
    return x, y, wa, wb


def _loss_and_grads(x, y, wa, wb, local_negatives=False):
    wa, wb = wa.clone().requires_grad_(), wb.clone().requires_grad_()
    scale = torch.tensor(3.0)
    loss = contrastive_loss(F.normalize(x @ wa, dim=-1), F.normalize(y @ wb, dim=-1), scale,
                            local_negatives=local_negatives)["loss"]
    loss.backward()
    return loss.detach(), wa.grad, wb.grad


def _worker(rank, world, port, out_dir, local_negatives):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y, wa, wb = _problem()
        sl = slice(rank * B, (rank + 1) * B)
        loss, ga, gb = _loss_and_grads(x[sl], y[sl], wa, wb, local_negatives)
        # what DDP does to parameter gradients and what logging does to the loss: average
        for t in (loss, ga, gb):
            dist.all_reduce(t)
            t /= world
        if rank == 0:
            torch.save({"loss": loss, "ga": ga, "gb": gb}, os.path.join(out_dir, "dist.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.parametrize("local_negatives", [False, True])
def test_gathered_loss_equals_single_process(tmp_path, local_negatives):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), local_negatives), nprocs=2,
                       start_method="spawn", join=True)
    got = torch.load(tmp_path / "dist.pt", weights_only=True)
    x, y, wa, wb = _problem()
    if local_negatives:
        # reference: each half is its own contrastive problem, averaged
        parts = [_loss_and_grads(x[s], y[s], wa, wb) for s in (slice(0, B), slice(B, 2 * B))]
        ref = [sum(p[i] for p in parts) / 2 for i in range(3)]
    else:
        ref = _loss_and_grads(x, y, wa, wb)
    torch.testing.assert_close(got["loss"], ref[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["ga"], ref[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["gb"], ref[2], atol=1e-6, rtol=1e-5)
    if not local_negatives:  # and the gathered version really differs from local-only negatives
        parts = [_loss_and_grads(x[s], y[s], wa, wb) for s in (slice(0, B), slice(B, 2 * B))]
        assert not torch.allclose(sum(p[1] for p in parts) / 2, ref[1], atol=1e-4)
