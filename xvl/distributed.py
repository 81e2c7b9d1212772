"""Rank helpers and a feature all-gather that carries gradient.

``accelerator.gather`` / ``dist.all_gather`` return tensors detached from autograd, so a
contrastive loss built on them would only train on local rows' gradients. ``all_gather_with_grad``
returns the concatenation of every rank's tensor and, in backward, gives each rank the sum over
ranks of the gradient with respect to its own slice (every rank's loss depends on it). With DDP's
gradient averaging this reproduces exactly the single-process gradient of the global-batch loss
(tested in tests/test_distributed.py). Implemented with all_reduce so it works on gloo (CPU), which
lacks reduce_scatter.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.batch = dist.get_rank(), tensor.shape[0]
        out = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) across ranks along dim 0, with gradient.

    A no-op outside a process group. All ranks must pass the same batch size.
    """
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) across ranks along dim 0, detached.

    For values that take no gradient (MoCo / XLCo queue keys): every rank gets the same result,
    ordered by rank. Outside a process group it returns ``tensor.detach()``.
    """
    tensor = tensor.detach()
    if get_world_size() == 1:
        return tensor
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, 0)
