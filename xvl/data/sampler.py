"""A resumable, process-sharded batch sampler for map-style datasets.

Epoch ``e`` is a permutation seeded by ``(seed, e)``, cut to a multiple of ``batch_size * world``
(every process gets the same number of equal-sized batches, which the gathered contrastive loss
needs) and dealt out round-robin. ``start_batch`` skips batches already consumed, so a resumed
run continues with exactly the batch an uninterrupted run would have drawn next. Each process
reads only its own indices (nothing is read on rank 0 and broadcast).
"""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[List[int]]):
    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 epoch: int = 0, start_batch: int = 0, shuffle: bool = True):
        if n < batch_size * world_size:
            raise ValueError(f"dataset has {n} samples, fewer than one global batch "
                             f"({batch_size} x {world_size} processes); lower train.batch_size")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.epoch, self.start_batch, self.shuffle = seed, epoch, start_batch, shuffle

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size) - self.start_batch

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_step = self.batch_size * self.world_size
        usable = (self.n // per_step) * per_step
        mine = order[:usable][self.rank :: self.world_size]
        for b in range(self.start_batch, len(mine) // self.batch_size):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return n // (batch_size * world_size)
