"""Word aligner (xvl.align) and the VECO 2.0 token-to-token contrastive objective."""
from __future__ import annotations

import math

import pytest
import torch

from xvl.align import (Lexicon, alignment_to_tensor, lexicon_alignment, mutual_argmax_alignment,
                       special_token_ids, special_tokens_mask, word_spans)
from xvl.config import ObjectiveSpec
from xvl.configlib import ConfigError
from xvl.objectives.base import build_objective, build_objectives


def objective(**args):
    return build_objective("token_contrastive", args)


# ------------------------------------------------------------------------------ mutual argmax
def _hand_made():
    e1, e2, e3 = torch.eye(3)
    s3 = e2 + 0.5 * e3
    # src: <s>=e3 (special), e1, e2, s3 (not mutual: t2 prefers s2), pad
    src = torch.stack([e3, e1, e2, s3, e1])[None]
    # tgt: <s>=e1 (special; ties with t1 for s1), e1, e2+0.2e3, pad == s3 (would be mutual with s3)
    tgt = torch.stack([e1, e1, e2 + 0.2 * e3, s3])[None]
    src_mask = torch.tensor([[1, 1, 1, 1, 0]])
    tgt_mask = torch.tensor([[1, 1, 1, 0]])
    src_special = torch.tensor([[True, False, False, False, False]])
    tgt_special = torch.tensor([[True, False, False, False]])
    return src, tgt, src_mask, tgt_mask, (src_special, tgt_special)


def _pairs(m):
    return sorted(map(tuple, m[0].nonzero().tolist()))


def test_mutual_argmax_exact_alignment():
    src, tgt, sm, tm, special = _hand_made()
    out = mutual_argmax_alignment(src, tgt, sm, tm, special_mask=special)
    assert out.dtype == torch.bool and out.shape == (1, 5, 4)
    expected = torch.zeros(1, 5, 4, dtype=torch.bool)
    expected[0, 1, 1] = expected[0, 2, 2] = True  # (3, 2) is not mutual; pads / specials excluded
    assert torch.equal(out, expected)
    # without the special mask the target <s> (same state as t1, lower index) takes s1
    assert _pairs(mutual_argmax_alignment(src, tgt, sm, tm)) == [(1, 0), (2, 2)]
    # without the padding mask the pad target (state == s3) is a mutual match of s3
    assert (3, 3) in _pairs(mutual_argmax_alignment(src, tgt, torch.ones(1, 5), torch.ones(1, 4), special))
    # threshold: cos(s2, t2) = 1/sqrt(1.04) ~ 0.981
    assert _pairs(mutual_argmax_alignment(src, tgt, sm, tm, special, threshold=0.99)) == [(1, 1)]
    assert _pairs(mutual_argmax_alignment(src, tgt, sm, tm, special, threshold=0.9)) == [(1, 1), (2, 2)]


def test_mutual_argmax_is_detached_and_batched():
    src, tgt, sm, tm, (ss, ts) = _hand_made()
    src = torch.cat([src, torch.randn_like(src)]).requires_grad_(True)
    tgt = torch.cat([tgt, torch.randn_like(tgt)])
    sm, tm = torch.cat([sm, torch.zeros_like(sm)]), torch.cat([tm, tm])  # row 2: no valid source
    out = mutual_argmax_alignment(src, tgt, sm, tm, (torch.cat([ss, ss]), torch.cat([ts, ts])))
    assert not out.requires_grad
    assert _pairs(out[:1]) == [(1, 1), (2, 2)] and not out[1].any()


# ------------------------------------------------------------------------------ lexicon
def test_lexicon_file_formats(tmp_path):
    tab = tmp_path / "lex.tsv"
    tab.write_text("# langs: en de\n# a comment\nRed\trot\nred\trote\n\ncircle\tKreis\nice cream\tEis\n",
                   encoding="utf-8")
    lex = Lexicon.from_file(tab)
    assert (lex.src_lang, lex.tgt_lang) == ("en", "de") and len(lex) == 4
    assert lex.matches("RED", "Rot") and lex.matches("red", "rote") and ("circle.", "Kreis,") in lex
    assert not lex.matches("rot", "red") and lex.inverse().matches("rot", "red")
    assert not Lexicon.from_file(tab, lowercase=False).matches("red", "rot")
    # asking for the swapped direction inverts; another language pair is an error
    assert Lexicon.from_file(tab, "de", "en").matches("Kreis", "circle")
    with pytest.raises(ValueError, match="en->de"):
        Lexicon.from_file(tab, "en", "fr")

    muse = tmp_path / "en-fr.0-5000.txt"  # MUSE: space separated, languages from the file name
    muse.write_text("red rouge\ncircle cercle\ncircle rond\n", encoding="utf-8")
    lex = Lexicon.from_file(muse)
    assert (lex.src_lang, lex.tgt_lang) == ("en", "fr") and len(lex) == 3
    assert lex.translations("circle") == {"cercle", "rond"}

    bad = tmp_path / "bad.txt"
    bad.write_text("red rouge\nthree words here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt:2"):
        Lexicon.from_file(bad)
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        Lexicon.from_file(tmp_path / "nope.tsv", "en", "de")


