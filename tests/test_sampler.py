"""The resumable batch sampler: disjoint equal shards, epochs reshuffled, exact resume."""
from itertools import islice

import pytest

from xvl.data.sampler import ResumableBatchSampler


def take(sampler, k):
    return list(islice(iter(sampler), k))


def test_ranks_are_disjoint_equal_and_cover_an_epoch():
    n, b, w = 23, 3, 2  # 3 steps of 6 per epoch; 5 samples left out each epoch
    shards = [take(ResumableBatchSampler(n, b, w, r, seed=1), 3) for r in range(w)]
    flat = [key for s in shards for batch in s for key in batch]
    assert all(len(batch) == b for s in shards for batch in s)
    assert len(flat) == len(set(flat)) == 18 and {e for e, _ in flat} == {0}


def test_epochs_reshuffle_and_are_seeded():
    s = ResumableBatchSampler(20, 5, seed=0)
    b = take(s, 8)
    assert [e for batch in b for e, _ in batch[:1]] == [0, 0, 0, 0, 1, 1, 1, 1]
    epoch0 = [i for batch in b[:4] for _, i in batch]
    epoch1 = [i for batch in b[4:] for _, i in batch]
    assert sorted(epoch0) == sorted(epoch1) == list(range(20)) and epoch0 != epoch1
    assert take(ResumableBatchSampler(20, 5, seed=0), 8) == b
    assert take(ResumableBatchSampler(20, 5, seed=1), 8) != b


def test_resume_continues_exactly():
    full = take(ResumableBatchSampler(30, 4, 2, 1, seed=3), 20)
    for start in (0, 1, 3, 7, 11):
        assert take(ResumableBatchSampler(30, 4, 2, 1, seed=3, start_batch=start), 20 - start) == full[start:]


def test_too_small_for_one_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(7, 4, world_size=2)
