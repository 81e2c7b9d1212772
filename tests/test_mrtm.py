"""MRTM (UC2's masked region-to-token modelling on ViT patch blocks): masks, targets, masked encoder,
skipping without boxes, pseudo-labeller hook, and a loss that learns on demo data."""
from __future__ import annotations

import logging

import pytest
import torch

from xvl.config import FusionConfig, VisionConfig
from xvl.data.masking import IGNORE_INDEX, mask_patch_blocks
from xvl.models.model import XVLModel
from xvl.objectives.base import build_objective
from xvl.objectives.mrtm import (
    MRTMInputs,
    assign_patches_to_boxes,
    build_patch_targets,
    encode_masked_image,
    first_label_token,
)
from conftest import tiny_model_config


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def fused_model(tokenizer, patch_size=8, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_model_config(fusion=FusionConfig(layers=1, heads=2))
    cfg.vision = VisionConfig(name="vit_tiny_patch16_224", image_size=32,
                              kwargs={"patch_size": patch_size, "embed_dim": 32, "depth": 1, "num_heads": 2})
    return XVLModel(cfg, tokenizer)


def tid(tok, piece):
    i = tok.convert_tokens_to_ids(piece)
    assert i != tok.unk_token_id, piece
    return i


# ----------------------------------------------------------------------------- patch <-> box
def test_patches_under_boxes_exact():
    # 4x4 grid: patch centres at 0.125, 0.375, 0.625, 0.875 on each axis; index = row * 4 + col
    boxes = [[0.0, 0.0, 0.5, 0.5],      # rows 0-1, cols 0-1
             [0.25, 0.75, 0.75, 1.0],   # row 3, cols 1-2
             [0.6, 0.0, 0.7, 0.3]]      # contains the centre x=0.625, y=0.125 only: patch 2
    owner = assign_patches_to_boxes(boxes, (4, 4)).view(4, 4)
    expected = torch.tensor([[0, 0, 2, -1],
                             [0, 0, -1, -1],
                             [-1, -1, -1, -1],
                             [-1, 1, 1, -1]])
    assert torch.equal(owner, expected)
    # a box edge through a centre: x0 is inclusive, x1 exclusive
    assert assign_patches_to_boxes([[0.375, 0.0, 0.625, 0.25]], (4, 4)).tolist()[:4] == [-1, 0, -1, -1]
    # non-square grid (2 rows x 3 cols): centres x = 1/6, 1/2, 5/6; y = 1/4, 3/4
    assert assign_patches_to_boxes([[0.4, 0.5, 1.0, 1.0]], (2, 3)).tolist() == [-1, -1, -1, -1, 0, 0]
    assert assign_patches_to_boxes([], (2, 2)).tolist() == [-1] * 4


def test_smallest_box_wins_whatever_the_order():
    big, small = [0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5]
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, 2:] = True
    for boxes, s, b in (([big, small], 1, 0), ([small, big], 0, 1)):
        owner = assign_patches_to_boxes(boxes, (4, 4)).view(4, 4)
        assert (owner[region] == s).all() and (owner[~region] == b).all()
    # equal areas: the earlier box
    assert (assign_patches_to_boxes([big, [0.0, 0.0, 1.0, 1.0]], (2, 2)) == 0).all()