def test_word_spans_from_ids_match_word_ids(tiny_tokenizer):
    texts = ["two red circles", "zwei rote Kreise", "un cercle"]
    enc = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    spans = word_spans(tiny_tokenizer, enc["input_ids"], enc["attention_mask"])
    for b, row in enumerate(spans):
        wid = enc.word_ids(b)
        expected = [(k, k + wid.count(w)) for k, w in enumerate(wid) if w is not None and (k == 0 or wid[k - 1] != w)]
        assert row == expected
    # "zwei rote Kreise" -> <s> ▁zwei ▁rot e ▁Kreis e </s>
    assert tiny_tokenizer.convert_ids_to_tokens(enc["input_ids"][1].tolist()) == \
        ["<s>", "▁zwei", "▁rot", "e", "▁Kreis", "e", "</s>"]
    assert spans[1] == [(1, 2), (2, 4), (4, 6)]
    assert spans[2][-1][1] <= int(enc["attention_mask"][2].sum()) - 1  # no </s>, no padding
    sp = special_tokens_mask(enc["input_ids"], special_token_ids(tiny_tokenizer))
    assert sp[1].tolist() == [True] + [False] * 5 + [True]
    assert sp[2].tolist() == [True, False, False, True, True, True, True]  # <s> ▁un ▁cercle </s> pads


def test_lexicon_alignment_token_indices(tiny_tokenizer):
    lex = Lexicon([("two", "zwei"), ("red", "rote"), ("circles", "Kreise"), ("red", "rouge"),
                   ("circle", "cercle"), ("blue", "bleu")])
    src = ["two red circles", "red circle.", "blue square blue"]
    tgt = ["zwei rote Kreise", "cercle rouge", "bleu carré, bleu!"]
    # <s> ▁two ▁red ▁circle s </s>   /   <s> ▁zwei ▁rot e ▁Kreis e </s>
    assert tiny_tokenizer.tokenize(src[0]) == ["▁two", "▁red", "▁circle", "s"]
    assert tiny_tokenizer.tokenize(tgt[0]) == ["▁zwei", "▁rot", "e", "▁Kreis", "e"]
    first = lexicon_alignment(src, tgt, tiny_tokenizer, lex, max_length=16)
    assert first[0] == [(1, 1), (2, 2), (3, 4)]
    assert first[1] == [(1, 2), (2, 1)]  # word order differs; punctuation is ignored
    assert first[2] == [(1, 1), (3, len(tiny_tokenizer.tokenize("bleu carré,")) + 1)]  # one-to-one, in order
    allsub = lexicon_alignment(src[:1], tgt[:1], tiny_tokenizer, lex, max_length=16, subwords="all")
    assert allsub[0] == [(1, 1), (2, 2), (2, 3), (3, 4), (3, 5), (4, 4), (4, 5)]
    many = lexicon_alignment(src[2:], tgt[2:], tiny_tokenizer, lex, one_to_one=False)
    assert len(many[0]) == 4
    # truncation drops pairs beyond max_length
    assert lexicon_alignment(src[:1], tgt[:1], tiny_tokenizer, lex, max_length=3) == [[(1, 1)]]
    m = alignment_to_tensor(first, 6, 7)
    assert m.shape == (3, 6, 7) and int(m.sum()) == 7 and m[0, 3, 4]


# ------------------------------------------------------------------------------ the objective
def _random_batch(seed=0, B=3, L=6, L2=7, H=8):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(B, L, H, generator=g), torch.randn(B, L2, H, generator=g)
    ids = torch.randint(5, 50, (B, L), generator=g)
    pids = torch.randint(5, 50, (B, L2), generator=g)
    am, pm = torch.ones(B, L, dtype=torch.long), torch.ones(B, L2, dtype=torch.long)
    for k, (n, n2) in enumerate([(6, 7), (4, 7), (5, 3)][:B]):
        ids[k, 0], ids[k, n - 1], ids[k, n:] = 0, 2, 1
        pids[k, 0], pids[k, n2 - 1], pids[k, n2:] = 0, 2, 1
        am[k, n:], pm[k, n2:] = 0, 0
    align = torch.rand(B, L, L2, generator=g) < 0.25
    batch = {"input_ids": ids, "attention_mask": am, "pair_input_ids": pids, "pair_attention_mask": pm,
             "alignment": align}
    return {"text_tokens": a, "pair_tokens": b}, batch


