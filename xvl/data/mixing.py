"""Mixing tasks by per-step ratios: image-caption batches and parallel-text batches in one run.

CCLM alternates image-text and text-text (translation) batches; here every micro-batch belongs to
one task, drawn by :func:`task_for_batch` from the configured ratios with a generator seeded by
``(seed, batch index)``. The draw is a pure function of the global micro-batch index, so every
process picks the same task at the same step (the gathered losses need equal batches), and a
resumed run recomputes how many batches each task had consumed and continues each task's own
:class:`~xvl.data.sampler.ResumableBatchSampler` exactly where it stopped.

    sampler = MixedBatchSampler({"image_text": 7606, "text_pair": 29000}, {"image_text": 2, "text_pair": 1},
                                batch_size=64, world_size=1, rank=0, seed=0, start_batch=0)
    dataset = TaskDataset({"image_text": captions_ds, "text_pair": parallel_ds})
    collate = TaskCollator({"image_text": caption_collate, "text_pair": parallel_collate})

Batches carry no task name: the objectives see which keys a batch has (``image`` or not) and the
composite skips those that do not apply (:meth:`xvl.objectives.base.Objective.applies`).
"""
from __future__ import annotations

import random
from typing import Callable, Dict, Iterator, List, Mapping, Tuple

from torch.utils.data import Dataset, Sampler

from xvl.data.sampler import ResumableBatchSampler

Key = Tuple[str, Tuple[int, int]]


def _normalized(ratios: Mapping[str, float]) -> List[Tuple[str, float]]:
    items = sorted((k, float(v)) for k, v in ratios.items())
    if not items or any(v < 0 for _, v in items) or sum(v for _, v in items) <= 0:
        raise ValueError(f"task ratios must be non-negative with a positive sum, got {dict(ratios)}")
    return items


def task_for_batch(ratios: Mapping[str, float], seed: int, batch_index: int) -> str:
    """The task of global micro-batch ``batch_index`` (same on every process; a pure function)."""
    items = _normalized(ratios)
    u = random.Random(seed * 1_000_003 + batch_index * 7_919 + 17).random() * sum(v for _, v in items)
    for name, v in items:
        if u < v:
            return name
        u -= v
    return items[-1][0]


class MixedBatchSampler(Sampler[List[Key]]):
    """Endless batches of ``(task, (epoch, index))`` keys, one task per batch, by ratio.

    Args:
        sizes: task name -> dataset length.
        ratios: task name -> relative share of batches (tasks absent or at 0 never run).
        start_batch: micro-batches already consumed by this process (resume).
    """

    def __init__(self, sizes: Mapping[str, int], ratios: Mapping[str, float], batch_size: int,
                 world_size: int = 1, rank: int = 0, seed: int = 0, start_batch: int = 0):
        unknown = sorted(set(ratios) - set(sizes))
        if unknown:
            raise ValueError(f"task ratios name tasks {unknown} that have no data (tasks: {sorted(sizes)})")
        self.ratios = {k: v for k, v in _normalized(ratios) if v > 0}
        self.seed, self.start_batch = seed, start_batch
        consumed = {k: 0 for k in self.ratios}
        for b in range(start_batch):
            consumed[task_for_batch(self.ratios, seed, b)] += 1
        self.samplers = {k: ResumableBatchSampler(sizes[k], batch_size, world_size, rank, seed=seed + i,
                                                  start_batch=consumed[k])
                         for i, k in enumerate(sorted(self.ratios))}

    def __iter__(self) -> Iterator[List[Key]]:
        iters = {k: iter(s) for k, s in self.samplers.items()}
        b = self.start_batch
        while True:
            task = task_for_batch(self.ratios, self.seed, b)
            yield [(task, key) for key in next(iters[task])]
            b += 1


class TaskDataset(Dataset):
    """Routes ``(task, key)`` to that task's dataset; the sample remembers its task."""

    def __init__(self, datasets: Mapping[str, Dataset]):
        self.datasets = dict(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, key: Key) -> dict:
        task, inner = key
        sample = self.datasets[task][inner]
        sample["task"] = task
        return sample


class TaskCollator:
    """Collates a one-task batch with that task's collator."""

    def __init__(self, collators: Mapping[str, Callable]):
        self.collators = dict(collators)

    def __call__(self, samples: List[dict]) -> Dict:
        tasks = {s.pop("task") for s in samples}
        if len(tasks) != 1:
            raise ValueError(f"a batch mixes tasks {sorted(tasks)}: MixedBatchSampler yields one task per batch")
        return self.collators[tasks.pop()](samples)