def test_targets_use_the_caption_language_with_english_fallback(tiny_tokenizer):
    tok = tiny_tokenizer
    circle = {"box": [0.0, 0.0, 0.5, 1.0], "labels": {"en": "circle", "de": "Kreis", "fr": "cercle"}}
    square = {"box": [0.5, 0.0, 1.0, 1.0], "labels": {"en": "square", "de": "quadrat"}}
    only_de = {"box": [0.0, 0.0, 0.5, 0.5], "labels": {"de": "Kreis"}}  # small, on top of `circle`
    zh = {"box": [0.0, 0.0, 1.0, 1.0], "labels": {"zh": "两个", "en": "circle"}}
    objects = [[circle, square], [circle, square], [only_de, circle], [zh], []]
    langs = ["de", "fr", "fr", "zh", "en"]
    t = build_patch_targets(objects, langs, (2, 2), tok).view(5, 2, 2)
    kreis = tid(tok, "\u2581Kreis")
    # row 0 (de): Kreis on the left column; "quadrat" is tokenized "▁ qua drat": its first
    # content piece is "qua" (the bare "▁" is skipped)
    assert tok.convert_ids_to_tokens(tok("quadrat", add_special_tokens=False)["input_ids"])[0] == "\u2581"
    assert first_label_token("quadrat", tok) == tid(tok, "qua")
    assert t[0].tolist() == [[kreis, tid(tok, "qua")], [kreis, tid(tok, "qua")]]
    # row 1 (fr): cercle; the square has no French label -> English "square" (first piece)
    sq = first_label_token("square", tok)
    assert sq == tid(tok, "\u2581square")
    assert t[1].tolist() == [[tid(tok, "\u2581cercle"), sq], [tid(tok, "\u2581cercle"), sq]]
    # row 2 (fr): the small box has neither fr nor en: unused, so the circle below it owns the
    # patch instead of the patch being dropped
    assert t[2].tolist() == [[tid(tok, "\u2581cercle"), IGNORE_INDEX], [tid(tok, "\u2581cercle"), IGNORE_INDEX]]
    # row 3 (zh): "两个" -> pieces "▁", "两", "个": the first content piece is "两"
    assert t[3].tolist() == [[tid(tok, "两")] * 2] * 2
    # row 4: an image without boxes: nothing to predict
    assert (t[4] == IGNORE_INDEX).all()