def reference_token_infonce(a, b, batch, tau):
    """Plain loops over aligned pairs of valid (non-pad, non-special) tokens."""
    special = {0, 1, 2, 4}

    def valid(ids, mask):
        return [[int(m) == 1 and int(t) not in special for t, m in zip(r, mr)] for r, mr in zip(ids, mask)]

    va = valid(batch["input_ids"], batch["attention_mask"])
    vb = valid(batch["pair_input_ids"], batch["pair_attention_mask"])

    def cos(x, y):
        return float(x @ y) / (float(x.norm()) * float(y.norm()))

    def nll(logits, k):
        m = max(logits)
        return m + math.log(sum(math.exp(v - m) for v in logits)) - logits[k]

    st, ts = [], []
    for n in range(a.shape[0]):
        cols = [j for j in range(b.shape[1]) if vb[n][j]]
        rows = [i for i in range(a.shape[1]) if va[n][i]]
        for i in rows:
            for j in cols:
                if not batch["alignment"][n, i, j]:
                    continue
                st.append(nll([cos(a[n, i], b[n, c]) / tau for c in cols], cols.index(j)))
                ts.append(nll([cos(a[n, r], b[n, j]) / tau for r in rows], rows.index(i)))
    return 0.5 * (sum(st) / len(st) + sum(ts) / len(ts)), len(st)


def test_loss_matches_python_reference():
    outputs, batch = _random_batch()
    # pairs on padding / special positions exist in the random alignment and must be ignored
    assert batch["alignment"][1, 4:].any() and batch["alignment"][:, 0].any()
    obj = objective(alignment="batch", temperature=0.1)
    out = obj(outputs, batch)
    ref, n = reference_token_infonce(outputs["text_tokens"], outputs["pair_tokens"], batch, 0.1)
    assert n > 5
    assert float(out["token_contrastive_loss"]) == pytest.approx(ref, rel=1e-5)
    assert float(out["token_contrastive_pairs"]) == n
    assert 0.0 <= float(out["token_contrastive_acc"]) <= 1.0
    # the list-of-pairs form of batch["alignment"] gives the same loss
    pairs = [sorted(map(tuple, m.nonzero().tolist())) for m in batch["alignment"]]
    out2 = obj(outputs, {**batch, "alignment": pairs})
    assert float(out2["token_contrastive_loss"]) == pytest.approx(ref, rel=1e-5)


def test_negatives_come_from_the_same_pair_only_and_never_padding():
    outputs, batch = _random_batch(seed=1)
    obj = objective(alignment="batch")
    batch["alignment"][1:] = False  # only example 0 has pairs
    base = float(obj(outputs, batch)["token_contrastive_loss"])
    alone = obj({k: v[:1] for k, v in outputs.items()}, {k: v[:1] for k, v in batch.items()})
    assert float(alone["token_contrastive_loss"]) == pytest.approx(base, rel=1e-6)
    # other examples' states do not matter
    changed = {k: v.clone() for k, v in outputs.items()}
    changed["text_tokens"][1:] = torch.randn_like(changed["text_tokens"][1:]) * 5
    changed["pair_tokens"][1:] = torch.randn_like(changed["pair_tokens"][1:]) * 5
    assert float(obj(changed, batch)["token_contrastive_loss"]) == pytest.approx(base, rel=1e-6)
    # padding and special positions of example 1 (pads after 4 tokens) are never candidates
    outputs, batch = _random_batch(seed=2)
    batch["alignment"][[0, 2]] = False
    base = float(obj(outputs, batch)["token_contrastive_loss"])
    changed = {k: v.clone() for k, v in outputs.items()}
    changed["text_tokens"][1, 3:] = 100.0  # </s> at 3, padding after
    changed["text_tokens"][1, 0] = -100.0  # <s>
    changed["pair_tokens"][1, 0] = 100.0
    changed["pair_tokens"][1, 6] = 100.0  # </s>
    assert float(obj(changed, batch)["token_contrastive_loss"]) == pytest.approx(base, rel=1e-6)
    # the loss is the pair-weighted sum of the per-example losses
    outputs, batch = _random_batch(seed=3)
    full = obj(outputs, batch)
    parts = [obj({k: v[n:n + 1] for k, v in outputs.items()}, {k: v[n:n + 1] for k, v in batch.items()})
             for n in range(3)]
    st = sum(float(p["token_contrastive_pairs"]) for p in parts)
    assert st == float(full["token_contrastive_pairs"])
    weighted = sum(float(p["token_contrastive_loss"]) * float(p["token_contrastive_pairs"]) for p in parts
                   if float(p["token_contrastive_pairs"]) > 0) / st
    assert float(full["token_contrastive_loss"]) == pytest.approx(weighted, rel=1e-5)


