"""Tests for xvl.evaluation.retrieval (no real model: hand-made embeddings and a fake model)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from xvl.evaluation.retrieval import (
    evaluate_retrieval,
    format_retrieval_table,
    load_records,
    recall_at_k,
)


# --------------------------------------------------------------------------------------------
# recall_at_k
#
# Trick used by the hand-computed cases: image_emb = identity (D = N), so the score of caption t
# for image j is simply text_emb[t, j]; each text row below *is* its row of scores.
# --------------------------------------------------------------------------------------------
def _scores(rows):
    text = torch.tensor(rows, dtype=torch.float32)
    return text, torch.eye(text.shape[1])


def test_several_captions_per_image_hand_computed():
    #           img0   img1  img2
    text, img = _scores([
        [0.9, 0.1, 0.2],   # c0 -> img0
        [0.3, 0.8, 0.1],   # c1 -> img0
        [0.5, 0.4, 0.7],   # c2 -> img1
        [0.6, 0.2, 0.05],  # c3 -> img2
        [0.1, 0.3, 0.95],  # c4 -> img2
    ])
    cap_img = torch.tensor([0, 0, 1, 2, 2])
    res = recall_at_k(text, img, cap_img, ks=(1, 2, 3))
    # t2i ranks (# wrong images scoring >= the true one):
    #   c0: 0.9 is top                 -> 0
    #   c1: true 0.3 < 0.8             -> 1
    #   c2: true 0.4 < 0.5, 0.7        -> 2
    #   c3: true 0.05 < 0.6, 0.2       -> 2
    #   c4: true 0.95 is top           -> 0
    # R@1 = 2/5, R@2 = 3/5, R@3 = 5/5
    assert res["t2i"] == pytest.approx({"r1": 0.4, "r2": 0.6, "r3": 1.0})
    # i2t (column j = scores of all captions for image j; best own caption vs other captions):
    #   img0: own c0 .9, c1 .3 -> best .9; others .5 .6 .1 all lower           -> rank 0
    #   img1: own c2 .4; others c0 .1, c1 .8, c3 .2, c4 .3 -> only .8 is >= .4   -> rank 1
    #   img2: own c3 .05 (alone it would be rank 3), c4 .95 -> best .95 -> rank 0
    #         (a hit because ANY of its captions is within k)
    # R@1 = 2/3, R@2 = R@3 = 1
    assert res["i2t"] == pytest.approx({"r1": 2 / 3, "r2": 1.0, "r3": 1.0})


def test_ties_are_pessimistic():
    #           img0  img1
    text, img = _scores([
        [0.5, 0.5],   # c0 -> img0: tie with img1 -> img1 is ranked ahead -> rank 1
        [0.5, 0.2],   # c1 -> img0: rank 0
        [0.3, 0.5],   # c2 -> img1: rank 0
    ])
    cap_img = torch.tensor([0, 0, 1])
    res = recall_at_k(text, img, cap_img, ks=(1, 2))
    # t2i ranks [1, 0, 0]: R@1 = 2/3, R@2 = 1
    assert res["t2i"] == pytest.approx({"r1": 2 / 3, "r2": 1.0})
    # i2t:
    #   img0: own c0 .5 and c1 .5 tie with each other (does not matter), other c2 .3 -> rank 0
    #   img1: own c2 .5, other c0 .5 ties -> counts against -> rank 1
    # R@1 = 1/2, R@2 = 1
    assert res["i2t"] == pytest.approx({"r1": 0.5, "r2": 1.0})


def test_constant_embeddings_never_get_perfect_recall():
    # every score ties: t2i rank = N-1 = 2 for every caption, i2t rank = T - 2 = 4 for every image
    text = torch.ones(6, 4)
    img = torch.ones(3, 4)
    cap_img = torch.tensor([0, 0, 1, 1, 2, 2])
    res = recall_at_k(text, img, cap_img, ks=(1, 2, 3, 5))
    assert res["t2i"] == {"r1": 0.0, "r2": 0.0, "r3": 1.0, "r5": 1.0}  # r3/r5: N <= k, trivial
    assert res["i2t"] == {"r1": 0.0, "r2": 0.0, "r3": 0.0, "r5": 1.0}  # r5: 4 wrong caps < 5
    # a realistic size: nothing but zeros
    res = recall_at_k(torch.ones(200, 8), torch.ones(100, 8), torch.arange(200) % 100)
    assert res == {"i2t": {"r1": 0.0, "r5": 0.0, "r10": 0.0},
                   "t2i": {"r1": 0.0, "r5": 0.0, "r10": 0.0}}


def test_perfect_embeddings():
    img = torch.eye(20)
    cap_img = torch.arange(40) % 20  # two captions per image
    text = img[cap_img]
    res = recall_at_k(text, img, cap_img)
    assert res == {"i2t": {"r1": 1.0, "r5": 1.0, "r10": 1.0},
                   "t2i": {"r1": 1.0, "r5": 1.0, "r10": 1.0}}


def _reference(text, img, cap_img, ks):
    """Plain O(T*N) loops; rank = position of the first true item after sorting by
    (score descending, true items last among equal scores), i.e. pessimistic ties."""
    text, img, cap_img = text.tolist(), img.tolist(), cap_img.tolist()

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def first_true_position(cands):  # cands: list of (score, is_true)
        order = sorted(cands, key=lambda c: (-c[0], c[1]))
        return next(p for p, (_, is_true) in enumerate(order) if is_true)

    t2i = [first_true_position([(dot(t, im), j == cap_img[ti]) for j, im in enumerate(img)])
           for ti, t in enumerate(text)]
    i2t = [first_true_position([(dot(t, im), cap_img[ti] == j) for ti, t in enumerate(text)])
           for j, im in enumerate(img)]

    def rec(ranks):
        return {f"r{k}": sum(r < k for r in ranks) / len(ranks) for k in ks}

    return {"i2t": rec(i2t), "t2i": rec(t2i)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integer", [False, True])
def test_random_against_reference_and_chunk_invariance(seed, integer):
    g = torch.Generator().manual_seed(seed)
    N, T, D = 13, 41, 6
    # each image gets one caption, the rest are assigned at random
    cap_img = torch.cat([torch.arange(N), torch.randint(0, N, (T - N,), generator=g)])
    cap_img = cap_img[torch.randperm(T, generator=g)]
    if integer:  # small integers in {-1, 0, 1}: exact dot products, many exact ties
        img = torch.randint(-1, 2, (N, 3), generator=g).double()
        text = torch.randint(-1, 2, (T, 3), generator=g).double()
    else:
        img = torch.randn(N, D, generator=g, dtype=torch.float64)
        text = img[cap_img] + 1.5 * torch.randn(T, D, generator=g, dtype=torch.float64)
    ks = (1, 3, 5, 10)
    expected = _reference(text, img, cap_img, ks)
    results = [recall_at_k(text, img, cap_img, ks=ks, chunk_size=c) for c in (1, 4, 10_000)]
    assert results[0] == results[1] == results[2]
    assert results[0]["t2i"] == pytest.approx(expected["t2i"])
    assert results[0]["i2t"] == pytest.approx(expected["i2t"])


def test_nonfinite_embeddings_scored_pessimistically():
    img = torch.eye(3)
    img[2] = float("nan")  # every score against img2 is NaN
    text = torch.tensor([[0.9, 0.1, 0.0],   # -> img0: NaN img2 counts against -> rank 1
                         [0.1, 0.9, 0.0],   # -> img1: rank 1 likewise
                         [0.1, 0.2, 0.0]])  # -> img2: its true score is NaN -> never a hit
    res = recall_at_k(text, img, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert res["t2i"] == pytest.approx({"r1": 0.0, "r2": 2 / 3, "r3": 2 / 3})
    # i2t: img0 and img1 are rank 0 (their columns .9/.1/.1 and .1/.9/.2); img2 never a hit
    assert res["i2t"] == pytest.approx({"r1": 2 / 3, "r2": 2 / 3, "r3": 2 / 3})


def test_recall_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="no caption"):  # img2 has no caption
        recall_at_k(torch.eye(3)[:2], torch.eye(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):  # out of range
        recall_at_k(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError):  # wrong length
        recall_at_k(torch.eye(3), torch.eye(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):  # embedding sizes differ
        recall_at_k(torch.ones(2, 3), torch.ones(2, 4), torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------
# evaluate_retrieval with a fake model
# --------------------------------------------------------------------------------------------
# image embedding = the image's (normalized) pixel colour; text embedding = a vector looked up
# from the caption's first word.
WORDS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
         "teal": (0.0, 0.6, 0.8)}
VOCAB = {w: i for i, w in enumerate(WORDS)}


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(list(WORDS.values())), requires_grad=False)
        self.n_images_encoded = 0
        self.texts_encoded: list = []
        self.modes_seen: list = []

    def preprocess(self, pil):
        r, g, b = pil.getpixel((0, 0))
        return torch.tensor([r, g, b], dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 4, 4)

    def tokenize(self, texts):
        self.texts_encoded.extend(texts)
        ids = torch.tensor([[VOCAB[t.split()[0]]] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def encode_image(self, pixel_values, normalize=True):
        assert not torch.is_grad_enabled()
        self.modes_seen.append(self.training)
        self.n_images_encoded += pixel_values.shape[0]
        emb = pixel_values.mean(dim=(2, 3))
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, input_ids, attention_mask, normalize=True):
        assert not torch.is_grad_enabled()
        self.modes_seen.append(self.training)
        emb = self.table[input_ids[:, 0]]
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def _cap(lang, text, kind="native"):
    return {"lang": lang, "text": text, "kind": kind, "source": "test"}


def _write_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    for name, colour in [("r", (255, 0, 0)), ("g", (0, 255, 0)), ("b", (0, 0, 255))]:
        Image.new("RGB", (8, 8), colour).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"not a png")
    records = [
        {"image_id": "r", "image": "images/r.png", "captions": [
            _cap("en", "red car", "original"), _cap("en", "   "),  # whitespace: skipped, counted
            _cap("de", "red Auto", "human_translation"),
            _cap("fr", "green voiture")]},  # wrong colour word on purpose
        {"image_id": "g", "image": "images/g.png", "captions": [
            _cap("en", "green tree"), _cap("de", "teal Baum"), _cap("fr", "green arbre")]},
        {"image_id": "b", "image": "images/b.png", "captions": [
            _cap("en", "blue sky"), _cap("fr", "blue ciel"),
            _cap("de", "blue Himmel", "machine_translation")]},  # only de caption of b is MT
        {"image_id": "missing", "image": "images/missing.png", "captions": [
            _cap("en", "red ball")]},
        {"image_id": "corrupt", "image": "images/corrupt.png", "captions": [
            _cap("en", "green ball")]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_evaluate_retrieval_end_to_end(tmp_path):
    path = _write_dataset(tmp_path)
    model = FakeModel()
    model.train()
    res = evaluate_retrieval(model, load_records(str(path)), str(tmp_path), batch_size=2,
                             progress=False, chunk_size=1)

    # exact output keys of the contract
    assert set(res) == {"per_language", "average", "n_skipped"}
    assert set(res["per_language"]) == {"en", "de", "fr"}
    for r in res["per_language"].values():
        assert set(r) == {"i2t", "t2i", "mean_recall", "n_images", "n_captions"}
        assert set(r["i2t"]) == set(r["t2i"]) == {"r1", "r5", "r10"}
    assert set(res["average"]) == {"i2t", "t2i", "mean_recall"}
    assert set(res["average"]["i2t"]) == set(res["average"]["t2i"]) == {"r1", "r5", "r10"}
    json.dumps(res)  # serialisable

    # missing + corrupt image skipped with their captions, the whitespace caption counted
    assert res["n_skipped"] == {"missing_image": 1, "bad_image": 1, "empty_caption": 1}
    # each loadable image encoded once; each caption once; eval mode used, train mode restored
    assert model.n_images_encoded == 3
    # (not "red ball"/"green ball": their images failed, so their captions are dropped too)
    assert sorted(model.texts_encoded) == sorted(
        ["red car", "green tree", "blue sky", "red Auto", "teal Baum",
         "green voiture", "green arbre", "blue ciel"])
    assert not any(model.modes_seen) and model.training

    en, de, fr = (res["per_language"][k] for k in ("en", "de", "fr"))
    # en: 3 images, 3 correct captions (the missing/corrupt images are not candidates)
    assert (en["n_images"], en["n_captions"]) == (3, 3)
    assert en["mean_recall"] == 1.0
    # de: b's only de caption is MT -> excluded -> b is not a de candidate. Candidates {r, g}:
    # "teal Baum" scores g .6 > r 0 -> hit. (If b were a candidate, b's .8 would beat g.)
    assert (de["n_images"], de["n_captions"]) == (2, 2)
    assert de["t2i"]["r1"] == 1.0 and de["i2t"]["r1"] == 1.0 and de["mean_recall"] == 1.0
    # fr: captions r:"green voiture", g:"green arbre", b:"blue ciel"
    #   t2i: voiture -> scores r 0, g 1, b 0: g ahead, b ties -> rank 2 (miss @1); others rank 0
    #        R@1 = 2/3, R@5 = R@10 = 1 (only 3 candidates)
    #   i2t: r: own voiture 0; arbre 0, ciel 0 tie -> rank 2 (miss)
    #        g: own arbre 1; voiture 1 ties -> rank 1 (miss)
    #        b: own ciel 1 -> rank 0.  R@1 = 1/3
    #   mean = (1/3 + 1 + 1 + 2/3 + 1 + 1) / 6 = 5/6
    assert (fr["n_images"], fr["n_captions"]) == (3, 3)
    assert fr["t2i"] == pytest.approx({"r1": 2 / 3, "r5": 1.0, "r10": 1.0})
    assert fr["i2t"] == pytest.approx({"r1": 1 / 3, "r5": 1.0, "r10": 1.0})
    assert fr["mean_recall"] == pytest.approx(5 / 6)
    # average: unweighted over the 3 languages
    assert res["average"]["i2t"]["r1"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert res["average"]["t2i"]["r1"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert res["average"]["i2t"]["r5"] == 1.0
    assert res["average"]["mean_recall"] == pytest.approx((1 + 1 + 5 / 6) / 3)

    table = format_retrieval_table(res)
    lines = table.splitlines()
    assert lines[-1].split()[0] == "avg"
    assert [l.split()[0] for l in lines[2:-1]] == ["de", "en", "fr"]
    assert "83.3" in table  # fr mean recall in percent


def test_evaluate_retrieval_machine_translation_on_request(tmp_path):
    path = _write_dataset(tmp_path)
    res = evaluate_retrieval(FakeModel(), load_records(str(path)), str(tmp_path),
                             include_machine_translation=True, languages=["de"], progress=False)
    assert set(res["per_language"]) == {"de"}
    de = res["per_language"]["de"]
    # now b (with "blue Himmel") is a de candidate: 3 images, 3 captions
    assert (de["n_images"], de["n_captions"]) == (3, 3)
    # t2i: "teal Baum" -> g .6 < b .8 -> rank 1 (miss @1); the other two rank 0 -> R@1 = 2/3
    assert de["t2i"]["r1"] == pytest.approx(2 / 3)
    # i2t: r: own red 1 -> 0; g: own teal .6 > red 0, blue 0 -> 0; b: own blue 1 > teal .8 -> 0
    assert de["i2t"]["r1"] == 1.0
    # language filter: en/fr captions are not looked at (the whitespace en caption is not
    # counted), and the missing/corrupt images have no de caption, so they are never loaded
    assert res["n_skipped"] == {}
    assert res["average"]["mean_recall"] == pytest.approx(de["mean_recall"])


def test_evaluate_retrieval_nothing_loadable(tmp_path):
    records = [{"image_id": "x", "image": "nope.png", "captions": [_cap("en", "red")]}]
    with pytest.raises(ValueError, match="could be loaded"):
        evaluate_retrieval(FakeModel(), records, str(tmp_path), progress=False)


# --------------------------------------------------------------------------------------------
# load_records
# --------------------------------------------------------------------------------------------
def test_load_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records(str(tmp_path / "nope.jsonl"))
    good = json.dumps({"image_id": "a", "image": "a.png", "captions": []})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + '{"image": "b.png", "captions": [}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 3"):
        load_records(str(path))
    path.write_text(good + "\n" + "[1, 2]\n")
    with pytest.raises(ValueError, match="line 2"):
        load_records(str(path))
    path.write_text(good + "\n" + good + "\n")
    assert len(load_records(str(path))) == 2
