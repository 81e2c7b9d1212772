"""scripts/damage_shards.py: the damage it reports is exactly what one pass of the training reader
skips (bad images, bad JSON, the samples lost after a cut)."""
from __future__ import annotations

import importlib.util
import json
import os
import random

import pytest

from xvl.cli import main

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "damage_shards.py")


def _script():
    spec = importlib.util.spec_from_file_location("damage_shards", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from xvl.data.demo import generate_demo

    demo = generate_demo(str(tmp_path_factory.mktemp("demo")), n_train=40, n_val=4, image_size=32, seed=0)
    out = tmp_path_factory.mktemp("shards") / "train"
    assert main(["data", "make-shards", "--jsonl", demo.train, "--out", str(out), "--max-samples", "16",
                 "--no-progress"]) == 0
    return out


def test_one_pass_skips_exactly_the_damage(shards, tmp_path):
    from xvl.data.captions import CaptionItemBuilder
    from xvl.data.images import SkipCounter
    from xvl.data.stream_sources import CaptionItemMaker
    from xvl.data.streaming import ShardStream, expand_shard_spec

    out = tmp_path / "damaged"
    summary = _script().damage(str(shards), str(out), bad_images=3, bad_json=2, cut_shard=1, cut_at=0.5, seed=1)
    with open(out / "damage.json") as f:
        assert json.load(f) == summary
    assert len(summary["bad_images"]["samples"]) == 3 and len(summary["bad_json"]["samples"]) == 2
    cut = summary["cut"]
    assert cut["samples_listed"] == 16 and 0 < cut["samples_readable"] < 16

    langs = ["de", "en", "es", "fr", "ja", "ru", "zh"]
    maker = CaptionItemMaker(CaptionItemBuilder(lambda img: img, {lang: i for i, lang in enumerate(langs)}))
    skips = SkipCounter("test")
    stream = ShardStream(expand_shard_spec(str(out)), seed=0, shuffle_buffer=0, on_skip=skips.skip)
    made, rng = [], random.Random(0)
    for raw in stream:
        if stream.epoch > 0:
            break
        item = maker(raw, rng, skips)
        if item is not None:
            made.append(raw["__key__"])
    assert skips.as_dict() == {"bad_image": 3, "bad_sample": 2, "truncated_shard": 1}
    damaged = set(summary["bad_images"]["samples"]) | set(summary["bad_json"]["samples"])
    assert not damaged & set(made)
    assert len(made) == 40 - 5 - cut["samples_lost"]


def test_refuses_to_overwrite_and_to_cut_the_damaged_shard(shards, tmp_path):
    mod = _script()
    with pytest.raises(ValueError, match="cut-shard"):
        mod.damage(str(shards), str(tmp_path / "a"), 1, 0, cut_shard=0, cut_at=0.5, seed=0)
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        mod.damage(str(shards), str(tmp_path / "b"), 1, 0, cut_shard=1, cut_at=0.5, seed=0)