def test_no_pairs_gives_zero_loss_with_grad():
    outputs, batch = _random_batch()
    outputs = {k: v.requires_grad_(True) for k, v in outputs.items()}
    batch["alignment"][:] = False
    batch["alignment"][1, 5, 0] = True  # only a pair on padding / special: ignored
    res = build_objectives([ObjectiveSpec("token_contrastive", 1.0, {"alignment": "batch"})])(outputs, batch)
    loss = res["loss"]
    assert float(loss.detach()) == 0.0 and loss.grad_fn is not None
    assert float(res["token_contrastive_pairs"]) == 0
    loss.backward()
    assert outputs["text_tokens"].grad is not None and float(outputs["text_tokens"].grad.abs().sum()) == 0


def test_mutual_argmax_mode_projection_and_config_errors(tiny_model):
    outputs, batch = _random_batch()
    outputs["pair_tokens"] = outputs["text_tokens"][:, [0, 2, 1, 3, 4, 5, 5]] + 0.01  # a permutation
    res = objective()(outputs, {k: v for k, v in batch.items() if k != "alignment"})
    assert float(res["token_contrastive_pairs"]) > 0 and res["token_contrastive_loss"].requires_grad is False
    with pytest.raises(KeyError, match="alignment"):
        objective(alignment="batch")(outputs, {k: v for k, v in batch.items() if k != "alignment"})
    with pytest.raises(ValueError, match="shape"):
        objective(alignment="batch")(outputs, {**batch, "alignment": batch["alignment"][:, :, :5]})
    with pytest.raises(ConfigError):
        objective(alignment="lexicon")
    with pytest.raises(ConfigError):
        objective(temprature=0.2)
    # projection head: sized from the model, trained by the loss
    obj = build_objective("token_contrastive", {"projection_dim": 12, "alignment": "batch"}, model=tiny_model)
    h = {k: torch.randn(*v.shape[:2], tiny_model.text.width) for k, v in outputs.items()}
    obj(h, batch)["token_contrastive_loss"].backward()
    assert obj.proj.weight.shape == (12, 32) and obj.proj.weight.grad.abs().sum() > 0
    assert objective(projection_dim=12).proj is not None  # no model (config validation): lazy


# ------------------------------------------------------------------------------ training
EN_DE = {"one": "eins", "two": "zwei", "three": "drei", "red": "rot", "blue": "blau", "green": "grün",
         "circle": "Kreis", "square": "Quadrat"}


def test_loss_decreases_training_tiny_model(tiny_model, tiny_tokenizer):
    lex = Lexicon(EN_DE.items(), "en", "de")
    en = [f"{n} {c} {s}" for n, c, s in [("one", "red", "circle"), ("two", "blue", "square"),
                                         ("three", "green", "circle"), ("one", "blue", "square"),
                                         ("two", "green", "square"), ("three", "red", "circle")]]
    de = [" ".join(EN_DE[w] for w in s.split()) for s in en]
    de[1] = "blau zwei Quadrat"  # some word order differences
    de[4] = "Quadrat grün zwei"
    src = tiny_tokenizer(en, padding=True, return_tensors="pt")
    tgt = tiny_tokenizer(de, padding=True, return_tensors="pt")
    pairs = lexicon_alignment(en, tgt_texts=de, tokenizer=tiny_tokenizer, lexicon=lex, max_length=16)
    assert all(len(p) == 3 for p in pairs)
    batch = {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"],
             "pair_input_ids": tgt["input_ids"], "pair_attention_mask": tgt["attention_mask"],
             "alignment": alignment_to_tensor(pairs, src["input_ids"].shape[1], tgt["input_ids"].shape[1])}
    torch.manual_seed(0)
    obj = build_objective("token_contrastive", {"alignment": "batch"}, model=tiny_model)
    params = list(tiny_model.text.parameters()) + list(obj.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead on shared cores
    try:
        for _ in range(60):
            out = obj(tiny_model(batch), batch)
            loss = out["token_contrastive_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    assert float(out["token_contrastive_pairs"]) == 18
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert float(out["token_contrastive_acc"]) > 0.9
