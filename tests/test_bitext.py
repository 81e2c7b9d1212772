"""Tests for xvl.evaluation.bitext: hand-made embeddings, a fake model with exact control, and
the tiny real model (conftest) end to end on tiny Tatoeba-style files."""
from __future__ import annotations

import json
import logging
import math
import os
import zlib

import pytest
import torch
from torch import nn

from conftest import SHARED_DATA, TINY_TEXTS
from xvl.evaluation.bitext import (
    bitext_accuracy,
    encode_sentences,
    evaluate_bitext,
    find_tatoeba_pairs,
    format_bitext_table,
    read_parallel_files,
)
from xvl.models.text import mean_pool

TATOEBA = os.path.join(SHARED_DATA, "tatoeba")


def _angles(degrees, scales=None):
    """Unit 2-D vectors at the given angles (optionally scaled: normalization is done inside)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    v = torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)
    if scales is not None:
        v = v * torch.tensor(scales, dtype=torch.float64).unsqueeze(1)
    return v


# --------------------------------------------------------------------------------------------
# bitext_accuracy: hand-computed cosine cases (2-D vectors; cosine = cos of the angle between)
# --------------------------------------------------------------------------------------------
def test_cosine_hand_computed_asymmetric():
    # src at 0, 30, 180 deg; tgt at 10, 100, 170 deg (src rows scaled: normalized inside)
    src = _angles([0, 30, 180], scales=[1.0, 5.0, 0.1])
    tgt = _angles([10, 100, 170])
    res = bitext_accuracy(src, tgt)
    # src2tgt (angle to tgt0, tgt1, tgt2):
    #   src0 (0):   10, 100, 170 -> tgt0  hit
    #   src1 (30):  20,  70, 140 -> tgt0  MISS (its translation tgt1 is 70 deg away)
    #   src2 (180): 170, 80,  10 -> tgt2  hit                      => 2/3
    # tgt2src (angle to src0, src1, src2):
    #   tgt0 (10):  10,  20, 170 -> src0  hit
    #   tgt1 (100): 100, 70,  80 -> src1  hit
    #   tgt2 (170): 170, 140, 10 -> src2  hit                      => 3/3
    assert res == {"src2tgt": pytest.approx(2 / 3), "tgt2src": 1.0, "n": 3}


def test_cosine_hand_computed_swapped():
    # src at 0, 90 deg; tgt at 90, 0 deg: every nearest neighbour is the other pair's sentence
    res = bitext_accuracy(_angles([0, 90]), _angles([90, 0]))
    assert res == {"src2tgt": 0.0, "tgt2src": 0.0, "n": 2}


def test_cosine_hand_computed_perfect_and_single():
    # identical sides: every sentence is closest to itself => 1.0 both ways
    e = _angles([0, 45, 90, 135, 180])
    assert bitext_accuracy(e, e.clone()) == {"src2tgt": 1.0, "tgt2src": 1.0, "n": 5}
    # N = 1: no wrong candidate, trivially a hit (even for opposite vectors)
    assert bitext_accuracy(_angles([0]), _angles([180])) == {"src2tgt": 1.0, "tgt2src": 1.0, "n": 1}


def test_ties_are_pessimistic():
    # src1 = (0, 1) is exactly as close to tgt1 = (1, 1) as to tgt2 = (-1, 1) (both dots are
    # 1/sqrt(2), bit for bit): tie => src1 counts as a miss although its translation is tied
    # for first place.
    src = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -0.2]])
    tgt = torch.tensor([[1.0, -0.1], [1.0, 1.0], [-1.0, 1.0]])
    res = bitext_accuracy(src, tgt)
    # src2tgt: src0 -> tgt0 hit; src1 ties tgt1/tgt2 -> miss; src2 (-1,-.2) -> tgt2 hit => 2/3
    # tgt2src: tgt0 -> src0 hit; tgt1 (45 deg) -> src0 and src1 tie (both 1/sqrt2) -> miss;
    #          tgt2 (135 deg): src1 cos .707, src2 cos ~.555 -> src1 -> miss          => 1/3
    assert res["src2tgt"] == pytest.approx(2 / 3)
    assert res["tgt2src"] == pytest.approx(1 / 3)
    # a degenerate (constant) encoder ties everything: 0, never the 1.0 of "first index wins"
    const = torch.ones(6, 4)
    for scoring in ("cosine", "margin"):
        r = bitext_accuracy(const, const.clone(), scoring=scoring)
        assert r == {"src2tgt": 0.0, "tgt2src": 0.0, "n": 6}


def test_nonfinite_rows_are_misses(caplog):
    src = torch.eye(4)
    tgt = torch.eye(4)
    tgt[2, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="xvl.evaluation.bitext"):
        res = bitext_accuracy(src, tgt)
    # the NaN target: never a hit as a query (tgt2src) and ranks ahead of every translation
    assert res == {"src2tgt": 0.0, "tgt2src": 0.75, "n": 4}
    assert "not finite" in caplog.text


# --------------------------------------------------------------------------------------------
# margin scoring
# --------------------------------------------------------------------------------------------
def _hub_case():
    """4 pairs in 5-D. src_i = e_i. tgt0 is a hub close to every source; tgt1..3 carry a shared
    off-axis component that puts them slightly further from their own source than the hub is."""
    src = torch.eye(4, 5, dtype=torch.float64)
    tgt = torch.zeros(4, 5, dtype=torch.float64)
    tgt[0, :4] = torch.tensor([1.0, 0.6, 0.6, 0.6])        # hub: cos to src1..3 = .6/sqrt(2.08) = .416
    for i in (1, 2, 3):
        tgt[i, i], tgt[i, 4] = 1.0, 2.3                   # cos(src_i, tgt_i) = 1/sqrt(6.29) = .399
    return src, tgt


def test_margin_fixes_hub_error():
    src, tgt = _hub_case()
    # cosine: src1..3 all pick the hub tgt0 (.416 > .399) => src2tgt 1/4; tgt2src is perfect
    assert bitext_accuracy(src, tgt, scoring="cosine") == {"src2tgt": 0.25, "tgt2src": 1.0, "n": 4}
    # margin, k=2: r(tgt0) = (.693 + .416)/2 = .555 is large (a hub), r(tgt_i) = .399/2 small;
    # r(src_i) = (.416 + .399)/2 = .408 for i >= 1, so
    #   margin(src1, tgt0) = .416 / ((.408 + .555)/2) = .86 < margin(src1, tgt1)
    #                      = .399 / ((.408 + .200)/2) = 1.31   => every source finds its pair
    assert bitext_accuracy(src, tgt, scoring="margin", k=2) == {"src2tgt": 1.0, "tgt2src": 1.0, "n": 4}
    # also with the default k=4 (capped at N=4)
    assert bitext_accuracy(src, tgt, scoring="margin")["src2tgt"] == 1.0


def _reference(src, tgt, scoring, k):
    """Plain-loop reference: normalize, score every pair, strict best (ties against)."""
    src = torch.nn.functional.normalize(src.double(), dim=-1)
    tgt = torch.nn.functional.normalize(tgt.double(), dim=-1)
    n = src.shape[0]
    cos = (src @ tgt.T).tolist()                            # cos[i][j]: src i, tgt j
    kk = min(k, n)
    r_src = [sum(sorted(cos[i], reverse=True)[:kk]) / kk for i in range(n)]
    r_tgt = [sum(sorted((cos[i][j] for i in range(n)), reverse=True)[:kk]) / kk for j in range(n)]

    def score(i, j):  # src i, tgt j
        if scoring == "cosine":
            return cos[i][j]
        return cos[i][j] / (r_src[i] / 2 + r_tgt[j] / 2)

    s2t = sum(all(score(i, i) > score(i, j) for j in range(n) if j != i) for i in range(n))
    t2s = sum(all(score(j, j) > score(i, j) for i in range(n) if i != j) for j in range(n))
    return s2t / n, t2s / n


@pytest.mark.parametrize("scoring", ["cosine", "margin"])
def test_random_against_loop_reference_and_chunk_invariance(scoring):
    g = torch.Generator().manual_seed(0)
    n, d = 37, 8
    src = torch.randn(n, d, generator=g, dtype=torch.float64)
    tgt = src + 0.9 * torch.randn(n, d, generator=g, dtype=torch.float64)
    ref_s2t, ref_t2s = _reference(src, tgt, scoring, k=4)
    assert 0.0 < ref_s2t < 1.0 and 0.0 < ref_t2s < 1.0       # a non-trivial case
    results = [bitext_accuracy(src, tgt, scoring=scoring, k=4, chunk_size=c)
               for c in (1, 5, 36, 37, 1024)]
    assert all(r == results[0] for r in results)
    assert results[0]["src2tgt"] == pytest.approx(ref_s2t)
    assert results[0]["tgt2src"] == pytest.approx(ref_t2s)
    assert results[0]["n"] == n
    # float32 input gives the same answer here
    assert bitext_accuracy(src.float(), tgt.float(), scoring=scoring, chunk_size=7) == results[0]


def test_bitext_accuracy_rejects_bad_input():
    e = torch.eye(3)
    with pytest.raises(ValueError, match="same shape"):
        bitext_accuracy(e, torch.eye(4, 3))
    with pytest.raises(ValueError, match="scoring"):
        bitext_accuracy(e, e, scoring="csls")
    with pytest.raises(ValueError, match="chunk_size"):
        bitext_accuracy(e, e, chunk_size=0)
    with pytest.raises(ValueError, match="k must"):
        bitext_accuracy(e, e, scoring="margin", k=0)
    with pytest.raises(ValueError, match="N=0"):
        bitext_accuracy(torch.empty(0, 3), torch.empty(0, 3))


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def test_read_parallel_files(tmp_path, caplog):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("  Hallo Welt \r\n\nzwei\ndrei\n", encoding="utf-8")
    b.write_text("hello world\nempty other side\n  \nthree\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="xvl.evaluation.bitext"):
        src, tgt = read_parallel_files(a, b)
    # line 2 (empty src) and line 3 (blank tgt) are dropped as pairs; the rest stays aligned
    assert src == ["Hallo Welt", "drei"] and tgt == ["hello world", "three"]
    assert "dropped 2 of 4" in caplog.text


def test_read_parallel_files_misaligned_and_missing(tmp_path):
    a, b = tmp_path / "x.deu", tmp_path / "x.eng"
    a.write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    b.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_parallel_files(a, b)
    msg = str(e.value)
    assert str(a) in msg and str(b) in msg and "3 lines" in msg and "2 lines" in msg
    with pytest.raises(FileNotFoundError, match="nope"):
        read_parallel_files(a, tmp_path / "nope.eng")


def test_find_tatoeba_pairs(tmp_path):
    for name in ("tatoeba.deu-eng.deu", "tatoeba.deu-eng.eng", "tatoeba.fra-eng.eng",
                 "tatoeba.fra-eng.fra", "tatoeba.ita-eng.ita", "README.md"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    pairs = find_tatoeba_pairs(tmp_path)
    # ita-eng has one side only: left out; README ignored; src = first language of the name
    assert list(pairs) == ["deu-eng", "fra-eng"]
    assert pairs["deu-eng"] == (str(tmp_path / "tatoeba.deu-eng.deu"),
                                str(tmp_path / "tatoeba.deu-eng.eng"))
    assert pairs["fra-eng"] == (str(tmp_path / "tatoeba.fra-eng.fra"),
                                str(tmp_path / "tatoeba.fra-eng.eng"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no Tatoeba pairs"):
        find_tatoeba_pairs(empty)
    with pytest.raises(FileNotFoundError):
        find_tatoeba_pairs(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# encoding and end to end
# --------------------------------------------------------------------------------------------
class FakeModel(nn.Module):
    """Encodes each text to a fixed pseudo-random vector seeded by the text (deterministic per
    text, independent of batching), so identical sentences get identical embeddings."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.dim = dim
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def tokenize(self, texts):
        ids = torch.tensor([[zlib.crc32(t.encode("utf-8")) & 0x7FFFFFFF] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def encode_text(self, input_ids, attention_mask, normalize=True):
        assert not self.training and not torch.is_grad_enabled()
        self.calls += 1
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(int(i)))
                for i in input_ids[:, 0]]
        emb = torch.stack(rows)
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def _write_tatoeba(directory, pairs):
    directory.mkdir(parents=True, exist_ok=True)
    for (a, b), (lines_a, lines_b) in pairs.items():
        (directory / f"tatoeba.{a}-{b}.{a}").write_text("\n".join(lines_a) + "\n", encoding="utf-8")
        (directory / f"tatoeba.{a}-{b}.{b}").write_text("\n".join(lines_b) + "\n", encoding="utf-8")


