"""The real flickr8k-ml data path (../shared/data): read, train a few steps, evaluate every language.
Skipped with a reason when the shared data is absent."""
from __future__ import annotations

import json
import os

import pytest

from conftest import SHARED_DATA
from xvl.cli import main
from xvl.data.captions import load_caption_records

FLICKR = os.path.join(SHARED_DATA, "flickr8k-ml")
pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not os.path.exists(os.path.join(FLICKR, "val.jsonl")),
                                 reason=f"shared data not found at {FLICKR}")]
TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")


def test_flickr8k_ml_val_reads_with_all_languages():
    recs = load_caption_records(os.path.join(FLICKR, "val.jsonl"))
    assert len(recs) == 242
    assert {"en", "de", "fr", "cs", "zh", "nl"} <= {lang for r in recs for lang in r.captions}
    no_mt = load_caption_records(os.path.join(FLICKR, "val.jsonl"), exclude_kinds=["machine_translation"])
    assert sum(len(v) for r in no_mt for v in r.captions.values()) < sum(len(v) for r in recs for v in r.captions.values())


def test_train_and_evaluate_on_real_photos(tmp_path):
    out = tmp_path / "run"
    assert main(["train", TINY, f"data.root={SHARED_DATA}", "data.train=flickr8k-ml/train.jsonl",
                 "data.val=flickr8k-ml/val.jsonl", "data.max_train_records=64", f"train.output_dir={out}",
                 "train.max_steps=4", "train.ckpt_every=0"]) == 0
    with open(out / "eval_retrieval.json") as f:
        ev = json.load(f)
    assert set(ev["per_language"]) == {"en", "de", "fr", "cs", "zh", "nl"}
    assert ev["per_language"]["en"]["n_images"] == 242


def test_recipe_shards_are_made_from_the_jsonl_on_first_use_and_train(tmp_path):
    """The real-data recipes' data path: flickr8k-ml train converted to shards by make_from, then
    streamed; a second run reads the shards it finds instead of converting again."""
    shards = tmp_path / "shards"
    sources = f"[{{type: shards, path: {shards}, make_from: flickr8k-ml/train.jsonl}}]"
    args = ["train", TINY, f"data.root={SHARED_DATA}", "data.train=null", f"data.sources={sources}",
            "data.val=flickr8k-ml/val.jsonl", "train.max_steps=3", "train.ckpt_every=0"]
    assert main([*args, f"train.output_dir={tmp_path / 'a'}"]) == 0
    with open(shards / "index.json") as f:
        index = json.load(f)
    assert index["n_samples"] == 7606 and len(index["shards"]) == 8
    made = os.path.getmtime(shards / "index.json")
    assert main([*args, f"train.output_dir={tmp_path / 'b'}"]) == 0
    assert os.path.getmtime(shards / "index.json") == made
    with open(tmp_path / "b" / "eval_retrieval.json") as f:
        assert set(json.load(f)["per_language"]) == {"en", "de", "fr", "cs", "zh", "nl"}
