"""XTR (EMS cross-lingual token-level reconstruction): parity with a loop reference, target types,
exact KL, gradients, registry, and that a tiny model actually learns the bag of words."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xvl.config import ObjectiveSpec
from xvl.objectives.base import build_objective, build_objectives
from xvl.objectives.xtr import XTRObjective, target_types, uniform_kl
from xvl.registry import OBJECTIVES

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


PAIRS = [
    ("one red circle", "eins rot Kreis"),
    ("two blue square", "zwei blau Quadrat"),
    ("three green circle", "drei grün Kreis"),
    ("one blue square", "eins blau Quadrat"),
    ("two red square", "zwei rot Quadrat"),
    ("three blue circle", "drei blau Kreis"),
]


def make_objective(model, **args):
    return build_objective("xtr", args, model=model)


def randomize(obj, seed=0):
    """Non-trivial values for every parameter the default init leaves at 0/1 (biases, norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in obj.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def random_batch(model, b=5, length=9, seed=0):
    """Random ids with <s> ... </s> framing, duplicates, <unk>/<mask> inside and right padding."""
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    vocab = model.text.model.get_input_embeddings().weight.shape[0]
    special = set(tok.all_special_ids)
    normal = torch.tensor([i for i in range(vocab) if i not in special])

    def side(s):
        ids = torch.full((b, length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(b, length, dtype=torch.long)
        for i in range(b):
            n = int(torch.randint(2, length - 1, (1,), generator=g))
            body = normal[torch.randint(0, 6 + s, (n,), generator=g) * 7 % len(normal)]  # few ids: duplicates
            if i == 1:
                body[0] = tok.unk_token_id
            ids[i, 0], ids[i, 1:1 + n], ids[i, 1 + n] = tok.bos_token_id, body, tok.eos_token_id
            mask[i, :n + 2] = 1
        return ids, mask

    ids, mask = side(0)
    pids, pmask = side(1)
    nl = len(model.cfg.languages)
    return {"input_ids": ids, "attention_mask": mask, "pair_input_ids": pids, "pair_attention_mask": pmask,
            "lang": torch.randint(0, nl, (b,), generator=g), "pair_lang": torch.randint(0, nl, (b,), generator=g)}


def random_outputs(model, b=5, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    h = model.text.width
    return {"text_pooled": torch.randn(b, h, generator=g), "pair_pooled": torch.randn(b, h, generator=g)}


# ------------------------------------------------------------------------------ reference
def _layer_norm(x, weight, bias, eps):
    mu = sum(x.tolist()) / len(x)
    var = sum((v - mu) ** 2 for v in x.tolist()) / len(x)
    return (x - mu) / math.sqrt(var + eps) * weight + bias


def reference_logits(obj, u, lang):
    """EMS head by hand: h = g([LN(E[lang]); u]); logits = W h + b (one example)."""
    e = _layer_norm(obj.lang_embed.weight[lang], obj.lang_norm.weight, obj.lang_norm.bias, obj.lang_norm.eps)
    x = torch.cat([e, u])
    if obj.args.transform:
        lin, _, ln = obj.head
        z = lin.weight @ x + lin.bias
        z = z * (1 / (1 + torch.exp(-z)))  # swish / SiLU
        x = _layer_norm(z, ln.weight, ln.bias, ln.eps)
    elif obj.args.tie_embeddings:
        x = obj.head.weight @ x + obj.head.bias
    w = obj.output_weight()
    return w @ x + obj.bias


def reference_q(ids, mask, special):
    """Uniform over the distinct non-special ids at unpadded positions: built from python sets."""
    kept = {int(t) for t, m in zip(ids.tolist(), mask.tolist()) if m and int(t) not in special}
    return {t: 1.0 / len(kept) for t in kept}


def reference_kl(q, logits):
    vals = [float(v) for v in logits]
    mx = max(vals)
    lse = mx + math.log(sum(math.exp(v - mx) for v in vals))
    return sum(qv * (math.log(qv) - (vals[t] - lse)) for t, qv in q.items())


def reference_loss(obj, outputs, batch, symmetric=True):
    special = set(obj.special_ids)
    dirs = [("text_pooled", "pair_lang", "pair_input_ids", "pair_attention_mask")]
    if symmetric:
        dirs.append(("pair_pooled", "lang", "input_ids", "attention_mask"))
    total = 0.0
    for pooled, lang, ids, mask in dirs:
        kls = []
        for i in range(batch[ids].shape[0]):
            q = reference_q(batch[ids][i], batch[mask][i], special)
            if q:
                kls.append(reference_kl(q, reference_logits(obj, outputs[pooled][i], int(batch[lang][i]))))
        total += sum(kls) / len(kls)
    return total


@pytest.mark.parametrize("tie,transform", [(False, True), (False, False), (True, True), (True, False)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_loop_reference(tiny_model, tie, transform, symmetric):
    obj = make_objective(tiny_model, tie_embeddings=tie, transform=transform, symmetric=symmetric, lang_dim=6)
    randomize(obj)
    batch, outputs = random_batch(tiny_model), random_outputs(tiny_model)
    with torch.no_grad():
        got = obj(outputs, batch)
        want = reference_loss(obj, outputs, batch, symmetric=symmetric)
    assert float(got["xtr_loss"]) == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert 0.0 <= float(got["xtr_top10_recall"]) <= 1.0 and not got["xtr_top10_recall"].requires_grad


def test_symmetric_is_sum_of_the_two_directions(tiny_model):
    torch.manual_seed(0)
    both = make_objective(tiny_model)
    one = make_objective(tiny_model, symmetric=False)
    one.load_state_dict(both.state_dict())
    batch, outputs = random_batch(tiny_model, seed=3), random_outputs(tiny_model, seed=3)
    swapped_batch = {"input_ids": batch["pair_input_ids"], "attention_mask": batch["pair_attention_mask"],
                     "pair_input_ids": batch["input_ids"], "pair_attention_mask": batch["attention_mask"],
                     "lang": batch["pair_lang"], "pair_lang": batch["lang"]}
    swapped_out = {"text_pooled": outputs["pair_pooled"], "pair_pooled": outputs["text_pooled"]}
    with torch.no_grad():
        total = both(outputs, batch)["xtr_loss"]
        parts = one(outputs, batch)["xtr_loss"] + one(swapped_out, swapped_batch)["xtr_loss"]
    assert float(total) == pytest.approx(float(parts), rel=1e-6)


# ------------------------------------------------------------------------------ target types
def test_types_skip_special_and_padding_and_count_duplicates_once(tiny_model):
    tok = tiny_model.tokenizer
    bos, eos, pad, unk, msk = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id, tok.mask_token_id
    ids = torch.tensor([[bos, 50, 60, 50, 50, eos, pad, pad],
                        [bos, 70, unk, msk, eos, pad, pad, pad],
                        [bos, eos, pad, pad, pad, pad, pad, pad]])
    mask = (ids != pad).long()
    # a real id in a padded position must not count either
    ids[0, 6] = 99
    obj = make_objective(tiny_model)
    types = obj.types(ids, mask)
    assert types.shape == (3, obj.vocab_size)
    assert torch.nonzero(types[0]).flatten().tolist() == [50, 60]
    assert torch.nonzero(types[1]).flatten().tolist() == [70]
    assert not types[2].any()
    # q is uniform over the 2 types of row 0: duplicates do not weigh more
    q = types[0].float() / types[0].sum()
    assert q[50] == q[60] == 0.5
    # without exclusion the specials come back, padding still never does
    keep = make_objective(tiny_model, exclude_special=False).types(ids, mask)
    assert torch.nonzero(keep[0]).flatten().tolist() == sorted([bos, 50, 60, eos])
    assert not keep[:, pad].any() and not keep[0, 99]
    assert torch.equal(target_types(ids, mask, obj.vocab_size, obj.special_ids), types)


def test_loss_ignores_specials_padding_repeats_and_empty_targets(tiny_model):
    tok = tiny_model.tokenizer
    torch.manual_seed(1)
    obj = make_objective(tiny_model)
    batch, outputs = random_batch(tiny_model, seed=5), random_outputs(tiny_model, seed=5)
    with torch.no_grad():
        base = float(obj(outputs, batch)["xtr_loss"])
        # padded positions hold junk; a repeated type; a special inserted: all invisible to the loss
        b2 = {k: v.clone() for k, v in batch.items()}
        for key, mkey in (("input_ids", "attention_mask"), ("pair_input_ids", "pair_attention_mask")):
            ids, m = b2[key], b2[mkey]
            ids[m == 0] = 77
            row = 0
            n = int(m[row].sum())
            if n < ids.shape[1]:  # turn the first pad into a repeat of an existing type
                ids[row, n], m[row, n] = ids[row, 1], 1
        assert float(obj(outputs, b2)["xtr_loss"]) == pytest.approx(base, rel=1e-6)
        # a row whose target has no type (only <s></s>) drops out of the mean
        b3 = {k: v.clone() for k, v in batch.items()}
        b3["pair_input_ids"][0] = tok.pad_token_id
        b3["pair_input_ids"][0, :2] = torch.tensor([tok.bos_token_id, tok.eos_token_id])
        b3["pair_attention_mask"][0] = 0
        b3["pair_attention_mask"][0, :2] = 1
        sub = {k: v[1:] for k, v in batch.items()}
        sub_out = {k: v[1:] for k, v in outputs.items()}
        one = make_objective(tiny_model, symmetric=False)
        one.load_state_dict(obj.state_dict())
        assert float(one(outputs, b3)["xtr_loss"]) == pytest.approx(float(one(sub_out, sub)["xtr_loss"]), rel=1e-6)


# ------------------------------------------------------------------------------ KL
def test_kl_is_exact_nonnegative_and_zero_at_q():
    torch.manual_seed(0)
    v = 30
    types = torch.zeros(4, v, dtype=torch.bool)
    types[0, [1, 2, 3]] = True
    types[1, [7]] = True
    types[2, torch.arange(v)] = True
    types[3, [0, 29]] = True
    logits = torch.randn(4, v) * 3
    kl = uniform_kl(F.log_softmax(logits, -1), types)
    assert (kl >= 0).all()
    q = types.float() / types.float().sum(-1, keepdim=True)
    torch_kl = F.kl_div(F.log_softmax(logits, -1), q, reduction="none").sum(-1)  # includes the entropy of q
    assert torch.allclose(kl, torch_kl, atol=1e-5)
    # p == q: zero (logits equal on the support, -inf / very low outside)
    for off in (float("-inf"), -1e4):
        exact = torch.where(types, torch.zeros(4, v), torch.full((4, v), off))
        kl0 = uniform_kl(F.log_softmax(exact, -1), types)
        assert torch.allclose(kl0, torch.zeros(4), atol=1e-5) and torch.isfinite(kl0).all()
    # uniform p over everything: KL = log(V / n)
    flat = uniform_kl(F.log_softmax(torch.zeros(4, v), -1), types)
    assert torch.allclose(flat, torch.log(v / types.float().sum(-1)), atol=1e-5)
    # empty rows give 0, not nan
    assert float(uniform_kl(F.log_softmax(logits[:1], -1), torch.zeros(1, v, dtype=torch.bool))) == 0.0


def test_objective_loss_is_nonnegative(tiny_model):
    obj = make_objective(tiny_model)
    for seed in range(3):
        randomize(obj, seed)
        with torch.no_grad():
            assert float(obj(random_outputs(tiny_model, seed=seed), random_batch(tiny_model, seed=seed))["xtr_loss"]) >= 0


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("tie", [False, True])
def test_gradients_reach_pooled_vectors_and_language_embeddings(tiny_model, tie):
    obj = make_objective(tiny_model, tie_embeddings=tie)
    batch = random_batch(tiny_model, seed=2)
    outputs = {k: v.requires_grad_(True) for k, v in random_outputs(tiny_model, seed=2).items()}
    emb = tiny_model.text.model.get_input_embeddings().weight
    emb.grad = None
    obj(outputs, batch)["xtr_loss"].backward()
    for k in ("text_pooled", "pair_pooled"):
        assert outputs[k].grad is not None and outputs[k].grad.abs().sum(-1).gt(0).all()
    used = set(batch["lang"].tolist()) | set(batch["pair_lang"].tolist())
    g = obj.lang_embed.weight.grad
    for lang in range(g.shape[0]):
        assert bool(g[lang].abs().sum() > 0) == (lang in used)
    if tie:
        assert emb.grad is not None and emb.grad.abs().sum() > 0
        # the tied matrix stays the model's: not a parameter / state-dict entry of the objective
        assert all(p is not emb for p in obj.parameters())
        assert not any(t.data_ptr() == emb.data_ptr() for t in obj.state_dict().values())
    else:
        assert emb.grad is None


# ------------------------------------------------------------------------------ registry / config
def test_registered_and_configurable(tiny_model):
    assert OBJECTIVES.get("xtr") is XTRObjective
    comp = build_objectives([ObjectiveSpec("xtr", 1.0, {"tie_embeddings": True})], model=tiny_model)
    part = comp.parts[0]
    assert isinstance(part, XTRObjective) and part.args.tie_embeddings and part.args.symmetric
    assert part.num_languages == len(tiny_model.cfg.languages)
    assert part.lang_embed.num_embeddings == len(tiny_model.cfg.languages)
    with pytest.raises(Exception):
        build_objective("xtr", {"num_languages": 3}, model=tiny_model)  # not an option: taken from the model
    with pytest.raises(ValueError):
        build_objective("xtr", {}, model=None)
    res = comp(random_outputs(tiny_model), random_batch(tiny_model))
    assert set(res) >= {"loss", "xtr_loss", "xtr_top10_recall"}


# ------------------------------------------------------------------------------ learning
def test_tiny_model_learns_to_reconstruct_translations(tiny_model):
    torch.manual_seed(0)
    model = tiny_model
    obj = make_objective(model)
    src, tgt = zip(*PAIRS)
    a, b = model.tokenize(list(src)), model.tokenize(list(tgt))
    n = len(PAIRS)
    batch = {"input_ids": a["input_ids"], "attention_mask": a["attention_mask"],
             "pair_input_ids": b["input_ids"], "pair_attention_mask": b["attention_mask"],
             "lang": torch.full((n,), model.lang_to_id["en"]), "pair_lang": torch.full((n,), model.lang_to_id["de"])}
    params = list(model.text.parameters()) + list(obj.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    losses, recalls = [], []
    for _ in range(60):
        res = obj(model(batch), batch)
        opt.zero_grad()
        res["xtr_loss"].backward()
        opt.step()
        losses.append(float(res["xtr_loss"].detach()))
        recalls.append(float(res["xtr_top10_recall"]))
    with torch.no_grad():
        final = obj(model(batch), batch)
    assert float(final["xtr_loss"]) < 0.5 * losses[0], (losses[0], float(final["xtr_loss"]))
    assert float(final["xtr_top10_recall"]) > recalls[0]