DEU = [t for t in TINY_TEXTS if t.split()[0] in ("eins", "zwei", "drei")][:12]
ENG = [t for t in TINY_TEXTS if t.split()[0] in ("one", "two", "three")][:12]
FRA = [t for t in TINY_TEXTS if t.split()[0] in ("un", "deux", "trois")][:10]


def test_evaluate_bitext_identical_sentences_fake_model(tmp_path):
    # the same sentences on both sides + a deterministic per-text encoder => perfect matching
    d = tmp_path / "tatoeba"
    _write_tatoeba(d, {("deu", "eng"): (DEU, DEU), ("fra", "eng"): (FRA, FRA)})
    model = FakeModel().train()
    for scoring in ("cosine", "margin"):
        res = evaluate_bitext(model, tatoeba_dir=d, scoring=scoring, progress=False)
        assert res["per_pair"] == {"deu-eng": {"src2tgt": 1.0, "tgt2src": 1.0, "n": 12},
                                   "fra-eng": {"src2tgt": 1.0, "tgt2src": 1.0, "n": 10}}
        assert res["average"] == {"src2tgt": 1.0, "tgt2src": 1.0, "mean": 1.0}
    assert model.training                                   # mode restored


def test_evaluate_bitext_src_tgt_files_naming(tmp_path):
    a, b = tmp_path / "test.de", tmp_path / "test.en"
    a.write_text("\n".join(DEU[:5]) + "\n", encoding="utf-8")
    b.write_text("\n".join(ENG[:5]) + "\n", encoding="utf-8")
    model = FakeModel()
    res = evaluate_bitext(model, src=a, tgt=b, progress=False)
    assert list(res["per_pair"]) == ["test.de-test.en"]
    assert res["per_pair"]["test.de-test.en"]["n"] == 5
    res = evaluate_bitext(model, src=str(a), tgt=str(b), pair_name="de-en", progress=False)
    assert list(res["per_pair"]) == ["de-en"]
    with pytest.raises(ValueError):
        evaluate_bitext(model, progress=False)
    with pytest.raises(ValueError):
        evaluate_bitext(model, src=a, progress=False)
    with pytest.raises(ValueError):
        evaluate_bitext(model, tatoeba_dir=tmp_path, src=a, tgt=b, progress=False)


