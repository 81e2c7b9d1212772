"""Slot streams over tar shards and lists: specs, exact per-epoch partition, determinism, shuffling,
resume parity, resampling, fsspec URLs, damaged shards, and DataLoader workers."""
import json
import logging
import os
import tarfile
import uuid
from itertools import islice

import pytest
import torch
import webdataset as wds

from xvl.data.shard_format import FORMAT, INDEX_NAME, encode_record, sample_key
from xvl.data.streaming import (ListStream, ShardStream, current_worker, expand_shard_spec,
                                shard_sample_counts)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [5, 7, 3, 6, 4, 8, 5, 6]  # 44 samples in 8 shards of unequal size


def jpg_of(g):
    return b"\xff\xd8" + bytes([g % 251]) * 20


def write_shards(d, sizes, prefix="train"):
    """Shards of tiny samples with globally numbered keys (json {"i": g}, a byte "jpg") and an
    index.json listing them; returns the shard paths."""
    os.makedirs(d, exist_ok=True)
    paths, g = [], 0
    for s, n in enumerate(sizes):
        path = os.path.join(d, f"{prefix}-{s:06d}.tar")
        with wds.TarWriter(path) as w:
            for _ in range(n):
                w.write({"__key__": sample_key(g), "json": encode_record({"i": g}), "jpg": jpg_of(g)})
                g += 1
        paths.append(path)
    index = {"format": FORMAT, "kind": "image_text",
             "shards": [{"file": os.path.basename(p), "n_samples": n} for p, n in zip(paths, sizes)]}
    with open(os.path.join(d, INDEX_NAME), "w") as f:
        json.dump(index, f)
    return paths


def shard_keys(sizes):
    """Keys of each shard written by write_shards, in file order."""
    out, g = [], 0
    for n in sizes:
        out.append([sample_key(i) for i in range(g, g + n)])
        g += n
    return out


def ku(samples):
    return [(s["__key__"], s["__url__"]) for s in samples]


def epochs_of(stream, n_epochs):
    """The samples of this slot's first ``n_epochs`` epochs, one list per epoch."""
    out = [[] for _ in range(n_epochs)]
    for s in stream:
        if stream.epoch >= n_epochs:
            break
        out[stream.epoch].append(s)
    return out


@pytest.fixture
def shards(tmp_path):
    return write_shards(str(tmp_path / "s"), SIZES)


# ------------------------------------------------------------------------------ specs

def test_brace_patterns_lists_and_root(tmp_path, shards):
    first3 = shards[:3]
    assert expand_shard_spec("s/train-{000000..000002}.tar", root=str(tmp_path)) == first3
    assert expand_shard_spec("s/train-000000.tar::s/train-{000001..000002}.tar", root=str(tmp_path)) == first3
    assert expand_shard_spec([shards[2], "s/train-{000000..000001}.tar"], root=str(tmp_path)) == \
        [shards[2], shards[0], shards[1]]
    assert shard_sample_counts(shards[:3]) is None
    # URLs are kept (and brace-expanded), not checked
    assert expand_shard_spec("s3://bucket/x-{0..2}.tar") == [f"s3://bucket/x-{i}.tar" for i in range(3)]


def test_index_file_and_directory_specs(tmp_path, shards):
    d = str(tmp_path / "s")
    index = os.path.join(d, INDEX_NAME)
    for spec, root in ((d, None), (index, None), ("s", str(tmp_path)), (f"s/{INDEX_NAME}", str(tmp_path))):
        assert expand_shard_spec(spec, root=root) == shards, spec
        assert shard_sample_counts(spec, root=root) == SIZES, spec
    assert expand_shard_spec([d, d]) == shards + shards
    assert shard_sample_counts([d, d]) == SIZES + SIZES
    assert shard_sample_counts([d, shards[0]]) is None  # a plain tar has no count


