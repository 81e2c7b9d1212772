"""Task mixing: image-caption and parallel-text batches by ratio, identical across processes, resumable."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest

from xvl.data.mixing import MixedBatchSampler, TaskCollator, TaskDataset, task_for_batch


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_tasks_follow_the_ratios_and_every_batch_is_one_task():
    s = MixedBatchSampler({"image_text": 40, "text_pair": 100}, {"image_text": 3, "text_pair": 1}, batch_size=4)
    batches = _take(s, 2000)
    tasks = Counter(b[0][0] for b in batches)
    assert all(len({t for t, _ in b}) == 1 and len(b) == 4 for b in batches)
    assert tasks["image_text"] / 2000 == pytest.approx(0.75, abs=0.03)
    # indices stay inside each task's own dataset
    assert max(i for b in batches for t, (_, i) in b if t == "image_text") < 40


def test_every_process_draws_the_same_task_and_its_own_shard():
    r0 = _take(MixedBatchSampler({"a": 64, "b": 64}, {"a": 1, "b": 1}, 4, world_size=2, rank=0, seed=3), 50)
    r1 = _take(MixedBatchSampler({"a": 64, "b": 64}, {"a": 1, "b": 1}, 4, world_size=2, rank=1, seed=3), 50)
    assert [b[0][0] for b in r0] == [b[0][0] for b in r1]
    for x, y in zip(r0, r1):
        assert not {k for _, k in x} & {k for _, k in y}


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be():
    full = _take(MixedBatchSampler({"a": 30, "b": 50}, {"a": 1, "b": 2}, 5, seed=7), 60)
    resumed = _take(MixedBatchSampler({"a": 30, "b": 50}, {"a": 1, "b": 2}, 5, seed=7, start_batch=23), 37)
    assert resumed == full[23:]


def test_zero_ratio_task_never_runs_and_bad_ratios_fail():
    batches = _take(MixedBatchSampler({"a": 30, "b": 50}, {"a": 1, "b": 0}, 5), 50)
    assert {b[0][0] for b in batches} == {"a"}
    with pytest.raises(ValueError, match="no data"):
        MixedBatchSampler({"a": 30}, {"a": 1, "c": 1}, 5)
    with pytest.raises(ValueError, match="positive sum"):
        task_for_batch({"a": 0.0}, 0, 0)


def test_task_dataset_and_collator_route_by_task():
    ds = TaskDataset({"a": [{"x": 1}, {"x": 2}], "b": [{"y": 3}]})
    coll = TaskCollator({"a": lambda s: ("A", [r["x"] for r in s]), "b": lambda s: ("B", [r["y"] for r in s])})
    assert coll([ds[("a", 0)], ds[("a", 1)]]) == ("A", [1, 2])
    assert coll([ds[("b", 0)]]) == ("B", [3])
    with pytest.raises(ValueError, match="mixes tasks"):
        coll([ds[("a", 0)], ds[("b", 0)]])
