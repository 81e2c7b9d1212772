"""Every shipped recipe loads and validates (keys, types, objectives and their args) without data,
and the real-data image recipes read webdataset shards by default."""
from __future__ import annotations

import glob
import os

import pytest

from xvl import config as C
from xvl.train.loop import validate_objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))) + [os.path.join(ROOT, "xvl", "recipes", "demo.yaml")]
REAL_IMAGE_RECIPES = ["flickr8k-ml", "flickr8k-ml-tiny", "cclm", "uc2", "rc3"]


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_loads_and_its_objectives_validate(path):
    cfg = C.load(path)
    validate_objectives(cfg)


@pytest.mark.parametrize("name", REAL_IMAGE_RECIPES)
def test_real_data_recipes_stream_shards_made_from_the_jsonl(name):
    cfg = C.load(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.data.train is None
    image = [s for s in cfg.data.sources if s.type == "shards"]
    assert len(image) == 1 and image[0].make_from == "flickr8k-ml/train.jsonl"
    assert cfg.data.val == "flickr8k-ml/val.jsonl"
