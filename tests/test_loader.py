"""xvl.data.loader.make_loader: workers exit cleanly when the loader is shut down mid-stream.

A worker that is still handing over a batch when the loader shuts down used to die with SIGABRT
("terminate called without an active exception"; exit code -6): torch cancels the join of its
result-queue feeder thread, which is still pickling the batch in C++ when the interpreter
finalizes. When this test was written, a plain ``DataLoader`` (spawn, 2 workers) failed it in 3
trials out of 3 and ``make_loader`` passed 3 out of 3. The batches are large (64 MB), so the
feeder is still busy when the worker exits.
"""
from __future__ import annotations

import time

import torch
from torch.utils.data import IterableDataset

from xvl.data.loader import make_loader


class SlowLargeBatches(IterableDataset):
    """Endless 64 MB tensors, each after a short delay (the worker is busy at shutdown)."""

    def __iter__(self):
        while True:
            time.sleep(0.05)
            yield torch.ones(16 * 2**20)


def test_workers_exit_cleanly_when_the_loader_stops_mid_stream():
    loader = make_loader(SlowLargeBatches(), 2, batch_size=None)
    it = iter(loader)
    assert next(it).numel() == 16 * 2**20
    workers = list(it._workers)
    it._shutdown_workers()  # what deleting the iterator does; raises if it sees a worker die
    assert [w.exitcode for w in workers] == [0, 0]


def test_a_callers_worker_init_fn_still_runs(tmp_path):
    marker = tmp_path / "inits"
    loader = make_loader(range(4), 1, batch_size=2, worker_init_fn=_RecordInit(str(marker)))
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert marker.read_text() == "0\n"


class _RecordInit:
    def __init__(self, path):
        self.path = path

    def __call__(self, worker_id):
        with open(self.path, "a") as f:
            f.write(f"{worker_id}\n")


class WarnOnce(IterableDataset):
    """Logs one warning from inside the worker, then yields one item."""

    def __iter__(self):
        import logging
        logging.getLogger("xvl.data.test").warning("skipped a corrupt sample")
        yield torch.zeros(1)


def test_workers_log_with_the_parents_format(capfd):
    import logging
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_handlers, old_level = root.handlers[:], root.level
    root.handlers, root.level = [handler], logging.INFO
    try:
        assert len(list(make_loader(WarnOnce(), 1, batch_size=None))) == 1
    finally:
        root.handlers, root.level = old_handlers, old_level
    err = capfd.readouterr().err
    # without the worker's logging setup the line prints bare: "skipped a corrupt sample"
    assert "WARNING xvl.data.test[worker 0]: skipped a corrupt sample" in err
