"""Streamed training batches: several sources (webdataset shards, HF datasets, parallel text) mixed
by weight, decoded and tokenized in DataLoader workers, resumable without replay.

    sources = [StreamSource("flickr", "image_text", 4.0, open_shards, make_caption_item),
               StreamSource("m30k", "text_pair", 1.0, open_pairs, make_pair_item)]
    ds = StreamingBatches(sources, collators, batch_size=128, seed=0, rank=0, world_size=1)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")

How batches are made (every step a pure function of the seed and positions, nothing broadcast):

- Each micro-batch comes from one source, drawn by weight with
  :func:`~xvl.data.mixing.task_for_batch` from the process-local micro-batch index ``b``. Every
  process draws the same source at the same step (the gathered losses need equal batches, and
  the model runs the same towers on every rank).
- A DataLoader hands out worker batches round-robin, so worker ``w`` makes micro-batches
  ``b = start_batch + k * num_workers + w`` (k = 0, 1, ...). Each (rank, worker) slot reads its
  own part of every source (:class:`~xvl.data.streaming.ShardStream` /
  :class:`~xvl.data.streaming.ListStream` / :class:`~xvl.data.hf_source.HFStream`).
- A batch holds exactly ``batch_size`` items: an undecodable sample or one without a usable
  caption is skipped (counted by reason, reported with the batch as ``data_skips``) and the next
  one taken.
- Every batch reports its slot's raw-sample position in each source (``data_state``); the trainer
  keeps the newest per worker and saves them in the checkpoint. A resumed run restarts each slot's
  streams at those positions: nothing consumed is replayed. If the number of processes or
  workers changed, positions cannot be mapped to slots: the streams are reseeded instead (a
  warning says samples may repeat).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional

from torch.utils.data import IterableDataset

from xvl.data.images import SkipCounter
from xvl.data.mixing import task_for_batch

logger = logging.getLogger(__name__)

TASKS = ("image_text", "text_pair")


@dataclass
class StreamSource:
    """One mixed source: its task, its weight among the sources, how a slot opens its stream and
    how a raw item becomes a training item.

    ``open(seed=, rank=, world_size=, worker=, num_workers=, start=, on_skip=)`` returns an endless
    iterable of raw items with a ``position`` attribute counting the raw items consumed
    (:class:`~xvl.data.streaming.ShardStream` and friends). ``make(raw, rng, skips)`` returns the
    item dict, or None for an unusable sample (after counting it in ``skips``). Both are pickled
    into DataLoader workers: module-level classes or ``functools.partial`` of functions.
    """

    name: str
    task: str
    weight: float
    open: Callable
    make: Callable


def item_rng(seed: int, source_index: int, rank: int, worker: int, position: int) -> random.Random:
    """Per-item randomness (caption choice, crop) from the item's place in its slot's stream."""
    return random.Random(((seed * 1_000_003 + source_index) * 65_537 + rank * 4_099 + worker) * 1_000_000_007
                         + position)


class StreamingBatches(IterableDataset):
    """Endless collated micro-batches from weighted sources (see the module docstring).

    Args:
        sources: the mixed sources (names unique).
        collators: task -> collator of a list of items (tokenization happens here, in the worker).
        batch_size: items per micro-batch (per process).
        start_batch: process-local micro-batches already consumed (resume).
        positions: ``{worker: {source: raw position}}`` of this process at the checkpoint (resume).
        seed_batch: when positions could not be restored, the micro-batch the streams were reseeded
            at (their seed is derived from it; it is part of the data state, so a later resume of
            the reseeded streams restores their positions).
    """

    def __init__(self, sources: List[StreamSource], collators: Mapping[str, Callable],
                 batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 positions: Optional[Dict[int, Dict[str, int]]] = None, seed_batch: int = 0,
                 max_consecutive_skips: int = 10_000):
        names = [s.name for s in sources]
        if not sources or len(set(names)) != len(names):
            raise ValueError(f"need at least one source, with unique names; got {names}")
        for s in sources:
            if s.task not in collators:
                raise ValueError(f"source {s.name!r}: no collator for task {s.task!r}")
        self.sources = list(sources)
        self.weights = {s.name: float(s.weight) for s in sources}
        task_for_batch(self.weights, seed, 0)  # validates the weights now, not in a worker
        self.collators = dict(collators)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_batch = int(start_batch)
        self.positions = {int(w): dict(p) for w, p in (positions or {}).items()}
        self.seed_batch = int(seed_batch)
        self.max_consecutive_skips = int(max_consecutive_skips)

    def source_for_batch(self, batch_index: int) -> StreamSource:
        name = task_for_batch(self.weights, self.seed, batch_index)
        return next(s for s in self.sources if s.name == name)

    def __iter__(self) -> Iterator[dict]:
        from xvl.data.streaming import current_worker

        worker, num_workers = current_worker()
        skips = SkipCounter(f"stream rank {self.rank} worker {worker}")
        seed = self.seed + 7_919 * self.seed_batch
        start = self.positions.get(worker, {})
        streams: Dict[str, Iterator] = {}
        iters: Dict[str, Iterator] = {}

        def stream_of(idx: int, src: StreamSource):
            if src.name not in streams:
                streams[src.name] = src.open(seed=seed + 104_729 * idx, rank=self.rank, world_size=self.world_size,
                                             worker=worker, num_workers=num_workers,
                                             start=int(start.get(src.name, 0)), on_skip=skips.skip)
                iters[src.name] = iter(streams[src.name])
            return streams[src.name], iters[src.name]

        k = 0
        while True:
            b = self.start_batch + k * num_workers + worker
            src = self.source_for_batch(b)
            idx = self.sources.index(src)
            stream, it = stream_of(idx, src)
            make = src.make
            before = dict(skips.counts)
            items, misses = [], 0
            while len(items) < self.batch_size:
                position = stream.position
                raw = next(it)
                item = make(raw, item_rng(seed, idx, self.rank, worker, position), skips)
                if item is None:
                    misses += 1
                    if misses > self.max_consecutive_skips:
                        raise RuntimeError(f"source {src.name!r}: {misses} samples in a row were unusable "
                                           f"(skips so far: {skips.as_dict()}); is the data right?")
                    continue
                misses = 0
                items.append(item)
            batch = self.collators[src.task](items)
            batch["data_skips"] = {r: n - before.get(r, 0) for r, n in skips.counts.items() if n != before.get(r, 0)}
            positions = {n: int(p) for n, p in start.items()}
            positions.update({n: int(s.position) for n, s in streams.items()})
            batch["data_state"] = {"worker": worker, "positions": positions, "seed_batch": self.seed_batch}
            yield batch
            k += 1
