"""XVLModel: features, pooling, save/load round trip, local pretrained weights for both towers."""
from __future__ import annotations

import os

import pytest
import torch

import xvl
from xvl.models.model import XVLModel
from xvl.models.text import mean_pool

from conftest import tiny_model_config


def _inputs(model):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    texts = model.tokenize(["two red circles", "un carré bleu vert rouge", "两个红色的圆形"])
    return images, texts


def test_forward_returns_features(tiny_model):
    images, texts = _inputs(tiny_model)
    out = tiny_model({"image": images, **texts})
    assert out["image_embeds"].shape == (3, 16) and out["text_embeds"].shape == (3, 16)
    assert torch.allclose(out["image_embeds"].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out["image_tokens"].shape == (3, 16, 32)  # (32/8)^2 patches, CLS removed
    assert out["text_tokens"].shape[:2] == texts["input_ids"].shape
    assert float(out["logit_scale"].detach()) == pytest.approx(1 / 0.07, rel=1e-4)


def test_mean_pooling_ignores_padding(tiny_model):
    alone = tiny_model.tokenize(["rot"])
    padded = tiny_model.tokenize(["rot", "un carré bleu vert rouge trois deux un"])
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        a = tiny_model.encode_text(**alone)
        b = tiny_model.encode_text(**padded)[:1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mean_pool_reference():
    h = torch.arange(12.0).view(1, 4, 3)
    m = torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(mean_pool(h, m), h[:, :2].mean(1))


def test_save_load_round_trip_is_exact(tiny_model, tmp_path):
    images, texts = _inputs(tiny_model)
    with torch.no_grad():
        img0, txt0 = tiny_model.encode_image(images), tiny_model.encode_text(**texts)
    tiny_model.save_pretrained(str(tmp_path / "m"))
    files = set(os.listdir(tmp_path / "m"))
    assert {"model.safetensors", "xvl_config.json", "text_config.json", "preprocessor_config.json",
            "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # no pickle
    loaded = xvl.load(str(tmp_path / "m"))
    texts2 = loaded.tokenize(["two red circles", "un carré bleu vert rouge", "两个红色的圆形"])
    assert torch.equal(texts2["input_ids"], texts["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), img0)
        assert torch.equal(loaded.encode_text(**texts2), txt0)
    # the preprocessing travels too
    from PIL import Image

    pil = Image.new("RGB", (50, 40), (200, 10, 10))
    assert torch.equal(loaded.preprocess(pil), tiny_model.preprocess(pil))


def test_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an xvl model directory"):
        xvl.load(str(tmp_path))


def test_local_pretrained_weights_for_both_towers(tiny_tokenizer, tmp_path):
    """Users start from local checkpoints: a timm safetensors file and a HF model directory."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    donor = XVLModel(tiny_model_config(), tiny_tokenizer)
    vision_file = tmp_path / "vit.safetensors"
    save_file(donor.vision.model.state_dict(), str(vision_file))
    text_dir = tmp_path / "text"
    donor.text.model.save_pretrained(str(text_dir))

    cfg = tiny_model_config()
    cfg.vision.checkpoint = str(vision_file)
    cfg.text.pretrained = str(text_dir)
    torch.manual_seed(99)  # different init: equality below can only come from loading
    model = XVLModel(cfg, tiny_tokenizer)
    for k, v in donor.vision.model.state_dict().items():
        assert torch.equal(model.vision.model.state_dict()[k], v), k
    for k, v in donor.text.model.state_dict().items():
        assert torch.equal(model.text.model.state_dict()[k], v), k


def test_cnn_backbone_gives_patch_tokens(tiny_tokenizer):
    cfg = tiny_model_config()
    cfg.vision.name, cfg.vision.kwargs = "resnet10t", {}
    model = XVLModel(cfg, tiny_tokenizer).eval()
    out = model({"image": torch.randn(2, 3, 32, 32)})
    assert out["image_tokens"].ndim == 3 and out["image_tokens"].shape[0] == 2
    assert out["image_embeds"].shape == (2, 16)


def test_tokenizer_vocab_mismatch_is_an_error(tiny_tokenizer):
    cfg = tiny_model_config()
    cfg.text.config = dict(cfg.text.config, vocab_size=10)
    with pytest.raises(ValueError, match="do not belong together"):
        XVLModel(cfg, tiny_tokenizer)


def test_text_pair_and_masked_branches(tiny_model):
    a = tiny_model.tokenize(["two red circles", "un carré"])
    b = tiny_model.tokenize(["zwei rote Kreise", "a square"])
    batch = {**a, "pair_input_ids": b["input_ids"], "pair_attention_mask": b["attention_mask"],
             "mlm_input_ids": a["input_ids"], "mlm_attention_mask": a["attention_mask"]}
    with torch.no_grad():
        out = tiny_model(batch)
        alone = tiny_model.encode_text(**b)
    torch.testing.assert_close(out["pair_embeds"], alone)  # the pair view is the same tower
    assert len(out["text_hidden_states"]) == 2  # embeddings + 1 layer
    torch.testing.assert_close(out["text_hidden_states"][-1], out["text_tokens"])
    torch.testing.assert_close(out["mlm_tokens"], out["text_tokens"])  # same ids -> same states
