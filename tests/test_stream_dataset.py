"""Streamed batches: weighted source mixing, exact batch sizes with counted skips, resume without
replay, and the item makers (caption records / aligned text groups from raw shard samples)."""
from __future__ import annotations

import io
import random
from itertools import islice

import pytest
import torch

from xvl.data.captions import PAIR_NONE, PAIR_STRICT, PAIR_WEAK, CaptionItemBuilder, CaptionRecord
from xvl.data.images import SkipCounter
from xvl.data.shard_format import encode_record, sample_key
from xvl.data.stream_dataset import StreamingBatches, StreamSource, item_rng
from xvl.data.stream_sources import AlignedGroupItemMaker, CaptionItemMaker

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingStream:
    """A fake slot stream: integers ``offset + slot-local position``; every ``bad_every``-th is bad."""

    def __init__(self, offset, start):
        self.offset, self.position = offset, start

    def __iter__(self):
        while True:
            value = self.offset + self.position
            self.position += 1
            yield value


class OpenCounting:
    def __init__(self, offset):
        self.offset = offset

    def __call__(self, *, seed, rank, world_size, worker, num_workers, start, on_skip):
        return CountingStream(self.offset, start)


def make_int(raw, rng, skips):
    if raw % 7 == 3:  # a "corrupt" sample
        skips.skip("bad_image", str(raw))
        return None
    return {"value": raw, "draw": rng.random()}


def collate_ints(items):
    return {"values": [i["value"] for i in items], "draws": [i["draw"] for i in items]}


def batches(start_batch=0, positions=None, seed=0, weights=(3.0, 1.0)):
    sources = [StreamSource("a", "t", weights[0], OpenCounting(0), make_int),
               StreamSource("b", "t", weights[1], OpenCounting(1_000_000), make_int)]
    return StreamingBatches(sources, {"t": collate_ints}, batch_size=5, seed=seed, start_batch=start_batch,
                            positions=positions)


def test_batches_are_full_skips_counted_and_sources_mixed_by_weight():
    out = list(islice(iter(batches()), 200))
    assert all(len(b["values"]) == 5 for b in out)
    assert not any(v % 7 == 3 for b in out for v in b["values"])
    from_a = [b for b in out if b["values"][0] < 1_000_000]
    assert 0.65 < len(from_a) / len(out) < 0.85  # weight 3:1
    # every value of a source appears once, in order, and the skipped ones are reported per batch
    a_values = [v for b in from_a for v in b["values"]]
    expected = [v for v in range(a_values[-1] + 1) if v % 7 != 3]
    assert a_values == expected
    n_bad = sum(b["data_skips"].get("bad_image", 0) for b in out)
    pos = out[-1]["data_state"]["positions"]
    raw_seen = list(range(pos["a"])) + list(range(1_000_000, 1_000_000 + pos["b"]))
    assert n_bad == sum(1 for v in raw_seen if v % 7 == 3) > 0
    # positions are raw counts (bad samples included)
    last_a = [b for b in out if b["values"][0] < 1_000_000][-1]
    assert last_a["data_state"]["positions"]["a"] == last_a["values"][-1] + 1


def test_resume_continues_exactly_where_the_run_stopped():
    full = list(islice(iter(batches(seed=3)), 40))
    cut = 17
    state = full[cut - 1]["data_state"]
    resumed = list(islice(iter(batches(seed=3, start_batch=cut, positions={state["worker"]: state["positions"]})),
                          40 - cut))
    for a, b in zip(full[cut:], resumed):
        assert a["values"] == b["values"] and a["draws"] == b["draws"]
    # the consumed samples never come again
    seen = {v for b in full[:cut] for v in b["values"]}
    assert not seen & {v for b in resumed for v in b["values"]}


def test_bad_weights_fail_at_construction():
    with pytest.raises(ValueError):
        batches(weights=(0.0, 0.0))


def _png(color=(200, 10, 10), size=(12, 10)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _builder(pair_sampling="none", with_objects=False):
    transform = lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float32)  # noqa: E731
    return CaptionItemBuilder(transform, {"en": 0, "de": 1, "fr": 2}, pair_sampling=pair_sampling,
                              with_objects=with_objects)


