"""XLCo (InfoXLM cross-lingual contrast): MoCo queue, momentum encoder, checkpoints, learning."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from xvl.config import ObjectiveSpec
from xvl.configlib import ConfigError
from xvl.objectives.base import CompositeObjective, build_objectives
from xvl.objectives.xlco import XLCoObjective
from xvl.registry import OBJECTIVES

EN_DE = [(f"{n} {c} {s}", f"{n2} {c2} {s2}")
         for n, n2 in (("one", "eins"), ("two", "zwei"), ("three", "drei"))
         for c, c2 in (("red", "rot"), ("blue", "blau"), ("green", "grün"))
         for s, s2 in (("circle", "Kreis"), ("square", "Quadrat"))]
# 306 distinct two-phrase pairs: far more than the learning test's queue (few duplicate keys)
EN_DE_LONG = [(f"{a} {c}", f"{b} {d}") for a, b in EN_DE for c, d in EN_DE if a != c]


def make_model(tokenizer, seed=0):
    from tests.conftest import tiny_model_config
    from xvl.models.model import XVLModel

    torch.manual_seed(seed)
    return XVLModel(tiny_model_config(), tokenizer)


def make_xlco(model, **kw):
    return XLCoObjective(XLCoObjective.Args(**kw), model=model)


def make_batch(model, pairs):
    s = model.tokenize([a for a, _ in pairs])
    t = model.tokenize([b for _, b in pairs])
    return {"input_ids": s["input_ids"], "attention_mask": s["attention_mask"],
            "pair_input_ids": t["input_ids"], "pair_attention_mask": t["attention_mask"]}


def fill_queue(obj, seed=0):
    g = torch.Generator().manual_seed(seed)
    obj.queue.copy_(F.normalize(torch.randn(obj.queue.shape, generator=g), dim=-1))
    obj.queue_filled.fill_(obj.args.queue_size)


def rep(hidden_states, mask, layer, pooling):
    h = hidden_states[layer].double()
    if pooling == "cls":
        v = h[:, 0]
    else:
        m = mask.unsqueeze(-1).double()
        v = (h * m).sum(1) / m.sum(1)
    return v / v.norm(dim=-1, keepdim=True)


def reference_loss(q, k, queue, temperature):
    """Plain loops: -log softmax of [q.k+, q.queue_j]/T at index 0, averaged over rows."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k[i]) / temperature] + [float(q[i] @ queue[j]) / temperature
                                                         for j in range(queue.shape[0])]
        mx = max(logits)
        total += mx + math.log(sum(math.exp(v - mx) for v in logits)) - logits[0]
    return total / q.shape[0]


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("symmetric,layer,pooling", [(True, -1, "cls"), (False, -1, "cls"),
                                                      (True, 0, "mean"), (False, 1, "mean")])
def test_loss_matches_plain_reference(tiny_tokenizer, symmetric, layer, pooling):
    model = make_model(tiny_tokenizer).eval()
    obj = make_xlco(model, queue_size=8, temperature=0.25, symmetric=symmetric, layer=layer, pooling=pooling)
    fill_queue(obj)
    obj.eval()  # no enqueue: the queue stays as filled by hand
    batch = make_batch(model, EN_DE[:5])
    with torch.no_grad():
        out = model(batch)
        res = obj(out, batch)
        # the momentum copy equals the online tower right after construction: keys from the model
        s_hs = model.text(batch["input_ids"], batch["attention_mask"])["text_hidden_states"]
        t_hs = model.text(batch["pair_input_ids"], batch["pair_attention_mask"])["text_hidden_states"]
    q_s = rep(out["text_hidden_states"], batch["attention_mask"], layer, pooling)
    k_t = rep(t_hs, batch["pair_attention_mask"], layer, pooling)
    ref = reference_loss(q_s, k_t, obj.queue[0].double(), 0.25)
    if symmetric:
        q_t = rep(out["pair_hidden_states"], batch["pair_attention_mask"], layer, pooling)
        k_s = rep(s_hs, batch["attention_mask"], layer, pooling)
        ref = 0.5 * (ref + reference_loss(q_t, k_s, obj.queue[1].double(), 0.25))
    assert obj.queue.shape == (2 if symmetric else 1, 8, model.text.width)
    assert float(res["xlco_active"]) == 1.0
    assert float(res["xlco_loss"]) == pytest.approx(ref, rel=1e-5)
    assert int(obj.queue_ptr) == 0 and int(obj.queue_filled) == 8  # eval: state untouched