# ---------------------------------------------------------------------------------- masks
def test_block_masks_hit_the_ratio_with_aligned_square_blocks():
    g = torch.Generator().manual_seed(0)
    m = mask_patch_blocks(64, (14, 14), mask_ratio=0.3, block_size=2, generator=g)
    assert m.shape == (64, 196) and m.dtype == torch.bool
    per_row = m.float().mean(1)
    # 49 blocks of 4 patches: the count nearest to 0.3 * 196 = 58.8 is 15 blocks = 60 patches
    assert (m.sum(1) == 60).all()
    assert (per_row - 0.3).abs().max() <= 2 / 196
    blocks = m.view(64, 7, 2, 7, 2).permute(0, 1, 3, 2, 4).reshape(64, 49, 4)
    assert ((blocks.all(-1)) | (~blocks.any(-1))).all(), "a block was partly masked"
    assert len({tuple(r.tolist()) for r in m}) > 60, "rows should draw different blocks"
    # reproducible with a generator, different with another seed
    a = mask_patch_blocks(4, (14, 14), 0.3, 2, generator=torch.Generator().manual_seed(3))
    b = mask_patch_blocks(4, (14, 14), 0.3, 2, generator=torch.Generator().manual_seed(3))
    c = mask_patch_blocks(4, (14, 14), 0.3, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_block_masks_on_a_grid_not_divisible_by_the_block():
    g = torch.Generator().manual_seed(1)
    m = mask_patch_blocks(200, (5, 7), mask_ratio=0.4, block_size=2, generator=g).view(200, 5, 7)
    assert m.any(dim=(1, 2)).all(), "at least one block per row"
    # every aligned tile (edge tiles cut short) is masked whole or not at all
    for r0 in range(0, 5, 2):
        for c0 in range(0, 7, 2):
            tile = m[:, r0:r0 + 2, c0:c0 + 2].reshape(200, -1)
            assert ((tile.all(-1)) | (~tile.any(-1))).all()
    assert abs(m.float().mean().item() - 0.4) < 0.05
    for bad in (dict(mask_ratio=0.0), dict(mask_ratio=1.0), dict(block_size=0)):
        with pytest.raises(ValueError):
            mask_patch_blocks(2, (4, 4), **{"mask_ratio": 0.3, "block_size": 2, **bad})


# ----------------------------------------------------------------------------- masked encoder
def test_masked_encoder_matches_timm_and_hides_masked_patches(tiny_tokenizer):
    model = fused_model(tiny_tokenizer).eval()
    obj = build_objective("mrtm", {}, model=model)
    vit = model.vision.model
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    none = torch.zeros(3, 16, dtype=torch.bool)
    with torch.no_grad():
        out = encode_masked_image(model.vision, images, none, obj.mask_token)
        ref = vit.forward_features(images)[:, vit.num_prefix_tokens:]
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(out, model.vision(images)["image_tokens"], rtol=0, atol=0)

        mask = none.clone()
        mask[0, [0, 1, 4, 5]] = True
        mask[2, 15] = True
        masked = encode_masked_image(vit, images, mask, obj.mask_token)
        # reference: timm's own forward_features with the patch embeddings swapped by a hook
        def swap(_module, _inp, emb):
            return torch.where(mask[..., None], obj.mask_token, emb)
        h = vit.patch_embed.register_forward_hook(swap)
        try:
            hooked = vit.forward_features(images)[:, vit.num_prefix_tokens:]
        finally:
            h.remove()
        torch.testing.assert_close(masked, hooked, rtol=0, atol=0)
        assert not torch.allclose(masked[0], out[0]) and not torch.allclose(masked[2], out[2])
        torch.testing.assert_close(masked[1], out[1], rtol=0, atol=0)  # unmasked row unchanged

        # the pixels under a masked patch cannot reach the output; unmasked ones do
        changed = images.clone()
        changed[0, :, :8, :8] += 5.0  # patch 0, masked in row 0
        torch.testing.assert_close(encode_masked_image(vit, changed, mask, obj.mask_token), masked,
                                   rtol=0, atol=0)
        changed[0, :, 24:, 24:] += 5.0  # patch 15, not masked in row 0
        assert not torch.allclose(encode_masked_image(vit, changed, mask, obj.mask_token)[0], masked[0])
    with pytest.raises(ValueError, match="VisionTransformer"):
        encode_masked_image(torch.nn.Conv2d(3, 8, 8, 8), images, none, obj.mask_token)
    with pytest.raises(ValueError, match="patch_mask"):
        encode_masked_image(vit, images, none[:, :8], obj.mask_token)


def test_args_and_model_checks(tiny_tokenizer, tiny_model):
    model = fused_model(tiny_tokenizer)
    for bad in ({"mask_ratio": 0.0}, {"mask_ratio": 1.0}, {"block_size": 0}, {"heads": 3},
                {"pseudo_labeller": "no_such_module_xyz:fn"}, {"pseudo_labeller": "json"}):
        with pytest.raises(ValueError):
            build_objective("mrtm", bad, model=model)
    with pytest.raises(ValueError, match="fusion"):
        build_objective("mrtm", {}, model=tiny_model)  # no fusion encoder
    obj = build_objective("mrtm", {}, model=model)
    from xvl.objectives.mrtm import MaskedRegionToTokenModeling
    from xvl.registry import OBJECTIVES

    assert OBJECTIVES.get("mrtm") is MaskedRegionToTokenModeling
    assert obj.needs_objects and obj.requires == ("image", "input_ids")
    build_objective("mrtm", {"mask_ratio": 0.4})  # config validation without a model
    assert obj.grid_size == (4, 4)
    assert obj.mask_token.shape == (model.vision.width,)


# ------------------------------------------------------------------------- batches without boxes
def caption_batch(model, tok, objects=None, n=2):
    texts = ["one red circle", "zwei blaue Quadrat", "trois cercle vert", "two blue square"][:n]
    enc = tok(texts, padding=True, return_tensors="pt")
    batch = {"image": torch.randn(n, 3, 32, 32), "input_ids": enc["input_ids"],
             "attention_mask": enc["attention_mask"],
             "lang": torch.tensor([model.lang_to_id[c] for c in ("en", "de", "fr", "en")[:n]])}
    if objects is not None:
        batch["objects"] = objects
    return batch


def test_without_boxes_the_objective_skips_with_one_notice(tiny_tokenizer, caplog):
    model = fused_model(tiny_tokenizer)
    obj = build_objective("mrtm", {}, model=model)
    prep = obj.input_preparer()
    batches = [caption_batch(model, tiny_tokenizer), caption_batch(model, tiny_tokenizer, [[], []]),
               caption_batch(model, tiny_tokenizer)]
    with caplog.at_level(logging.WARNING, logger="xvl.objectives.mrtm"):
        for b in batches:
            prep(b, tiny_tokenizer, generator=torch.Generator().manual_seed(0))
            assert "mrtm_targets" not in b
            assert obj.applies(model(b), b) is False
    notices = [r for r in caplog.records if r.name == "xvl.objectives.mrtm"]
    assert len(notices) == 1 and "once" in notices[0].getMessage()
    # a text-only batch is not an MRTM batch at all (and no notice for it either)
    text_only = {k: v for k, v in batches[0].items() if k != "image"}
    assert obj.applies({}, text_only) is False


def test_an_image_without_boxes_never_crashes(tiny_tokenizer):
    model = fused_model(tiny_tokenizer)
    obj = build_objective("mrtm", {"mask_ratio": 0.5}, model=model)
    everything = {"box": [0.0, 0.0, 1.0, 1.0], "labels": {"en": "circle"}}
    b = caption_batch(model, tiny_tokenizer, [[everything], []])
    obj.input_preparer()(b, tiny_tokenizer, generator=torch.Generator().manual_seed(0))
    assert b["mrtm_patch_mask"].shape == b["mrtm_targets"].shape == (2, 16)
    # row 0: exactly the masked patches carry the label token; row 1 (no boxes): nothing
    circle = tid(tiny_tokenizer, "\u2581circle")
    assert torch.equal(b["mrtm_targets"][0] != IGNORE_INDEX, b["mrtm_patch_mask"][0])
    assert (b["mrtm_targets"][0][b["mrtm_patch_mask"][0]] == circle).all()
    assert (b["mrtm_targets"][1] == IGNORE_INDEX).all() and b["mrtm_patch_mask"][1].sum() == 8
    assert obj.applies(model(b), b)
    out = obj(model(b), b)
    assert out["mrtm_patches"].item() == 8 and torch.isfinite(out["mrtm_loss"])
    # masked blocks that miss every box: a zero loss that still backpropagates
    b["mrtm_targets"][:] = IGNORE_INDEX
    out = obj(model(b), b)
    assert out["mrtm_loss"].item() == 0.0 and out["mrtm_patches"].item() == 0
    out["mrtm_loss"].backward()
    assert obj.mask_token.grad is not None and model.fusion_mlm_head.bias.grad is not None
    # boxes present but the preparer never ran: a wiring error, said loudly
    raw = caption_batch(model, tiny_tokenizer, [[everything], []])
    assert obj.applies(model(raw), raw)
    with pytest.raises(KeyError, match="preparer"):
        obj(model(raw), raw)


def test_pseudo_labeller_hook(tiny_tokenizer, tmp_path, monkeypatch):
    (tmp_path / "mrtm_fake_labeller.py").write_text(
        "def label(images):\n"
        "    # one box over the left half of every image whose mean pixel is positive\n"
        "    return [[{'box': [0, 0, 0.5, 1], 'labels': {'en': 'circle', 'de': 'Kreis'}}]\n"
        "            if float(im.mean()) > 0 else [] for im in images]\n"
        "def broken(images):\n"
        "    return [[]]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = fused_model(tiny_tokenizer)
    obj = build_objective("mrtm", {"pseudo_labeller": "mrtm_fake_labeller:label", "mask_ratio": 0.5},
                          model=model)
    b = caption_batch(model, tiny_tokenizer)  # no objects: rows en, de
    b["image"] = torch.stack([torch.ones(3, 32, 32), -torch.ones(3, 32, 32)])
    prep = obj.input_preparer()
    import pickle
    prep = pickle.loads(pickle.dumps(prep))  # data-loader workers get a pickled copy
    prep(b, tiny_tokenizer, generator=torch.Generator().manual_seed(0))
    assert len(b["objects"]) == 2 and b["objects"][1] == []
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    want = torch.full((4, 4), IGNORE_INDEX)
    want[left] = tid(tiny_tokenizer, "\u2581circle")
    want = want.flatten()
    mask = b["mrtm_patch_mask"][0]
    assert torch.equal(b["mrtm_targets"][0], torch.where(mask, want, torch.full_like(want, IGNORE_INDEX)))
    assert (b["mrtm_targets"][1] == IGNORE_INDEX).all()
    assert obj.applies(model(b), b)
    # a text-only batch (mixed runs) passes through untouched, labeller or not
    text_only = {k: v for k, v in caption_batch(model, tiny_tokenizer).items() if k != "image"}
    assert set(prep(dict(text_only), tiny_tokenizer)) == set(text_only)
    # a labeller that returns the wrong number of lists is an error, not a silent skip
    bad = MRTMInputs((4, 4), model.cfg.languages, pseudo_labeller="mrtm_fake_labeller:broken")
    with pytest.raises(ValueError, match="2 object lists"):
        bad(caption_batch(model, tiny_tokenizer), tiny_tokenizer)


# ----------------------------------------------------------------------------------- learning
def test_loss_decreases_on_demo_data(tiny_tokenizer, tmp_path):
    from xvl.data.captions import CaptionCollator, ImageCaptionDataset, load_caption_records
    from xvl.data.demo import generate_demo
    from xvl.data.transforms import build_image_transform

    paths = generate_demo(str(tmp_path / "demo"), n_train=8, n_val=0, image_size=64, seed=0,
                          languages=("en", "de", "fr"))
    model = fused_model(tiny_tokenizer, patch_size=4)  # 8x8 grid: small demo objects cover patches
    obj = build_objective("mrtm", {"mask_ratio": 0.5}, model=model)
    assert obj.grid_size == (8, 8)
    records = load_caption_records(paths.train, known_languages=model.cfg.languages)
    ds = ImageCaptionDataset(records, build_image_transform(model.vision.data_config()), model.lang_to_id,
                             with_objects=True)
    batch = CaptionCollator(tiny_tokenizer, 16)([ds[i] for i in range(8)])
    assert all(len(o) >= 1 for o in batch["objects"])
    obj.input_preparer()(batch, tiny_tokenizer, generator=torch.Generator().manual_seed(0))
    n = int((batch["mrtm_targets"] != IGNORE_INDEX).sum())
    assert n >= 8, "the fixed batch should hold labelled masked patches"
    assert len(set(batch["mrtm_targets"][batch["mrtm_targets"] != IGNORE_INDEX].tolist())) >= 2

    # the label prior alone (always predicting the batch's label frequencies) reaches its entropy;
    # going well below it needs the image / caption
    counts = torch.bincount(batch["mrtm_targets"][batch["mrtm_targets"] != IGNORE_INDEX]).float()
    prior = counts[counts > 0] / n
    prior_entropy = float(-(prior * prior.log()).sum())

    model.train()
    params = list(model.parameters()) + list(obj.parameters())
    opt = torch.optim.Adam(params, lr=5e-3)
    losses = []
    for _ in range(60):
        out = obj(model(batch), batch)
        opt.zero_grad()
        out["mrtm_loss"].backward()
        opt.step()
        losses.append(out["mrtm_loss"].item())
    assert out["mrtm_patches"].item() == n
    assert losses[-1] < 0.1 * losses[0], losses
    assert losses[-1] < 0.3 * prior_entropy, (losses, prior_entropy)
    assert out["mrtm_acc"].item() > 0.9
    # the mask token and the cross-attention block are trained too
    assert obj.mask_token.grad is not None and obj.cross.attn.in_proj_weight.grad.abs().sum() > 0
