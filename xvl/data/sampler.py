"""A resumable, process-sharded, endless batch sampler for map-style datasets.

Epoch ``e`` is a permutation seeded by ``(seed, e)``, cut to a multiple of ``batch_size * world``
(every process gets the same number of equal-sized batches, which the gathered contrastive loss
needs) and dealt out round-robin. Batches run on across epochs without end, so one DataLoader (and
its workers) lives for the whole run; each index comes as an ``(epoch, index)`` key so the dataset
can seed per-sample randomness by epoch without shared state. ``start_batch`` skips the batches
already consumed: a resumed run continues with exactly the batch an uninterrupted run would have
drawn next. Each process reads only its own indices (nothing is read on rank 0 and broadcast).
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[List[Tuple[int, int]]]):
    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 start_batch: int = 0, shuffle: bool = True):
        self.per_epoch = n // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(f"dataset has {n} samples, fewer than one global batch "
                             f"({batch_size} x {world_size} processes); lower train.batch_size")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.start_batch, self.shuffle = seed, start_batch, shuffle

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        """This rank's batches of one epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[: self.per_epoch * self.batch_size * self.world_size][self.rank :: self.world_size]
        return [mine[b * self.batch_size : (b + 1) * self.batch_size] for b in range(self.per_epoch)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, skip = divmod(self.start_batch, self.per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[skip:]:
                yield [(epoch, i) for i in batch]
            epoch, skip = epoch + 1, 0
