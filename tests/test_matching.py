"""ITM / TTM (CCLM matching with in-batch hard negatives): the sampler, parity of the loss with a
per-pair reference, pair_kind masking, duplicate-text exclusion, and that a tiny model learns."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import xvl.objectives.matching as matching
from xvl.config import FusionConfig
from xvl.configlib import ConfigError
from xvl.models.model import XVLModel
from xvl.objectives.base import build_objective
from xvl.objectives.matching import MatchingObjective, TextMatchingObjective, sample_hard_negatives
from xvl.registry import OBJECTIVES
from conftest import tiny_model_config


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


PAIRS = [
    ("one red circle", "eins rot Kreis"),
    ("two blue square", "zwei blau Quadrat"),
    ("three green circle", "drei grün Kreis"),
    ("one blue square", "eins blau Quadrat"),
    ("two red square", "zwei rot Quadrat"),
    ("three blue circle", "drei blau Kreis"),
]


@pytest.fixture
def fused_model(tiny_tokenizer):
    torch.manual_seed(0)
    return XVLModel(tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0)), tiny_tokenizer)


def make_batch(model, pairs=PAIRS, seed=0, pair_kind=None):
    g = torch.Generator().manual_seed(seed)
    a = model.tokenize([p[0] for p in pairs])
    b = model.tokenize([p[1] for p in pairs])
    batch = {"image": torch.randn(len(pairs), 3, 32, 32, generator=g), "input_ids": a["input_ids"],
             "attention_mask": a["attention_mask"], "pair_input_ids": b["input_ids"],
             "pair_attention_mask": b["attention_mask"]}
    if pair_kind is not None:
        batch["pair_kind"] = torch.tensor(pair_kind)
    return batch


# ------------------------------------------------------------------------------------- sampler
def test_sampler_never_draws_diagonal_or_excluded():
    g = torch.Generator().manual_seed(0)
    B = 6
    exclude = torch.zeros(B, B, dtype=torch.bool)
    exclude[0, 1] = exclude[0, 2] = exclude[3, :] = True  # row 3: every column excluded
    exclude[4, 5] = True
    for _ in range(300):
        sim = torch.randn(B, B, generator=g) * 3
        sim.fill_diagonal_(50.0)  # the positive would win every draw if it were allowed
        out = sample_hard_negatives(sim, exclude, generator=g)
        assert out.dtype == torch.long and out.shape == (B,)
        assert out[3] == -1
        ok = out[torch.arange(B) != 3]
        rows = torch.arange(B)[torch.arange(B) != 3]
        assert (ok != rows).all() and not exclude[rows, ok].any()
    assert sample_hard_negatives(torch.zeros(1, 1)).tolist() == [-1]  # a batch of one


def test_sampler_peaked_similarity_takes_off_diagonal_argmax():
    g = torch.Generator().manual_seed(1)
    B = 5
    sim = torch.randn(B, B, generator=g)
    target = torch.tensor([3, 0, 4, 1, 2])
    sim[torch.arange(B), target] += 1000.0
    sim.fill_diagonal_(5000.0)
    exclude = torch.zeros(B, B, dtype=torch.bool)
    for _ in range(50):
        assert torch.equal(sample_hard_negatives(sim, exclude, generator=g), target)
    # excluding the argmax moves the draw to the next-best allowed column
    exclude[0, 3] = True
    sim[0, 2] += 500.0
    assert sample_hard_negatives(sim, exclude, generator=g)[0] == 2


def test_sampler_follows_the_softmax():
    g = torch.Generator().manual_seed(2)
    sim = torch.tensor([[9.0, 0.0, 1.0, 2.0], [0.0, 9.0, 0.0, 0.0],
                        [0.5, -1.0, 9.0, 0.0], [1.0, 1.0, 1.0, 9.0]])
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[2, 3] = True
    n = 10000
    counts = torch.zeros(4, 4)
    for _ in range(n):
        out = sample_hard_negatives(sim, exclude, generator=g)
        counts[torch.arange(4), out] += 1
    expected = sim.masked_fill(torch.eye(4, dtype=torch.bool) | exclude, float("-inf")).softmax(1) * n
    # Pearson chi-square per row over the allowed columns; 3 or fewer dof: 20 is far in the tail
    for i in range(4):
        allowed = expected[i] > 0
        chi2 = ((counts[i][allowed] - expected[i][allowed]) ** 2 / expected[i][allowed]).sum()
        assert chi2 < 20, (i, counts[i], expected[i])
        assert counts[i][~allowed].sum() == 0


# ----------------------------------------------------------------------------------- objective
def test_registry_args_and_validation(fused_model, tiny_tokenizer):
    assert OBJECTIVES.get("itm") is MatchingObjective and OBJECTIVES.get("ttm") is TextMatchingObjective
    itm, ttm = build_objective("itm", {}, model=fused_model), build_objective("ttm", {}, model=fused_model)
    assert itm.args.view == "image" and itm.requires == ("image", "input_ids") and not itm.needs_pairs
    assert ttm.args.view == "text" and ttm.requires == ("pair_input_ids", "input_ids") and ttm.needs_pairs
    assert build_objective("itm", {"view": "text"}).requires == ("pair_input_ids", "input_ids")
    with pytest.raises((ValueError, ConfigError)):
        build_objective("itm", {"view": "video"})
    with pytest.raises((ValueError, ConfigError)):
        build_objective("itm", {"local_negatives": True})  # dropped: negatives are always local
    plain = XVLModel(tiny_model_config(), tiny_tokenizer)
    with pytest.raises(ValueError, match="fusion"):
        build_objective("itm", {}, model=plain)


def _reference_loss(model, batch, view, neg_ctx, neg_text, pos):
    """Plain loop: fuse every pair on its own (batch of one) and average the cross-entropies."""
    out = model(batch)
    text, mask = out["text_tokens"], batch["attention_mask"]
    if view == "image":
        ctx, cmask = out["image_tokens"], None
    else:
        ctx, cmask = out["pair_tokens"], batch["pair_attention_mask"]
    terms = []

    def term(t, c, label):
        fused = model.fuse(text[t:t + 1], mask[t:t + 1], ctx[c:c + 1],
                           None if cmask is None else cmask[c:c + 1], context_type=view)
        logp = F.log_softmax(model.itm_head(fused[:, 0]), dim=-1)
        terms.append(-logp[0, label])

    B = text.shape[0]
    for i in range(B):
        if pos[i]:
            term(i, i, 1)
    for i in range(B):
        if neg_ctx[i] >= 0:
            term(i, int(neg_ctx[i]), 0)
    for i in range(B):
        if neg_text[i] >= 0:
            term(int(neg_text[i]), i, 0)
    return torch.stack(terms).mean(), out


def _recording_sampler(monkeypatch):
    calls = []
    real = matching.sample_hard_negatives

    def spy(sim, exclude=None, generator=None):
        out = real(sim, exclude, generator=generator)
        calls.append((sim.clone(), None if exclude is None else exclude.clone(), out.clone()))
        return out

    monkeypatch.setattr(matching, "sample_hard_negatives", spy)
    return calls


@pytest.mark.parametrize("view", ["image", "text"])
def test_loss_matches_per_pair_reference(fused_model, monkeypatch, view):
    model = fused_model.eval()
    calls = _recording_sampler(monkeypatch)
    obj = build_objective("itm", {"view": view}, model=model)
    batch = make_batch(model)
    torch.manual_seed(3)
    out = model(batch)
    res = obj(out, batch)
    assert set(res) == {"itm_loss", "itm_acc"}
    (sim_tc, exc_tc, neg_ctx), (sim_ct, exc_ct, neg_text) = calls
    # the sampler saw the scaled contrastive similarity, and its transpose for the other direction
    e_ctx = out["image_embeds"] if view == "image" else out["pair_embeds"]
    expected_sim = out["logit_scale"] * out["text_embeds"] @ e_ctx.t()
    assert torch.allclose(sim_tc, expected_sim, atol=1e-5) and torch.allclose(sim_ct, expected_sim.t(), atol=1e-5)
    off = ~torch.eye(len(PAIRS), dtype=torch.bool)
    assert not (exc_tc & off).any() and not (exc_ct & off).any()  # all texts distinct
    ref, _ = _reference_loss(model, batch, view, neg_ctx, neg_text, [True] * len(PAIRS))
    assert torch.allclose(res["itm_loss"], ref, atol=1e-5), (res["itm_loss"], ref)
    # gradient reaches both towers, the fusion encoder and the head
    res["itm_loss"].backward()
    for mod in (model.fusion, model.itm_head, model.text):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    if view == "image":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())


def test_random_negatives_are_uniform_draws(fused_model, monkeypatch):
    calls = _recording_sampler(monkeypatch)
    obj = build_objective("itm", {"hard_negatives": False}, model=fused_model.eval())
    batch = make_batch(fused_model)
    obj(fused_model(batch), batch)
    assert all(torch.equal(sim, torch.zeros_like(sim)) for sim, _, _ in calls)


def test_hard_negative_warmup_uses_uniform_draws_then_hard_ones_and_resumes(fused_model, monkeypatch):
    calls = _recording_sampler(monkeypatch)
    obj = build_objective("itm", {"hard_negative_warmup_steps": 2}, model=fused_model.eval())
    batch = make_batch(fused_model)
    uniform = []
    for _ in range(4):
        calls.clear()
        obj(fused_model(batch), batch)
        uniform.append(all(torch.equal(sim, torch.zeros_like(sim)) for sim, _, _ in calls))
        obj.after_step(fused_model)
    assert uniform == [True, True, False, False]
    # the step count is state: a resumed objective switches at the same step
    resumed = build_objective("itm", {"hard_negative_warmup_steps": 2}, model=fused_model)
    resumed.load_state_dict({"steps_done": torch.tensor(1)})
    assert not resumed.uses_hard_negatives()
    resumed.after_step(fused_model)
    assert resumed.uses_hard_negatives()
    # without warm-up no buffer: older checkpoints keep loading
    assert "steps_done" not in build_objective("itm", {}, model=fused_model).state_dict()
    with pytest.raises(ValueError, match="hard_negative_warmup_steps"):
        build_objective("itm", {"hard_negative_warmup_steps": -1}, model=fused_model)


def test_identical_texts_are_not_negatives_of_each_other(fused_model, monkeypatch):
    calls = _recording_sampler(monkeypatch)
    pairs = list(PAIRS)
    pairs[4] = pairs[1]  # rows 1 and 4: the same caption (and the same translation)
    batch = make_batch(fused_model, pairs)
    for name in ("itm", "ttm"):
        calls.clear()
        obj = build_objective(name, {}, model=fused_model.eval())
        for _ in range(20):
            res = obj(fused_model(batch), batch)
            assert set(res) == {f"{name}_loss", f"{name}_acc"}
        for _, exc, neg in calls:
            expected = torch.zeros(6, 6, dtype=torch.bool)
            expected[1, 4] = expected[4, 1] = True
            expected.fill_diagonal_(True)
            assert torch.equal(exc | torch.eye(6, dtype=torch.bool), expected)
            assert neg[1] != 4 and neg[4] != 1
    # only the translations equal (rows 2 and 5): excluded for ttm (its context), not for itm
    pairs = list(PAIRS)
    pairs[5] = (pairs[5][0], pairs[2][1])
    batch = make_batch(fused_model, pairs)
    for name, excluded in (("itm", False), ("ttm", True)):
        calls.clear()
        build_objective(name, {}, model=fused_model)(fused_model(batch), batch)
        for _, exc, _ in calls:
            assert bool(exc[2, 5]) == bool(exc[5, 2]) == excluded
            assert exc.sum() - exc.diagonal().sum() == 2 * excluded


def test_pair_kind_zero_rows_are_not_positives(fused_model, monkeypatch):
    model = fused_model.eval()
    calls = _recording_sampler(monkeypatch)
    obj = build_objective("ttm", {}, model=model)
    kind = [2, 0, 1, 0, 2, 1]
    batch = make_batch(model, pair_kind=kind)
    res = obj(model(batch), batch)
    (_, _, neg_ctx), (_, _, neg_text) = calls
    pos = [k != 0 for k in kind]
    ref, _ = _reference_loss(model, batch, "text", neg_ctx, neg_text, pos)
    assert torch.allclose(res["ttm_loss"], ref, atol=1e-5)
    # ... and differs from the loss that would use every row as a positive
    unmasked, _ = _reference_loss(model, batch, "text", neg_ctx, neg_text, [True] * 6)
    assert not torch.allclose(ref, unmasked, atol=1e-4)
    # a batch of one pair_kind-0 row scores nothing: a zero loss that still backpropagates
    one = make_batch(model, PAIRS[:1], pair_kind=[0])
    res = obj(model(one), one)
    assert res["ttm_loss"].item() == 0.0 and res["ttm_loss"].requires_grad
    res["ttm_loss"].backward()


@pytest.mark.parametrize("view", ["image", "text"])
def test_loss_decreases_on_a_fixed_batch(tiny_tokenizer, view):
    # A from-scratch 1-layer fusion encoder first sits at the chance plateau (~0.64: a constant
    # 1/3 "matched" prediction for 1 positive : 2 negatives) for some 40-100 steps before it starts
    # to tell pairs apart, so this runs 200 steps (~10 ms each) instead of 30.
    torch.manual_seed(0)
    # eval(): no dropout in the text tower, so the fixed batch gives a deterministic target
    model = XVLModel(tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0)), tiny_tokenizer).eval()
    obj = build_objective("itm", {"view": view}, model=model)
    batch = make_batch(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = obj(model(batch), batch)["itm_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    chance = -(math.log(1 / 3) + 2 * math.log(2 / 3)) / 3
    last = sum(losses[-10:]) / 10
    assert losses[0] > chance and last < 0.5 * chance, losses



def test_max_rows_scores_only_the_first_rows_but_draws_negatives_from_the_whole_batch(fused_model, monkeypatch):
    """itm max_rows=N: the loss equals the reference over the first N rows' positive and two
    negatives, while the negatives are drawn from the whole batch's similarity."""
    model = fused_model.eval()
    calls = _recording_sampler(monkeypatch)
    obj = build_objective("itm", {"max_rows": 2}, model=model)
    batch = make_batch(model)
    out = model(batch)
    res = obj(out, batch)
    (sim_tc, _, neg_ctx), (_, _, neg_text) = calls
    assert sim_tc.shape == (len(PAIRS), len(PAIRS))
    n_fused = []
    orig = model.fuse
    monkeypatch.setattr(model, "fuse", lambda t, *a, **k: n_fused.append(t.shape[0]) or orig(t, *a, **k))
    obj(out, batch)
    assert n_fused == [6]
    first = torch.arange(len(PAIRS)) < 2
    ref, _ = _reference_loss(model, batch, "image", neg_ctx.masked_fill(~first, -1),
                             neg_text.masked_fill(~first, -1), first.tolist())
    assert torch.allclose(res["itm_loss"], ref, atol=1e-5), (res["itm_loss"], ref)