# ------------------------------------------------------------------------------ queue, activity
def test_inactive_until_queue_full_then_active(tiny_tokenizer):
    model = make_model(tiny_tokenizer).train()
    obj = make_xlco(model, queue_size=8).train()
    batch = make_batch(model, EN_DE[:3])  # 3 does not divide 8: handled by wrapping
    seen = []
    for _ in range(4):
        res = obj(model(batch), batch)
        seen.append((float(res["xlco_active"]), float(res["xlco_loss"].detach()), int(obj.queue_filled)))
        if res["xlco_active"] == 0:
            assert res["xlco_loss"].grad_fn is not None and float(res["xlco_loss"].detach()) == 0.0
            assert float(res["xlco_acc"]) == 0.0
    # the loss of a forward uses the queue before that forward's keys are enqueued
    assert [s[0] for s in seen] == [0.0, 0.0, 0.0, 1.0]
    assert [s[2] for s in seen] == [3, 6, 8, 8]
    assert seen[3][1] > 0.0
    assert int(obj.queue_ptr) == 12 % 8


def test_queue_is_fifo_for_dividing_and_non_dividing_batches(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    obj = make_xlco(model, queue_size=8, symmetric=True)
    h = model.text.width
    pushed = []
    g = torch.Generator().manual_seed(3)
    for n in (4, 4, 4, 3, 3, 3, 5, 11, 2):  # divides 8, does not, and more than the whole queue
        keys = torch.randn(2, n, h, generator=g)
        obj.enqueue(keys)
        pushed.append(keys)
        allk = torch.cat(pushed, 1)
        total = allk.shape[1]
        assert int(obj.queue_ptr) == total % 8
        assert int(obj.queue_filled) == min(total, 8)
        if total < 8:
            assert torch.equal(obj.queue[:, :total], allk)
        else:
            # oldest-first view: rolling by -ptr gives exactly the newest 8 keys in order
            assert torch.equal(torch.roll(obj.queue, -int(obj.queue_ptr), dims=1), allk[:, -8:])
    with pytest.raises(ValueError, match="keys must be"):
        obj.enqueue(torch.randn(1, 2, h))


def test_bad_args_fail_at_construction(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    with pytest.raises(ValueError, match="queue_size"):
        make_xlco(model, queue_size=0)
    with pytest.raises(ValueError, match="layer"):
        make_xlco(model, layer=5)  # the tiny tower has 1 layer
    with pytest.raises(ValueError, match="temperature"):
        make_xlco(model, temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        make_xlco(model, momentum=1.5)
    with pytest.raises(ConfigError):
        build_objectives([ObjectiveSpec("xlco", 1.0, {"queue_sise": 16})])
    # registered, and buildable without a model for config validation; forward then says why not
    assert OBJECTIVES.get("xlco") is XLCoObjective
    bare = build_objectives([ObjectiveSpec("xlco", 1.0, {"pooling": "mean"})]).parts[0]
    assert bare.state_dict() == {}
    with pytest.raises(RuntimeError, match="without a model"):
        bare({}, {})


# ------------------------------------------------------------------------ momentum + gradients
def test_after_step_is_exact_ema_and_momentum_copy_gets_no_gradient(tiny_tokenizer):
    model = make_model(tiny_tokenizer).train()
    obj = make_xlco(model, queue_size=4, momentum=0.9).train()
    assert all(not p.requires_grad for p in obj.momentum_text.parameters())
    assert not obj.momentum_text.training  # key encoder in eval mode (dropout off) by default
    batch = make_batch(model, EN_DE[:4])
    fill_queue(obj)
    out = model(batch)
    res = obj(out, batch)
    assert float(res["xlco_active"]) == 1.0
    res["xlco_loss"].backward()
    assert all(p.grad is None for p in obj.momentum_text.parameters())
    grads = [p.grad for p in model.text.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert model.text.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0

    with torch.no_grad():  # online tower moves (as after an optimizer step)
        for p in model.text.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in obj.momentum_text.parameters()]
    obj.after_step(model)
    for pk, pk0, pq in zip(obj.momentum_text.parameters(), before, model.text.parameters()):
        assert torch.equal(pk, pk0 * 0.9 + pq * (1.0 - 0.9))
        assert not torch.equal(pk, pk0)
    # composite forwards after_step; momentum 1 freezes the copy, 0 copies the online tower
    for m in (1.0, 0.0):
        obj.args.momentum = m
        before = [p.clone() for p in obj.momentum_text.parameters()]
        CompositeObjective([obj], [1.0]).after_step(model)
        for pk, pk0, pq in zip(obj.momentum_text.parameters(), before, model.text.parameters()):
            assert torch.equal(pk, pk0 if m == 1.0 else pq)


# -------------------------------------------------------------------------------- checkpoint
def _train_steps(module, optimizer, batches, seed0):
    losses = []
    for i, batch in enumerate(batches):
        torch.manual_seed(seed0 + i)
        out = module(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.objectives.after_step(module.model)
        losses.append(float(out["xlco_loss"].detach()))
    return losses


def test_checkpoint_round_trip_restores_queue_pointer_and_momentum_encoder(tiny_tokenizer, tmp_path):
    from xvl.train.checkpoint import load_checkpoint, save_checkpoint
    from xvl.train.loop import TrainingModule
    from xvl.train.optim import build_optimizer

    def build(seed):
        model = make_model(tiny_tokenizer, seed=seed)
        module = TrainingModule(model, CompositeObjective([make_xlco(model, queue_size=6, momentum=0.9)], [1.0]))
        module.train()
        return module, build_optimizer(module, 1e-3, 0.01, (0.9, 0.98), 1e-6)

    module, opt = build(0)
    # the optimizer never sees the momentum copy
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in opt_ids for p in module.objectives.parts[0].momentum_text.parameters())
    batches = [make_batch(module.model, EN_DE[i:i + 4]) for i in range(0, 16, 4)]
    _train_steps(module, opt, batches[:3], 100)  # 12 keys into a 6-queue: full, pointer wrapped
    xl = module.objectives.parts[0]
    assert xl.is_active and int(xl.queue_ptr) == 0

    sd = module.state_dict()
    prefix = "objectives.parts.0."
    assert {prefix + "queue", prefix + "queue_ptr", prefix + "queue_filled"} <= set(sd)
    assert any(k.startswith(prefix + "momentum_text.") for k in sd)
    path = save_checkpoint(str(tmp_path), 3, sd, opt, {"step": 3, "samples_seen": 12})

    fresh, opt2 = build(1)  # different init: everything must come from the checkpoint
    state, tstate = load_checkpoint(path, opt2)
    fresh.load_state_dict(state, strict=True)
    xl2 = fresh.objectives.parts[0]
    assert tstate["step"] == 3
    assert torch.equal(xl2.queue, xl.queue) and xl2.queue.abs().sum() > 0
    assert int(xl2.queue_ptr) == int(xl.queue_ptr) and int(xl2.queue_filled) == int(xl.queue_filled)
    for (n1, p1), (n2, p2) in zip(xl.momentum_text.named_parameters(), xl2.momentum_text.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert not torch.equal(next(xl.momentum_text.parameters()), next(module.model.text.parameters()))
    assert all(not p.requires_grad for p in xl2.momentum_text.parameters())
    # the next steps (loss, optimizer update, EMA, enqueue) are identical
    assert _train_steps(module, opt, batches[3:], 7) == _train_steps(fresh, opt2, batches[3:], 7)
    assert torch.equal(xl.queue, xl2.queue)
    for p1, p2 in zip(xl.momentum_text.parameters(), xl2.momentum_text.parameters()):
        assert torch.equal(p1, p2)


# ---------------------------------------------------------------------------------- learning
def test_loss_decreases_on_tiny_en_de_pairs(tiny_tokenizer):
    from xvl.train.loop import TrainingModule
    from xvl.train.optim import build_optimizer

    model = make_model(tiny_tokenizer)
    # mean pooling: a 1-layer, 32-wide tower's <s> state barely depends on the sentence
    xl = make_xlco(model, queue_size=16, momentum=0.99, temperature=0.1, pooling="mean")
    module = TrainingModule(model, CompositeObjective([xl], [1.0])).train()
    opt = build_optimizer(module, 1e-2, 0.0, (0.9, 0.98), 1e-6)
    rng = random.Random(0)
    batches = [make_batch(model, rng.sample(EN_DE_LONG, 8)) for _ in range(62)]
    losses, active = [], []
    for i, batch in enumerate(batches):
        torch.manual_seed(i)
        out = module(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.objectives.after_step(module.model)
        active.append(float(out["xlco_active"]))
        losses.append(float(out["xlco_loss"]))
    assert active[:2] == [0.0, 0.0] and all(a == 1.0 for a in active[2:])
    first, last = sum(losses[2:12]) / 10, sum(losses[-10:]) / 10
    assert first > 0.8 * math.log(17)  # starts near chance (1 positive + 16 queued negatives)
    assert last < 0.6 * first, (first, last)
