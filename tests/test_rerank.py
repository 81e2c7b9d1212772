"""Re-ranking retrieval with the matching (ITM) head: exact ranks against a plain reference, the
end-to-end evaluation on a tiny fused model (real scorer vs brute force, a ground-truth scorer),
rerank=0 unchanged, dual encoders refused up front, and the CLI flag."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import xvl.evaluation.retrieval as retrieval
from xvl.config import FusionConfig
from xvl.evaluation.retrieval import (evaluate_retrieval, matching_scorer, recall_at_k,
                                      rerank_recall_at_k)
from xvl.models.model import XVLModel
from conftest import tiny_model_config


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# --------------------------------------------------------------------------------------------
# rerank_recall_at_k against a plain reference
# --------------------------------------------------------------------------------------------
def _reference(sims, itm, cap_img, K, ks):
    """Plain loops. ``sims``/``itm``: [T][N] contrastive / matching scores of caption t, image j.

    The final list of a query: its first K candidates sorted by (-contrastive, is_true, index),
    re-sorted by (-matching, is_true), then the rest in contrastive order; rank = position of the
    first true item."""
    T, N = len(sims), len(sims[0])

    def rank(cands):  # cands: (contrastive, matching, is_true, index)
        order = sorted(cands, key=lambda c: (-c[0], c[2], c[3]))
        top = sorted(order[:K], key=lambda c: (-c[1], c[2]))
        final = top + order[K:]
        return next(p for p, c in enumerate(final) if c[2])

    t2i = [rank([(sims[t][j], itm[t][j], j == cap_img[t], j) for j in range(N)]) for t in range(T)]
    i2t = [rank([(sims[t][j], itm[t][j], cap_img[t] == j, t) for t in range(T)]) for j in range(N)]

    def rec(r):
        return {f"r{k}": sum(x < k for x in r) / len(r) for k in ks}

    return {"i2t": rec(i2t), "t2i": rec(t2i)}


def _scorer_from_matrix(itm, calls=None):
    def score(text_rows, image_rows):
        if calls is not None:
            calls.append((text_rows.clone(), image_rows.clone()))
        return itm[text_rows, image_rows]
    return score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_matches_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    N, T = 9, 23
    cap_img = torch.cat([torch.arange(N), torch.randint(0, N, (T - N,), generator=g)])
    cap_img = cap_img[torch.randperm(T, generator=g)]
    # identity image embeddings: text row t *is* its row of scores; small integers -> many ties
    text = torch.randint(-2, 3, (T, N), generator=g).double()
    img = torch.eye(N, dtype=torch.float64)
    itm = torch.randint(0, 4, (T, N), generator=g).double()
    ks = (1, 2, 3, 5, 10)
    for K in (1, 2, 4, 9, 30):
        expected = _reference(text.tolist(), itm.tolist(), cap_img.tolist(), K, ks)
        results = [rerank_recall_at_k(text, img, cap_img, _scorer_from_matrix(itm), K, ks=ks, chunk_size=c)
                   for c in (1, 5, 1000)]
        assert results[0] == results[1] == results[2]
        assert results[0]["t2i"] == pytest.approx(expected["t2i"]), K
        assert results[0]["i2t"] == pytest.approx(expected["i2t"]), K


@pytest.mark.parametrize("coef", [0.5, 3.0])
def test_rerank_with_contrastive_weight_matches_reference(coef):
    """The K are ordered by log P(matched) + coef * contrastive score: the reference gets that sum
    as its matching score."""
    g = torch.Generator().manual_seed(7)
    N, T = 8, 20
    cap_img = torch.cat([torch.arange(N), torch.randint(0, N, (T - N,), generator=g)])
    text = torch.randint(-2, 3, (T, N), generator=g).double() / 2
    img = torch.eye(N, dtype=torch.float64)
    prob = torch.rand(T, N, generator=g, dtype=torch.float64) * 0.98 + 0.01
    combined = prob.log() + coef * text
    ks = (1, 2, 5)
    for K in (2, 5, 8):
        expected = _reference(text.tolist(), combined.tolist(), cap_img.tolist(), K, ks)
        got = rerank_recall_at_k(text, img, cap_img, _scorer_from_matrix(prob), K, ks=ks, contrastive_coef=coef)
        assert got["t2i"] == pytest.approx(expected["t2i"]) and got["i2t"] == pytest.approx(expected["i2t"]), K
    # a dominant contrastive weight gives back the contrastive ranking (no ties in these scores)
    distinct = torch.randn(T, N, generator=g, dtype=torch.float64)
    assert rerank_recall_at_k(distinct, img, cap_img, _scorer_from_matrix(prob), 5, ks=ks,
                              contrastive_coef=1e6) == recall_at_k(distinct, img, cap_img, ks=ks)
    with pytest.raises(ValueError, match="contrastive_coef"):
        rerank_recall_at_k(text, img, cap_img, _scorer_from_matrix(prob), 2, contrastive_coef=-1.0)


def test_rerank_scores_only_top_k_pairs_and_the_same_score_changes_nothing():
    g = torch.Generator().manual_seed(3)
    N, T, K = 7, 14, 3
    cap_img = torch.arange(T) % N
    img = torch.randn(N, 5, generator=g, dtype=torch.float64)
    text = img[cap_img] + 1.2 * torch.randn(T, 5, generator=g, dtype=torch.float64)
    sims = text @ img.T
    calls = []
    # re-scoring with the contrastive score itself leaves every rank where it was
    res = rerank_recall_at_k(text, img, cap_img, _scorer_from_matrix(sims, calls), K, ks=(1, 2, 3, 5))
    assert res == recall_at_k(text, img, cap_img, ks=(1, 2, 3, 5))
    # every scored pair is one of the query's top K (t2i: top-K images of caption t; i2t: top-K captions)
    top_img = sims.topk(K, dim=1).indices
    top_txt = sims.T.topk(K, dim=1).indices
    (t2i_t, t2i_i), (i2t_t, i2t_i) = calls
    assert all(i in top_img[t] for t, i in zip(t2i_t.tolist(), t2i_i.tolist()))
    assert all(t in top_txt[i] for t, i in zip(i2t_t.tolist(), i2t_i.tolist()))
    assert len(t2i_t) % K == 0 and 0 < len(t2i_t) < T * K  # captions with the truth outside: not scored


def test_rerank_ground_truth_scorer_and_nonfinite():
    # t2i: caption 0's true image is 3rd by contrast (rank 2) and 1st by matching
    text = torch.tensor([[0.5, 0.9, 0.8], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])
    img = torch.eye(3)
    cap = torch.tensor([0, 1, 2])
    truth = (cap[:, None] == torch.arange(3)).float()
    assert recall_at_k(text, img, cap, ks=(1,))["t2i"]["r1"] == pytest.approx(2 / 3)
    assert rerank_recall_at_k(text, img, cap, _scorer_from_matrix(truth), 3, ks=(1,))["t2i"]["r1"] == 1.0
    assert rerank_recall_at_k(text, img, cap, _scorer_from_matrix(truth), 2, ks=(1,))["t2i"]["r1"] == pytest.approx(2 / 3)
    # a NaN matching score on the true item: never a hit; on a wrong one: ranked ahead
    nan_true = truth.clone()
    nan_true[1, 1] = float("nan")
    assert rerank_recall_at_k(text, img, cap, _scorer_from_matrix(nan_true), 3, ks=(1, 3))["t2i"] == \
        pytest.approx({"r1": 2 / 3, "r3": 2 / 3})
    nan_wrong = truth.clone()
    nan_wrong[2, 0] = float("nan")
    assert rerank_recall_at_k(text, img, cap, _scorer_from_matrix(nan_wrong), 3, ks=(1, 2))["t2i"] == \
        pytest.approx({"r1": 2 / 3, "r2": 1.0})
    with pytest.raises(ValueError, match="rerank"):
        rerank_recall_at_k(text, img, cap, _scorer_from_matrix(truth), 0)


# --------------------------------------------------------------------------------------------
# evaluate_retrieval on a tiny fused model
# --------------------------------------------------------------------------------------------
NUMS = ["one", "two", "three", "eins", "zwei", "drei"]
COLS = ["red", "blue", "green", "rot", "blau", "grün"]
SHAPES = ["circle", "square", "Kreis", "Quadrat"]


def _write_dataset(tmp_path, n_images=10):
    g = torch.Generator().manual_seed(0)
    (tmp_path / "images").mkdir()
    records, text_image = [], {}
    for n in range(n_images):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"{n}.png")
        caps = [("en", f"{NUMS[n % 3]} {COLS[n % 6]} {SHAPES[n % 4]}"),
                ("de", f"{NUMS[3 + n % 3]} {COLS[(n + 2) % 6]} {SHAPES[(n + 1) % 4]}")]
        if n % 2:
            caps.append(("en", f"{NUMS[(n + 1) % 3]} {COLS[(n + 4) % 6]} {SHAPES[(n + 3) % 4]}"))
        caps = [(lang, f"{text} {'circle' if n < 5 else 'square'}") for lang, text in caps]
        for lang, text in caps:
            assert text not in text_image
            text_image[text] = str(n)
        records.append({"image_id": str(n), "image": f"images/{n}.png",
                        "captions": [{"lang": lang, "text": text, "kind": "native"} for lang, text in caps]})
    return records, text_image


@pytest.fixture
def fused_model(tiny_tokenizer):
    torch.manual_seed(0)
    return XVLModel(tiny_model_config(fusion=FusionConfig(layers=1, heads=2)), tiny_tokenizer)


def test_rerank_zero_is_the_old_result_and_schema(fused_model, tmp_path):
    records, _ = _write_dataset(tmp_path)
    old = evaluate_retrieval(fused_model, records, str(tmp_path), progress=False)
    assert evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank=0) == old
    assert "rerank" not in old
    new = evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank=3, batch_size=4)
    assert new["rerank"] == 3 and set(new) == set(old) | {"rerank"}
    for lang in old["per_language"]:
        assert set(new["per_language"][lang]) == set(old["per_language"][lang])
        for key in ("n_images", "n_captions"):
            assert new["per_language"][lang][key] == old["per_language"][lang][key]
    assert set(new["average"]) == set(old["average"])
    json.dumps(new)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="rerank"):
            evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank=bad)
    mixed = evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank=3, batch_size=4,
                               rerank_contrastive=1.0)
    assert mixed["rerank_contrastive"] == 1.0 and set(mixed) == set(new) | {"rerank_contrastive"}
    with pytest.raises(ValueError, match="set rerank K > 0"):
        evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank_contrastive=1.0)


def test_ground_truth_scorer_gives_recall_at_k_of_the_contrastive_top_k(fused_model, tmp_path, monkeypatch):
    records, text_image = _write_dataset(tmp_path)
    K = 5
    plain = evaluate_retrieval(fused_model, records, str(tmp_path), progress=False)
    ids = []

    def fake_tokens(model, items, kept, *args, **kwargs):  # token "row" p = kept image p
        ids[:] = [items[k][0] for k in kept]
        return torch.arange(len(kept), dtype=torch.float32).view(-1, 1, 1)

    def truth_scorer(model, texts, image_tokens, image_rows, lang=None, **kwargs):
        def score(text_rows, image_rows_):
            rows = [image_rows[j] for j in image_rows_.tolist()]
            return torch.tensor([float(text_image[texts[t]] == ids[int(image_tokens[r])])
                                 for t, r in zip(text_rows.tolist(), rows)])
        return score

    monkeypatch.setattr(retrieval, "_encode_image_tokens", fake_tokens)
    monkeypatch.setattr(retrieval, "matching_scorer", truth_scorer)
    res = evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank=K, chunk_size=3)
    somewhere_outside = False
    for lang, p in plain["per_language"].items():
        r = res["per_language"][lang]
        for d in ("t2i", "i2t"):
            # in the top K -> ranked first; outside -> the contrastive rank (>= K) is kept
            assert r[d]["r1"] == pytest.approx(p[d]["r5"]), (lang, d)
            assert r[d]["r5"] == pytest.approx(p[d]["r5"]) and r[d]["r10"] == pytest.approx(p[d]["r10"])
            somewhere_outside |= p[d]["r5"] < 1.0
            assert p[d]["r1"] < p[d]["r5"] or p[d]["r5"] == 1.0  # re-ranking had something to fix
    assert somewhere_outside  # the data leaves some true items outside the top 5


def _brute_force(model, records, root, K):
    """Per language: every (caption, image) pair fused on its own; the plain reference ranking."""
    model.eval()
    out = {}
    with torch.no_grad():
        pix = torch.stack([model.preprocess(Image.open(root / r["image"]).convert("RGB")) for r in records])
        v = model.vision(pix)
        img_emb = model.encode_image(pix)
        for lang in ("de", "en"):
            caps = [(n, c["text"]) for n, r in enumerate(records) for c in r["captions"] if c["lang"] == lang]
            cand = sorted({n for n, _ in caps})
            cap_img = [cand.index(n) for n, _ in caps]
            sims, itm = [], []
            for _, text in caps:
                tok = model.tokenize([text])
                sims.append((model.encode_text(**tok) @ img_emb[cand].T)[0].tolist())
                tt = model.text(tok["input_ids"], tok["attention_mask"])["text_tokens"]
                row = []
                for j in cand:
                    fused = model.fuse(tt, tok["attention_mask"], v["image_tokens"][j:j + 1])
                    row.append(model.itm_head(fused[:, 0]).softmax(-1)[0, 1].item())
                itm.append(row)
            out[lang] = _reference(sims, itm, cap_img, K, (1, 5, 10))
    return out


def test_real_matching_scorer_matches_brute_force(fused_model, tmp_path):
    records, _ = _write_dataset(tmp_path, n_images=8)
    fused_model.train()
    for K in (3, 8):
        res = evaluate_retrieval(fused_model, records, str(tmp_path), progress=False, rerank=K, batch_size=5)
        assert fused_model.training  # the train/eval mode is restored
        expected = _brute_force(fused_model, records, tmp_path, K)
        fused_model.train()
        for lang, exp in expected.items():
            assert res["per_language"][lang]["t2i"] == pytest.approx(exp["t2i"]), (K, lang)
            assert res["per_language"][lang]["i2t"] == pytest.approx(exp["i2t"]), (K, lang)


def test_matching_scorer_values(fused_model):
    model = fused_model.eval()
    texts = ["one red circle", "zwei blau Quadrat", "drei grün Kreis"]
    tokens = torch.randn(4, 16, 32)
    score = matching_scorer(model, texts, tokens, image_rows=[2, 0, 3], batch_size=2)
    t_rows, i_rows = torch.tensor([2, 0, 1, 0, 2]), torch.tensor([1, 2, 0, 0, 1])
    got = score(t_rows, i_rows)
    with torch.no_grad():
        for m, (t, i) in enumerate(zip(t_rows.tolist(), i_rows.tolist())):
            tok = model.tokenize([texts[t]])
            tt = model.text(tok["input_ids"], tok["attention_mask"])["text_tokens"]
            ctx = tokens[[2, 0, 3][i]][None]
            p = model.itm_head(model.fuse(tt, tok["attention_mask"], ctx)[:, 0]).softmax(-1)[0, 1]
            assert got[m].item() == pytest.approx(p.item(), abs=1e-5)


def test_dual_encoder_is_refused_before_any_work(tiny_model, tmp_path, monkeypatch):
    records, _ = _write_dataset(tmp_path, n_images=3)
    calls = []
    monkeypatch.setattr(tiny_model, "encode_image", lambda *a, **k: calls.append("image"))
    monkeypatch.setattr(tiny_model, "encode_text", lambda *a, **k: calls.append("text"))
    monkeypatch.setattr(retrieval, "load_image", lambda *a, **k: calls.append("load"))
    with pytest.raises(ValueError, match="fusion"):
        evaluate_retrieval(tiny_model, records, str(tmp_path), progress=False, rerank=5)
    assert calls == []
    with pytest.raises(ValueError, match="fusion"):
        matching_scorer(tiny_model, ["x"], torch.zeros(1, 1, 1), [0])


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_rerank_flag(fused_model, tmp_path, capsys):
    from xvl.cli import build_parser, main

    args = build_parser().parse_args(["eval", "retrieval", "--model", "m", "--data", "d.jsonl"])
    assert args.rerank == 0
    args = build_parser().parse_args(["eval", "retrieval", "--model", "m", "--data", "d.jsonl", "--rerank", "7"])
    assert args.rerank == 7
    records, _ = _write_dataset(tmp_path, n_images=4)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    fused_model.save_pretrained(str(tmp_path / "model"))
    out = tmp_path / "res.json"
    assert main(["eval", "retrieval", "--model", str(tmp_path / "model"), "--data", str(data),
                 "--rerank", "2", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rerank"] == 2 and set(res["per_language"]) == {"en", "de"}
    assert main(["eval", "retrieval", "--model", str(tmp_path / "model"), "--data", str(data),
                 "--rerank", "2", "--rerank-contrastive", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rerank_contrastive"] == 1.0
