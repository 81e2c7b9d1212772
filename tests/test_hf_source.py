"""HF datasets source: loading, column checks, row conversion, and the map-style / streaming
HFStream (partition, determinism, exact resume, skips, DataLoader workers). All data is built in
tmp dirs; nothing is downloaded."""
from __future__ import annotations

import json
import os
from itertools import islice

import numpy as np
import pytest
import torch.utils.data

datasets = pytest.importorskip("datasets")
from PIL import Image  # noqa: E402

from xvl.data.hf_source import (HFColumns, HFStream, check_columns, examples_from_hf,  # noqa: E402
                                image_ext, load_hf_dataset, prepare_dataset, row_to_example)
from xvl.data.shard_format import decode_record, decode_sample, encode_record  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N = 9
LANGS = ["en", "deu", "fr"]  # "deu" checks normalisation to "de"


def _pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)


def _table(n: int = N) -> dict:
    return {
        "image": [Image.fromarray(_pixels(i)) for i in range(n)],
        "caption": [f"caption {i}" for i in range(n)],
        "lang": [LANGS[i % 3] for i in range(n)],
        "id": [f"img{i}" for i in range(n)],
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 9 rows as a save_to_disk dir, a parquet file, and a jsonl + image files."""
    root = tmp_path_factory.mktemp("hf")
    ds = datasets.Dataset.from_dict(_table()).cast_column("image", datasets.Image())
    ds.save_to_disk(str(root / "saved"))
    ds.to_parquet(str(root / "d.parquet"))
    (root / "imgs").mkdir()
    with open(root / "d.jsonl", "w") as f:
        for i in range(N):
            Image.fromarray(_pixels(i)).save(root / "imgs" / f"{i}.png")
            f.write(json.dumps({"file": f"imgs/{i}.png", "text": f"caption {i}",
                                "language": LANGS[i % 3], "id": f"img{i}"}) + "\n")
    return {"root": root, "ds": ds, "saved": str(root / "saved"),
            "parquet": str(root / "d.parquet"), "jsonl": str(root / "d.jsonl"),
            "cache": str(root / "cache")}


COLS = HFColumns(lang="lang", id="id")


def _raw(ex):
    return {"__key__": "x", "json": encode_record(ex.record), ex.image_ext: ex.image}


def _ids(samples):
    return [decode_record(s)["image_id"] for s in samples]


# ------------------------------------------------------------------ loading and columns
def test_column_checks_name_missing_columns_and_language(data):
    ds = data["ds"]
    with pytest.raises(ValueError, match=r"caption='text'.*available columns: \['image', 'caption', 'lang', 'id'\]"):
        check_columns(ds, HFColumns(caption="text", lang="lang"))
    with pytest.raises(ValueError, match="id='image_id'"):
        HFStream(ds, HFColumns(lang="lang", id="image_id"))
    with pytest.raises(ValueError, match="no 'lang' field"):  # no language source at all
        check_columns(ds, HFColumns())
    with pytest.raises(ValueError, match="unknown language code"):
        HFColumns(default_lang="xx-nope")
    # examples_from_hf checks at the call, before any row is read
    with pytest.raises(ValueError, match="lang='language'"):
        examples_from_hf(data["saved"], lang_column="language")
    with pytest.raises(TypeError, match="DatasetDict"):
        prepare_dataset(datasets.DatasetDict({"train": ds}), COLS)
    # captions that carry their language need no lang column
    caps = datasets.Dataset.from_dict({"image": [b"x"], "captions": [[{"lang": "de", "text": "t"}]]})
    check_columns(caps, HFColumns(caption="captions"))


def test_load_errors_and_splits(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_hf_dataset(str(tmp_path / "nope.parquet"))
    with pytest.raises(FileNotFoundError, match="neither a save_to_disk directory"):
        load_hf_dataset(str(tmp_path))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="one type"):
        load_hf_dataset(str(tmp_path / "x.txt"))
    dd = datasets.DatasetDict({"train": data["ds"], "validation": data["ds"].select([4, 5])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_hf_dataset(str(tmp_path / "dd"))) == N  # default split: train
    assert load_hf_dataset(str(tmp_path / "dd"), split="validation")["id"] == ["img4", "img5"]
    with pytest.raises(ValueError, match=r"no split 'test'; available splits: \['train', 'validation'\]"):
        load_hf_dataset(str(tmp_path / "dd"), split="test")
    with pytest.raises(ValueError, match="single dataset"):
        load_hf_dataset(data["saved"], split="validation")
    # a directory of parquet files: splits from the file names
    (tmp_path / "pq" / "data").mkdir(parents=True)
    data["ds"].select(range(6)).to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    data["ds"].select([7, 8]).to_parquet(str(tmp_path / "pq" / "data" / "validation-00000-of-00001.parquet"))
    val = load_hf_dataset(str(tmp_path / "pq"), split="validation", cache_dir=data["cache"])
    assert val["id"] == ["img7", "img8"]
    streamed = load_hf_dataset(data["saved"], streaming=True, num_shards=3)
    assert isinstance(streamed, datasets.IterableDataset) and streamed.num_shards == 3


def test_hub_names_go_to_load_dataset_without_remote_code(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": [1]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_hf_dataset("someorg/captions", streaming=False)
    assert calls == [("someorg/captions", {"split": None, "streaming": False, "data_files": None,
                                           "cache_dir": None})]
    assert ds["a"] == [1]
    assert image_ext(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp" and image_ext(b"\xff\xd8\xff\xe0") == "jpg"


# ------------------------------------------------------------------ rows
def test_row_to_example_content_and_pixels(data):
    ds = prepare_dataset(data["ds"], COLS)
    assert ds[0]["image"]["bytes"] is not None  # cast to decode=False: undecoded bytes
    ex = row_to_example(ds[1], 1, COLS)
    assert ex.error is None and ex.image_ext == "png" and ex.source_id == "row 1 (img1)"
    assert ex.record == {"image_id": "img1", "captions": [{"lang": "de", "text": "caption 1"}]}
    record, image = decode_sample(_raw(ex))
    assert record == ex.record and np.array_equal(np.asarray(image), _pixels(1))

    # flickr8k-ml captions (extra keys kept), a decoded PIL image (re-encoded as PNG), no id column
    cols = HFColumns(caption="captions")
    row = {"image": Image.fromarray(_pixels(7)),
           "captions": [{"lang": "de", "text": "ein Hund", "kind": "native", "source": None},
                        {"lang": "zh-CN", "text": "", "kind": "human_translation", "source": "m30k"}]}
    ex = row_to_example(row, 42, cols)
    assert ex.record == {"image_id": "42", "captions": [
        {"lang": "de", "text": "ein Hund", "kind": "native"},
        {"lang": "zh", "text": "", "kind": "human_translation", "source": "m30k"}]}  # empty kept
    assert np.array_equal(np.asarray(decode_sample(_raw(ex))[1]), _pixels(7))

    # list of strings with a language per caption; a dict of lists (Sequence of a struct)
    cols = HFColumns(caption="c", lang="l")
    ex = row_to_example({"image": b"\x89PNG\r\n\x1a\n...", "c": ["a", "b"], "l": ["en", "fra"]}, 0, cols)
    assert ex.record["captions"] == [{"lang": "en", "text": "a"}, {"lang": "fr", "text": "b"}]
    ex = row_to_example({"image": b"\x89PNG\r\n\x1a\n", "c": {"text": ["a", "b"], "lang": ["cs", "nl"]},
                         "l": None}, 0, HFColumns(caption="c", lang="l", default_lang="en"))
    assert ex.record["captions"] == [{"text": "a", "lang": "cs"}, {"text": "b", "lang": "nl"}]

    # unusable rows: an error, never an exception
    cols = HFColumns(caption="c", default_lang="en", image_root=str(data["root"]))
    assert row_to_example({"image": "imgs/none.png", "c": "x"}, 3, cols).error == \
        f"missing_image: {os.path.join(str(data['root']), 'imgs/none.png')}"
    assert row_to_example({"image": {"bytes": None, "path": None}, "c": "x"}, 3, cols).error.startswith("missing_image")
    assert row_to_example({"image": b"not an image", "c": "x"}, 3, cols).error.startswith("bad_image")
    assert row_to_example({"image": b"\xff\xd8\xff", "c": 5}, 3, cols).error.startswith("bad_caption")
    assert row_to_example({"image": b"\xff\xd8\xff", "c": [{"lang": "klingonish", "text": "x"}]},
                          3, cols).error.startswith("bad_lang")
    assert row_to_example({"image": b"\xff\xd8\xff", "c": "x"}, 3,
                          HFColumns(caption="c")).error.startswith("no_lang")


def test_examples_from_hf_order_for_every_source(data):
    expected = [("img%d" % i, LANGS[i % 3].replace("deu", "de"), "caption %d" % i) for i in range(N)]

    def summary(examples):
        out = []
        for ex in examples:
            assert ex.error is None, ex.error
            (cap,) = ex.record["captions"]
            i = int(ex.record["image_id"][3:])
            assert np.array_equal(np.asarray(decode_sample(_raw(ex))[1]), _pixels(i))
            out.append((ex.record["image_id"], cap["lang"], cap["text"]))
        return out

    assert summary(examples_from_hf(data["saved"], lang_column="lang", id_column="id")) == expected
    assert summary(examples_from_hf(data["parquet"], lang_column="lang", id_column="id",
                                    cache_dir=data["cache"])) == expected
    # string paths, relative to the jsonl's directory by default
    assert summary(examples_from_hf(data["jsonl"], image_column="file", caption_column="text",
                                    lang_column="language", id_column="id",
                                    cache_dir=data["cache"])) == expected


# ------------------------------------------------------------------ map-style stream
def test_map_stream_partition_determinism_and_resume(data):
    ds = data["ds"]
    slots = [HFStream(ds, COLS, seed=5, rank=r, world_size=2) for r in range(2)]
    assert slots[0].per_epoch == 4  # 9 rows cut to 8 for 2 slots
    epochs = [[_ids(islice(s, 8))[e * 4:(e + 1) * 4] for e in range(2)] for s in slots]
    for e in range(2):
        a, b = epochs[0][e], epochs[1][e]
        assert len(set(a + b)) == 8 and not set(a) & set(b)  # a partition of 8 of the 9 rows
        # the epoch's permutation of (seed, epoch), cut to 8, dealt round-robin to the slots
        perm = np.random.default_rng([5, e, 0x4846]).permutation(N)[:8]
        assert a == [f"img{i}" for i in perm[0::2]] and b == [f"img{i}" for i in perm[1::2]]
    assert epochs[0][0] != epochs[0][1]  # a new permutation per epoch
    # keys are row indices; samples decode to the row's pixels
    s = next(iter(slots[1]))
    assert s["__key__"] == "%09d" % slots[1].epoch_order(0)[0]
    assert np.array_equal(np.asarray(decode_sample(s)[1]), _pixels(int(s["__key__"])))

    first = list(islice(HFStream(ds, COLS, seed=5, rank=1, world_size=2), 12))
    assert first == list(islice(HFStream(ds, COLS, seed=5, rank=1, world_size=2), 12))
    assert _ids(first) != _ids(islice(HFStream(ds, COLS, seed=6, rank=1, world_size=2), 12))
    for k in (1, 4, 7):  # within epoch 0, at the boundary, inside epoch 1
        stream = HFStream(ds, COLS, seed=5, rank=1, world_size=2, start=k)
        assert list(islice(stream, 5)) == first[k:k + 5]
        assert stream.position == k + 5

    with pytest.raises(ValueError, match="too few for 4 slots"):
        HFStream(ds.select([0, 1, 2]), COLS, world_size=2, num_workers=2)


def test_map_stream_counts_missing_images_and_resumes_exactly(data, tmp_path):
    root = data["root"]
    files = [f"imgs/{i}.png" for i in range(5)]
    files[2] = "imgs/gone.png"
    ds = datasets.Dataset.from_dict({"file": files, "text": list("abcde")})
    cols = HFColumns(image="file", caption="text", default_lang="en", image_root=str(root))

    skipped = []
    stream = HFStream(ds, cols, seed=1, on_skip=lambda reason, detail: skipped.append((reason, detail)))
    out, positions = [], []
    for sample in islice(stream, 10):
        out.append(sample)
        positions.append(stream.position)
    order = np.concatenate([stream.epoch_order(e) for e in range(4)])
    consumed = order[:stream.position]
    assert [int(s["__key__"]) for s in out] == [i for i in consumed if i != 2]
    assert len(skipped) == int((consumed == 2).sum()) >= 2
    assert all(r == "missing_image" and d.endswith("gone.png") for r, d in skipped)
    assert stream.position == len(out) + len(skipped)
    # resume from any position reproduces the rest, skipped rows included
    for j in (1, 3, 6):
        resumed = HFStream(ds, cols, seed=1, start=positions[j], on_skip=lambda *a: None)
        assert list(islice(resumed, 10 - j - 1)) == out[j + 1:]


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("source", ["saved4", "parquet"])
def test_streaming_partition_determinism_and_resume(data, source):
    if source == "saved4":  # 4 shards: each of 2 slots gets whole shards
        it = load_hf_dataset(data["saved"], streaming=True, num_shards=4)
    else:  # 1 shard: each slot keeps every 2nd row
        it = load_hf_dataset(data["parquet"], streaming=True, cache_dir=data["cache"])
    assert isinstance(it, datasets.IterableDataset)

    def stream(rank, **kw):
        return HFStream(it, COLS, seed=3, shuffle_buffer=4, rank=rank, world_size=2, **kw)

    slots = [stream(r) for r in range(2)]
    # per-slot epoch sizes (may change per epoch: shards are dealt after a per-epoch shuffle)
    sizes = [[s.epoch_length(e) for e in range(2)] for s in slots]
    assert [a + b for a, b in zip(*sizes)] == [N, N]
    runs = [list(islice(s, sum(sz))) for s, sz in zip(slots, sizes)]
    for e in range(2):
        per_slot = [_ids(r[sum(sz[:e]):sum(sz[:e + 1])]) for r, sz in zip(runs, sizes)]
        assert sorted(per_slot[0] + per_slot[1]) == sorted(f"img{i}" for i in range(N))
    assert _ids(runs[0][:sizes[0][0]]) != _ids(runs[0][sizes[0][0]:])  # set_epoch reshuffles
    s = runs[0][0]
    record, image = decode_sample(s)
    assert np.array_equal(np.asarray(image), _pixels(int(record["image_id"][3:])))
    assert s["__key__"] == "%09d" % 0  # streaming keys are positions

    first = list(islice(stream(1), 12))
    assert first == list(islice(stream(1), 12))
    assert _ids(first) != _ids(islice(HFStream(it, COLS, seed=4, shuffle_buffer=4, rank=1,
                                               world_size=2), 12))
    e0, e1 = sizes[1]
    for k in (2, e0, e0 + 1, e0 + e1 + 1):  # inside, at and past epoch ends
        resumed = stream(1, start=k)
        assert list(islice(resumed, 12 - k)) == first[k:]
        assert resumed.position == 12


def test_streaming_missing_image_and_too_few_rows(data):
    it = load_hf_dataset(data["jsonl"], streaming=True, cache_dir=data["cache"])
    cols = HFColumns(image="file", caption="text", lang="language", id="id",
                     image_root=str(data["root"]))
    it = it.map(lambda r: {"file": "imgs/gone.png" if r["id"] == "img4" else r["file"]})
    skipped = []
    stream = HFStream(it, cols, seed=0, on_skip=lambda r, d: skipped.append(r))
    out = list(islice(stream, 2 * (N - 1)))  # two epochs of the 8 usable rows
    assert sorted(_ids(out[:N - 1])) == sorted(f"img{i}" for i in range(N) if i != 4)
    assert "img4" not in _ids(out) and skipped[:1] == ["missing_image"]
    assert stream.position == len(out) + len(skipped)

    one = datasets.Dataset.from_dict({"image": [b"\xff\xd8\xff"], "caption": ["x"]}).to_iterable_dataset()
    with pytest.raises(ValueError, match="slot 1 of 2 got no rows"):
        next(iter(HFStream(one, HFColumns(default_lang="en"), world_size=2, rank=1)))


# ------------------------------------------------------------------ DataLoader workers
class _WorkerStream(torch.utils.data.IterableDataset):
    """Builds one HFStream per DataLoader worker (module level: spawned workers unpickle it)."""

    def __init__(self, dataset, per_worker):
        self.dataset, self.per_worker = dataset, per_worker

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        stream = HFStream(self.dataset, HFColumns(default_lang="en", id="id"), seed=2,
                          shuffle_buffer=4, worker=info.id, num_workers=info.num_workers)
        for raw in islice(stream, self.per_worker):
            yield info.id, decode_record(raw)["image_id"]


def test_dataloader_workers_see_each_row_once_per_epoch():
    # 8 rows in 4 shards: 2 shards (4 rows) per worker and epoch. Were the rows split again by HF
    # inside the worker, each would get 2 rows per epoch and its first 4 ids would repeat.
    ds = datasets.Dataset.from_dict({"image": [b"\x89PNG\r\n\x1a\n"] * 8, "caption": list("abcdefgh"),
                                     "id": [f"r{i}" for i in range(8)]}).to_iterable_dataset(num_shards=4)
    loader = torch.utils.data.DataLoader(_WorkerStream(ds, 8), batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    by_worker = {0: [], 1: []}
    for worker, image_id in loader:
        by_worker[int(worker)].append(image_id)
    assert [len(v) for v in by_worker.values()] == [8, 8]
    for e in range(2):
        a, b = by_worker[0][e * 4:(e + 1) * 4], by_worker[1][e * 4:(e + 1) * 4]
        assert sorted(a + b) == [f"r{i}" for i in range(8)], (e, by_worker)
