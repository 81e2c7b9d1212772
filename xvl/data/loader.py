"""The one way xvl builds a ``torch.utils.data.DataLoader`` (training, VQA fine-tuning, benchmarks).

Two things every loader here needs:

- ``spawn`` workers (a forked worker inherits the parent's thread pools and hangs; see ENV.md);
- a clean worker exit. When a loader is shut down while a worker is still handing over a batch
  (a run that stops iterating early, a benchmark that stops after N batches), torch's worker
  cancels the join of its result queue's feeder thread and exits. The feeder thread is then
  still pickling the batch's tensors into shared memory, in C++; when it asks for the GIL during
  interpreter finalization, CPython ends the thread with ``pthread_exit``, whose forced unwind
  through those C++ frames calls ``std::terminate``: the worker dies with SIGABRT ("terminate
  called without an active exception") and the main process raises "DataLoader worker ... is
  killed by signal: Aborted" from inside ``_shutdown_workers``. :func:`worker_init` registers an
  exit hook in each worker that gives the feeder threads a bounded time to finish first (hooks
  run before finalization starts), well inside the 5 s the main process waits before it
  terminates a worker.

A spawned worker also starts with logging unconfigured: its warnings (a skipped corrupt sample,
a truncated shard) would print bare, without time, level or source. ``make_loader`` hands the
parent's level and format to each worker, which logs them with ``[worker N]`` after the name.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time

from torch.utils.data import DataLoader

#: seconds a worker waits at exit for its result-queue feeder threads (torch's main process
#: waits MP_STATUS_CHECK_INTERVAL = 5 s for a worker before terminating it)
FEEDER_JOIN_TIMEOUT_S = 3.0


def join_queue_feeders(timeout: float = FEEDER_JOIN_TIMEOUT_S) -> None:
    """Wait (at most ``timeout`` seconds in all) for this process's multiprocessing queue feeder
    threads to finish sending what they hold."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name == "QueueFeederThread":
            thread.join(max(0.0, deadline - time.monotonic()))


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: join the queue feeders at exit (see the module docstring)."""
    atexit.register(join_queue_feeders)


class WorkerInit:
    """The ``worker_init_fn`` of :func:`make_loader` (picklable for spawn): logging as in the
    parent process, the clean exit of :func:`worker_init`, then the caller's own init if any."""

    def __init__(self, log_level: int, log_format: str | None, log_datefmt: str | None, then=None):
        self.log_level, self.log_format, self.log_datefmt, self.then = \
            log_level, log_format, log_datefmt, then

    @classmethod
    def from_parent(cls, then=None) -> "WorkerInit":
        """Capture this process's root logging level and its first handler's format."""
        root = logging.getLogger()
        formatter = root.handlers[0].formatter if root.handlers else None
        return cls(root.getEffectiveLevel(), getattr(formatter, "_fmt", None),
                   getattr(formatter, "datefmt", None), then)

    def __call__(self, worker_id: int) -> None:
        if self.log_format is not None:
            fmt = self.log_format.replace("%(name)s", f"%(name)s[worker {worker_id}]")
            logging.basicConfig(level=self.log_level, format=fmt, datefmt=self.log_datefmt)
        else:
            logging.getLogger().setLevel(self.log_level)
        worker_init(worker_id)
        if self.then is not None:
            self.then(worker_id)


def make_loader(dataset, num_workers: int = 0, **kwargs) -> DataLoader:
    """A DataLoader over ``dataset`` with spawned workers that log like the parent and exit
    cleanly (other arguments as for ``DataLoader``; a given ``worker_init_fn`` runs after xvl's
    own)."""
    if num_workers > 0:
        kwargs.setdefault("multiprocessing_context", "spawn")
        kwargs["worker_init_fn"] = WorkerInit.from_parent(kwargs.pop("worker_init_fn", None))
    return DataLoader(dataset, num_workers=num_workers, **kwargs)