def test_evaluate_bitext_tiny_model_end_to_end(tmp_path, tiny_model):
    d = tmp_path / "tatoeba"
    _write_tatoeba(d, {("deu", "eng"): (DEU, ENG), ("fra", "eng"): (FRA, ENG[:10])})
    res = evaluate_bitext(tiny_model, tatoeba_dir=d, batch_size=5, progress=False)
    assert set(res) == {"per_pair", "average"}
    assert list(res["per_pair"]) == ["deu-eng", "fra-eng"]
    for name, n in (("deu-eng", 12), ("fra-eng", 10)):
        r = res["per_pair"][name]
        assert set(r) == {"src2tgt", "tgt2src", "n"} and r["n"] == n
        assert 0.0 <= r["src2tgt"] <= 1.0 and 0.0 <= r["tgt2src"] <= 1.0
    avg = res["average"]
    assert set(avg) == {"src2tgt", "tgt2src", "mean"}
    assert avg["src2tgt"] == pytest.approx(
        (res["per_pair"]["deu-eng"]["src2tgt"] + res["per_pair"]["fra-eng"]["src2tgt"]) / 2)
    assert avg["mean"] == pytest.approx((avg["src2tgt"] + avg["tgt2src"]) / 2)
    json.dumps(res)                                         # JSON-serializable as is
    for layer in (0, 1):
        r = evaluate_bitext(tiny_model, tatoeba_dir=d, layer=layer, scoring="margin",
                            progress=False)
        assert list(r["per_pair"]) == ["deu-eng", "fra-eng"]
        assert all(0.0 <= v <= 1.0 for p in r["per_pair"].values()
                   for v in (p["src2tgt"], p["tgt2src"]))
    table = format_bitext_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["pair", "n", "src2tgt", "tgt2src", "mean"]
    assert lines[2].startswith("deu-eng") and lines[-1].startswith("avg")
    assert f"{100 * avg['mean']:.1f}" in lines[-1]