def test_caption_item_maker_parses_decodes_and_counts_skips():
    maker = CaptionItemMaker(_builder(pair_sampling="prefer_strict", with_objects=True))
    rec = {"image_id": "x", "width": 12, "height": 10,
           "captions": [{"lang": "en", "text": "a red box", "kind": "original", "source": "s1"},
                        {"lang": "de", "text": "eine rote Kiste", "kind": "human_translation", "source": "s1"},
                        {"lang": "sw", "text": "sanduku jekundu"}, {"lang": "fr", "text": "  "}],
           "objects": [{"box": [0, 0, 6, 5], "labels": {"en": "box"}}]}
    raw = {"__key__": sample_key(0), "__url__": "mem", "json": encode_record(rec), "png": _png()}
    skips = SkipCounter("t")
    item = maker(raw, random.Random(0), skips)
    assert item["text"] in ("a red box", "eine rote Kiste") and item["pair_kind"] == PAIR_STRICT
    assert {item["lang"], item["pair_lang"]} == {0, 1}
    assert item["image"].tolist() == [200.0, 10.0, 10.0]
    assert item["objects"] == [{"box": [0.0, 0.0, 0.5, 0.5], "labels": {"en": "box"}}]
    assert skips.counts == {"unknown_language": 1, "empty_caption": 1}
    # an undecodable image, a missing image, a record without captions, broken JSON: None, counted
    bad = [dict(raw, png=b"not an image"), {k: v for k, v in raw.items() if k != "png"},
           dict(raw, json=encode_record({"image_id": "y", "captions": []})), dict(raw, json=b"{oops")]
    skips = SkipCounter("t")
    assert [maker(r, random.Random(0), skips) for r in bad] == [None] * 4
    assert {k: skips.counts[k] for k in ("bad_image", "no_image", "no_usable_caption", "bad_sample")} == \
        {"bad_image": 1, "no_image": 1, "no_usable_caption": 1, "bad_sample": 1}


def test_pair_kinds_strict_weak_and_none():
    b = _builder(pair_sampling="prefer_strict")
    both = CaptionRecord("i", "p", {"en": ["a"], "de": ["b", "c"]}, {"en": ["s"], "de": [None, "s"]})
    for seed in range(20):
        lang, j = "en", 0
        plang, k, kind = b.pick_pair(both, lang, j, random.Random(seed))
        assert (plang, k, kind) == ("de", 1, PAIR_STRICT)  # the translation, never the native caption
    b_any = _builder(pair_sampling="any")
    kinds = {b_any.pick_pair(both, "en", 0, random.Random(s))[2] for s in range(40)}
    assert kinds == {PAIR_STRICT, PAIR_WEAK}
    single = CaptionRecord("i", "p", {"en": ["only"]}, {"en": [None]})
    assert b.pick_pair(single, "en", 0, random.Random(0)) == ("en", 0, PAIR_NONE)


def test_aligned_group_maker_pivot_all_and_skips():
    ids = {"en": 0, "de": 1, "fr": 2}
    raw = {"__key__": "000000001", "json": encode_record({"id": "1", "texts": {"en": "hi", "de": "hallo",
                                                                                "fr": "salut", "xx": "??"}})}
    pivot = AlignedGroupItemMaker(ids, pairs="pivot:en", swap=False)
    skips = SkipCounter("t")
    for s in range(10):
        item = pivot(raw, random.Random(s), skips)
        assert item["pair_text"] == "hi" and item["pair_lang"] == 0 and item["text"] in ("hallo", "salut")
    assert skips.counts["unknown_language"] == 10
    every = AlignedGroupItemMaker(ids, pairs="all")
    langs = {frozenset((every(raw, random.Random(s), skips)["lang"],
                        every(raw, random.Random(s), skips)["pair_lang"])) for s in range(30)}
    assert langs == {frozenset({0, 1}), frozenset({0, 2}), frozenset({1, 2})}
    lonely = {"__key__": "2", "json": encode_record({"id": "2", "texts": {"en": "hi", "de": " "}})}
    assert pivot(lonely, random.Random(0), skips) is None and skips.counts["too_few_texts"] == 1


def test_item_rng_depends_on_every_part_of_the_position():
    base = item_rng(0, 0, 0, 0, 5).random()
    assert base == item_rng(0, 0, 0, 0, 5).random()
    for args in [(1, 0, 0, 0, 5), (0, 1, 0, 0, 5), (0, 0, 1, 0, 5), (0, 0, 0, 1, 5), (0, 0, 0, 0, 6)]:
        assert item_rng(*args).random() != base