def test_missing_and_empty_specs(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match=r"2 shard file\(s\).*train-000009.tar"):
        expand_shard_spec("s/train-{000007..000009}.tar", root=str(tmp_path))
    os.remove(shards[3])
    with pytest.raises(FileNotFoundError, match="train-000003.tar"):
        expand_shard_spec(str(tmp_path / "s"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=INDEX_NAME):
        expand_shard_spec(str(tmp_path / "empty"))
    (tmp_path / "bad.json").write_text('{"files": []}')
    with pytest.raises(ValueError, match="bad.json.*'shards'"):
        expand_shard_spec(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="names no shards"):
        expand_shard_spec([])


# ------------------------------------------------------------------------------ finite mode

def test_slots_partition_every_epoch(shards):
    all_keys = sorted(k for ks in shard_keys(SIZES) for k in ks)
    per_slot = [epochs_of(ShardStream(shards, seed=1, shuffle_buffer=3, rank=r, world_size=2, worker=w,
                                      num_workers=2, on_skip=pytest.fail), 2)
                for r in range(2) for w in range(2)]
    for e in range(2):
        keys = [s["__key__"] for slot in per_slot for s in slot[e]]
        assert sorted(keys) == all_keys, e  # every sample exactly once
        urls = [{s["__url__"] for s in slot[e]} for slot in per_slot]
        assert [len(u) for u in urls] == [2, 2, 2, 2] and set().union(*urls) == set(shards)
    assert [s["__key__"] for s in per_slot[0][0]] != [s["__key__"] for s in per_slot[0][1]]
    # shards are dealt out anew each epoch
    dealt = [[{s["__url__"] for s in slot[e]} for slot in per_slot] for e in range(2)]
    assert dealt[0] != dealt[1]
    # 5 shards for 4 slots: uneven (one slot reads 2 shards) but still every sample exactly once
    five = [epochs_of(ShardStream(shards[:5], seed=1, world_size=2, rank=r, num_workers=2, worker=w), 1)[0]
            for r in range(2) for w in range(2)]
    assert sorted(s["__key__"] for slot in five for s in slot) == sorted(all_keys[:sum(SIZES[:5])])
    assert sorted(len({s["__url__"] for s in slot}) for slot in five) == [1, 1, 1, 2]
    with pytest.raises(ValueError, match="3 shards < 2 processes x 2 workers = 4 slots.*[Rr]e-shard"):
        ShardStream(shards[:3], world_size=2, num_workers=2, rank=1)


def test_too_few_shards_warn_shares_shards(shards, caplog):
    with caplog.at_level(logging.WARNING):
        per_slot = [epochs_of(ShardStream(shards[:3], shuffle_buffer=0, world_size=2, rank=r, num_workers=2,
                                          worker=w, too_few_shards="warn"), 1)[0]
                    for r in range(2) for w in range(2)]
    assert "3 shards < 2 processes x 2 workers" in caplog.text
    urls = [{s["__url__"] for s in slot} for slot in per_slot]
    assert all(len(u) == 1 for u in urls)
    assert len(set().union(*urls[:3])) == 3 and urls[3] == urls[0]  # slot 3 reads order[3 % 3]
    assert ku(per_slot[3]) == ku(per_slot[0])


def test_deterministic_seeded_and_reshuffled_per_epoch(shards):
    a = ku(islice(ShardStream(shards, seed=5, shuffle_buffer=6), 88))
    assert a == ku(islice(ShardStream(shards, seed=5, shuffle_buffer=6), 88))
    assert a != ku(islice(ShardStream(shards, seed=6, shuffle_buffer=6), 88))
    e0, e1 = a[:44], a[44:]
    assert sorted(e0) == sorted(e1) and len(set(e0)) == 44 and e0 != e1


def test_shuffle_buffer_shuffles_within_an_epoch_only(shards):
    stream = ShardStream(shards, seed=2, shuffle_buffer=0)
    plain, plain1 = epochs_of(stream, 2)
    plain, plain1 = [s["__key__"] for s in plain], [s["__key__"] for s in plain1]
    by_shard = shard_keys(SIZES)
    assert plain == [k for i in stream.epoch_shards(0) for k in by_shard[i]]  # shard order, file order
    assert plain1 == [k for i in stream.epoch_shards(1) for k in by_shard[i]]
    assert sorted(stream.epoch_shards(1)) == list(range(8)) and stream.epoch_shards(1) != stream.epoch_shards(0)
    samples = list(islice(ShardStream(shards, seed=2, shuffle_buffer=8), 88))
    shuffled = [s["__key__"] for s in samples]
    assert sorted(shuffled[:44]) == sorted(plain) and sorted(shuffled[44:]) == sorted(plain)  # epochs do not mix
    assert shuffled[:44] != plain
    in_file_order = sum(int(b) == int(a) + 1 for a, b in zip(shuffled, shuffled[1:44]))
    assert in_file_order < 15, shuffled[:44]
    # raw samples: bytes as written, nothing decoded
    s = samples[0]
    assert set(s) >= {"__key__", "__url__", "json", "jpg"}
    assert s["json"] == encode_record({"i": int(s["__key__"])}) and s["jpg"] == jpg_of(int(s["__key__"]))


@pytest.mark.parametrize("with_counts", [True, False])
def test_resume_continues_exactly(shards, with_counts):
    counts = SIZES if with_counts else None
    kw = dict(seed=3, shuffle_buffer=5, rank=1, world_size=2, sample_counts=counts, on_skip=pytest.fail)
    ref_stream = ShardStream(shards, **kw)
    ref, ref_epochs = [], []
    for s in islice(ref_stream, 90):  # ~4 epochs of this slot (its epoch sizes vary)
        ref.append((s["__key__"], s["__url__"]))
        ref_epochs.append(ref_stream.epoch)
    first = {e: ref_epochs.index(e) for e in range(3)}
    starts = [0, 1, 7, first[1] - 1, first[1], first[2], first[2] + 4]  # the last: inside epoch 2
    n = 20
    for k in starts:
        stream = ShardStream(shards, start=k, **kw)
        got = ku(islice(stream, n))
        assert got == ref[k:k + n], k
        assert stream.position == k + n and stream.epoch == ref_epochs[k + n - 1], k


def test_count_mismatch_is_warned(shards, caplog):
    counts = list(SIZES)
    counts[0] += 1  # the index is wrong about shard 0
    with caplog.at_level(logging.WARNING):
        list(islice(ShardStream(shards, shuffle_buffer=0, sample_counts=counts), 44))
    assert "gave 5 samples but sample_counts says 6" in caplog.text
    with pytest.raises(ValueError, match="one count >= 0 per shard"):
        ShardStream(shards, sample_counts=SIZES[:3])


# ------------------------------------------------------------------------------ resampled mode

def test_resampled_draws_and_reseeds(shards):
    kw = dict(seed=4, shuffle_buffer=4, resampled=True, world_size=2, num_workers=2, rank=1, worker=1)
    a = ku(islice(ShardStream(shards[:2], **kw), 60))  # 2 shards for 4 slots: fine when resampling
    assert a == ku(islice(ShardStream(shards[:2], **kw), 60))
    assert {u for _, u in a} == set(shards[:2]) and len(set(a)) == sum(SIZES[:2])  # drawn with replacement
    assert a != ku(islice(ShardStream(shards[:2], **{**kw, "worker": 0}), 60))  # slots draw differently
    stream = ShardStream(shards[:2], start=7, **kw)
    b = ku(islice(stream, 30))
    assert stream.position == 37 and stream.epoch == 0
    assert b == ku(islice(ShardStream(shards[:2], start=7, **kw), 30))  # reseeded by (seed, slot, start)
    assert b != a[7:37] and b != a[:30]  # ... neither replayed nor restarted


# ------------------------------------------------------------------------------ fsspec URLs

def test_fsspec_memory_urls(shards):
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"xvl-test-{uuid.uuid4().hex}"
    try:
        for i in range(2):
            with open(shards[i], "rb") as f:
                fs.pipe(f"/{base}/train-{i}.tar", f.read())
        urls = expand_shard_spec(f"memory://{base}/train-{{0..1}}.tar")
        assert urls == [f"memory://{base}/train-0.tar", f"memory://{base}/train-1.tar"]
        got = sorted(s["__key__"] for s in islice(ShardStream(urls, shuffle_buffer=3, on_skip=pytest.fail), 12))
        assert got == sorted(shard_keys(SIZES)[0] + shard_keys(SIZES)[1])
        skips = []
        stream = ShardStream(urls + [f"memory://{base}/missing.tar"], shuffle_buffer=0,
                             on_skip=lambda *a: skips.append(a))
        assert len(epochs_of(stream, 1)[0]) == 12
        assert [r for r, _ in skips] == ["unreadable_shard"] and "missing.tar" in skips[0][1]
    finally:
        fs.rm(f"/{base}", recursive=True)


# ------------------------------------------------------------------------------ damaged shards

DAMAGED_SIZES = [4, 6, 4]  # shard 1 holds samples 4..9


def _member(path, name):
    with tarfile.open(path) as t:
        return t.getmember(name)


@pytest.mark.parametrize("damage, member, kept", [
    ("cut", "7.json", [4, 5, 6]),       # cut inside sample 7's second member: 7 is incomplete, dropped
    ("cut", "7.jpg", [4, 5, 6]),        # cut inside its first member
    ("cut_before", "8.jpg", [4, 5, 6, 7]),  # cut at a member boundary: no end-of-archive block
    ("corrupt", "6.jpg", [4, 5]),       # tarfile stops silently at a bad header; the unread rest is not zeros
    ("corrupt", "9.json", [4, 5, 6, 7, 8]),  # ... in the last block tarfile reads: bytes after the last member
    ("corrupt", "5.jpg", []),           # the shard's first sample cannot be known complete: dropped
])
def test_damaged_shard_yields_what_precedes_and_reports_once_per_epoch(tmp_path, damage, member, kept):
    paths = write_shards(str(tmp_path), DAMAGED_SIZES)
    with open(paths[1], "rb") as f:
        data = bytearray(f.read())
    g, ext = member.split(".")
    m = _member(paths[1], f"{sample_key(int(g))}.{ext}")
    if damage == "cut":
        data = data[: m.offset_data + 5]
    elif damage == "cut_before":
        data = data[: m.offset]
    else:
        data[m.offset: m.offset + 8] = b"garbage!"  # the header checksum no longer matches
    with open(paths[1], "wb") as f:
        f.write(data)

    skips = []
    stream = ShardStream(paths, seed=1, shuffle_buffer=0, on_skip=lambda *a: skips.append(a))
    keys = shard_keys(DAMAGED_SIZES)
    keys[1] = [sample_key(i) for i in kept]
    epochs = epochs_of(stream, 2)
    for e, got in enumerate(epochs):
        assert [s["__key__"] for s in got] == [k for i in stream.epoch_shards(e) for k in keys[i]], e
        assert [r for r, _ in skips[e:e + 1]] == ["truncated_shard"] and paths[1] in skips[e][1]
    assert len(skips) == 2  # once per epoch
    # deterministic, so positions stay valid: resume (by replay) continues exactly
    ref = ku(islice(ShardStream(paths, seed=1, shuffle_buffer=3), 30))
    n0 = len(epochs[0])
    for k in (2, n0 - 1, n0 + 3):
        assert ku(islice(ShardStream(paths, seed=1, shuffle_buffer=3, start=k), 30 - k)) == ref[k:], k
    # damage found while replaying was reported by the run that read it: not again
    skips.clear()
    epochs_of(ShardStream(paths, seed=1, shuffle_buffer=0, start=n0, on_skip=lambda *a: skips.append(a)), 2)
    assert len(skips) == 1


@pytest.mark.timeout(60)
def test_all_unreadable_shards_raise_instead_of_looping(tmp_path, shards):
    (tmp_path / "garbage.tar").write_bytes(b"not a tar file " * 100)
    (tmp_path / "empty.tar").write_bytes(b"")
    bad = [str(tmp_path / "missing.tar"), str(tmp_path / "garbage.tar"), str(tmp_path / "empty.tar")]
    skips = []

    def on_skip(reason, detail):
        skips.append(reason)
        assert len(skips) < 500, "looping over unreadable shards"

    with pytest.raises(RuntimeError, match="none gave a sample.*missing.tar"):
        next(iter(ShardStream(bad, on_skip=on_skip)))
    assert skips == ["unreadable_shard"] * 3
    with pytest.raises(RuntimeError, match="none gave a sample"):
        next(iter(ShardStream(bad, resampled=True, world_size=2, num_workers=2, on_skip=on_skip)))
    # one good shard among bad ones: resampling keeps going
    got = list(islice(ShardStream(bad + [shards[0]], resampled=True, shuffle_buffer=0,
                                  on_skip=lambda *a: None), 40))
    assert {s["__url__"] for s in got} == {shards[0]}


# ------------------------------------------------------------------------------ lists

def test_list_stream_partitions_and_resumes():
    items = [f"pair{i}" for i in range(10)]
    slots = [ListStream(items, seed=2, world_size=3, rank=r) for r in range(3)]
    firsts = [list(islice(s, 6)) for s in slots]  # 3 per slot and epoch (10 // 3), 1 item sits out
    for e in range(2):
        epoch = [x for f in firsts for x in f[e * 3:(e + 1) * 3]]
        assert len(set(epoch)) == 9 and set(epoch) <= set(items)
    assert firsts[0][:3] != firsts[0][3:]
    ref = list(islice(ListStream(items, seed=2, world_size=3, rank=1), 20))
    for k in (0, 1, 3, 7, 11):
        stream = ListStream(items, seed=2, world_size=3, rank=1, start=k)
        assert list(islice(stream, 20 - k)) == ref[k:] and stream.position == 20, k
        assert stream.epoch == 19 // 3
    with pytest.raises(ValueError, match="3 items are too few for 2 processes x 2 workers"):
        ListStream(items[:3], world_size=2, num_workers=2)


# ------------------------------------------------------------------------------ DataLoader workers

class _OneEpoch(torch.utils.data.IterableDataset):
    """Builds this worker's ShardStream (module level: spawned workers unpickle it)."""

    def __init__(self, urls):
        self.urls = urls

    def __iter__(self):
        worker, num_workers = current_worker()
        stream = ShardStream(self.urls, seed=7, shuffle_buffer=4, worker=worker, num_workers=num_workers)
        for s in stream:
            if stream.epoch > 0:
                return
            yield worker, s["__key__"]


def test_dataloader_workers_read_each_sample_once(shards):
    assert current_worker() == (0, 1)
    loader = torch.utils.data.DataLoader(_OneEpoch(shards), batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    by_worker = {0: [], 1: []}
    for worker, key in loader:
        by_worker[int(worker)].append(key)
    assert sorted(by_worker[0] + by_worker[1]) == sorted(k for ks in shard_keys(SIZES) for k in ks)
    for w in range(2):  # each worker ran exactly the slot stream it would in this process
        expected = epochs_of(ShardStream(shards, seed=7, shuffle_buffer=4, worker=w, num_workers=2), 1)[0]
        assert by_worker[w] == [s["__key__"] for s in expected]