def test_encode_sentences_layers_and_mode(tiny_model):
    texts = DEU[:7]
    tiny_model.train()                                      # dropout on: must be switched off
    final = encode_sentences(tiny_model, texts, batch_size=3)
    assert tiny_model.training                              # mode restored
    l0 = encode_sentences(tiny_model, texts, batch_size=3, layer=0)
    l1 = encode_sentences(tiny_model, texts, batch_size=4, layer=1)
    width = tiny_model.text.width
    assert final.shape == (7, tiny_model.cfg.embed_dim) and l0.shape == l1.shape == (7, width)
    for e in (final, l0, l1):
        assert torch.allclose(e.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert not torch.allclose(l0, l1, atol=1e-3)            # different layers, different vectors
    # same as calling the model by hand (eval mode, whole batch at once)
    tiny_model.eval()
    tok = tiny_model.tokenize(texts)
    with torch.no_grad():
        hs = tiny_model.text(tok["input_ids"], tok["attention_mask"])["text_hidden_states"]
        ref1 = torch.nn.functional.normalize(mean_pool(hs[1], tok["attention_mask"]), dim=-1)
        ref_final = tiny_model.encode_text(**tok, normalize=True)
    assert torch.allclose(l1, ref1, atol=1e-5)
    assert torch.allclose(final, ref_final, atol=1e-5)
    assert torch.allclose(encode_sentences(tiny_model, texts, layer=-1), l1, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        encode_sentences(tiny_model, texts, layer=2)


def test_format_bitext_table_handwritten():
    res = {"per_pair": {"fra-eng": {"src2tgt": 0.5, "tgt2src": 0.25, "n": 4},
                        "deu-eng": {"src2tgt": 1.0, "tgt2src": 0.75, "n": 8}},
           "average": {"src2tgt": 0.75, "tgt2src": 0.5, "mean": 0.625}}
    lines = format_bitext_table(res).splitlines()
    assert [l.split() for l in lines[2:]] == [["deu-eng", "8", "100.0", "75.0", "87.5"],
                                              ["fra-eng", "4", "50.0", "25.0", "37.5"],
                                              ["avg", "-", "75.0", "50.0", "62.5"]]


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(TATOEBA), reason=f"shared data not found at {TATOEBA}")
def test_real_tatoeba_dir():
    pairs = find_tatoeba_pairs(TATOEBA)
    assert {"deu-eng", "fra-eng"} <= set(pairs)
    for name in ("deu-eng", "fra-eng"):
        src, tgt = read_parallel_files(*pairs[name])
        assert len(src) == len(tgt) == 1000
    # end to end on the real files with the cheap fake encoder (no model quality implied)
    res = evaluate_bitext(FakeModel(dim=8), tatoeba_dir=TATOEBA, scoring="margin", progress=False)
    assert res["per_pair"]["deu-eng"]["n"] == res["per_pair"]["fra-eng"]["n"] == 1000
