"""RC3 regularized cross-lingual contrast: soft targets, parity, pull strength, learning, momentum."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from xvl.config import ObjectiveSpec
from xvl.configlib import ConfigError
from xvl.objectives.base import CompositeObjective, build_objectives
from xvl.objectives.contrastive import contrastive_loss
from xvl.objectives.rc3 import RC3Objective, soft_targets
from xvl.registry import OBJECTIVES

CAPTIONS = ["one red circle", "two blue square", "three green Kreis", "eins rot Quadrat",
            "zwei blau cercle", "drei grün carré"]
PAIRS = ["eins rot Kreis", "deux bleu carré", "trois vert cercle", "one red square",
         "zwei blau cercle", "three green square"]


def make_model(tokenizer, seed=0):
    from tests.conftest import tiny_model_config
    from xvl.models.model import XVLModel

    torch.manual_seed(seed)
    return XVLModel(tiny_model_config(), tokenizer)


def make_rc3(model=None, **kw):
    return RC3Objective(RC3Objective.Args(**kw), model=model)


def make_batch(model, kinds, n=None, image=True):
    n = len(kinds) if n is None else n
    s, t = model.tokenize(CAPTIONS[:n]), model.tokenize(PAIRS[:n])
    batch = {"input_ids": s["input_ids"], "attention_mask": s["attention_mask"],
             "pair_input_ids": t["input_ids"], "pair_attention_mask": t["attention_mask"],
             "pair_kind": torch.tensor(kinds, dtype=torch.long)}
    if image:
        batch["image"] = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return batch


def reference_tt(t, p, scale, kinds, alpha, tau, rel_t=None, rel_p=None):
    """Plain loops: symmetric soft cross-entropy over the rows/columns with kind != 0; the targets
    come from constant (detached) relevance vectors."""
    rel_t = t.detach() if rel_t is None else rel_t
    rel_p = p.detach() if rel_p is None else rel_p
    valid = [i for i, k in enumerate(kinds) if k != 0]
    total = 0.0
    for q, keys, rq, rk in ((t, p, rel_t, rel_p), (p, t, rel_p, rel_t)):
        for i in valid:
            logits = [scale * (q[i] @ keys[j]) for j in valid]
            lse = torch.logsumexp(torch.stack(logits), 0)
            rels = [float(rq[i] @ rk[j]) / tau for j in valid]
            z = sum(math.exp(r) for r in rels)
            for jj, j in enumerate(valid):
                onehot = 1.0 if j == i else 0.0
                w = onehot if kinds[i] == 2 else (1 - alpha) * onehot + alpha * math.exp(rels[jj]) / z
                total = total - w * (logits[jj] - lse)
    return total / (2 * len(valid))


# ------------------------------------------------------------------------------- soft targets
def test_soft_targets_exact_values_on_hand_made_relevance():
    rel = torch.tensor([[0.9, 0.1, 0.5, -0.2],
                        [0.3, 0.2, 0.8, 0.0],
                        [0.4, 0.4, 0.4, 0.4],
                        [-0.1, 0.6, 0.9, 0.7]])
    kinds = torch.tensor([2, 1, 0, 1])
    alpha, tau = 0.3, 0.2
    out = soft_targets(rel, kinds, alpha, tau)
    valid = [0, 1, 3]  # column 2 belongs to a pair_kind-0 row: no candidate

    def sm(i, j):
        return math.exp(rel[i, j] / tau) / sum(math.exp(rel[i, k] / tau) for k in valid)

    expected = torch.zeros(4, 4)
    expected[0, 0] = 1.0  # strict: one-hot
    for i in (1, 3):  # weak: (1 - alpha) one-hot + alpha softmax(rel / tau) over the valid columns
        for j in valid:
            expected[i, j] = (1 - alpha) * (i == j) + alpha * sm(i, j)
    # row 2 (kind 0) stays all zero
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert out[1, 1] == pytest.approx(0.7 + 0.3 * math.exp(1.0) / (math.exp(1.5) + math.exp(1.0) + 1.0), abs=1e-6)
    torch.testing.assert_close(out.sum(1), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    # alpha 0: every valid row one-hot; alpha 1: weak rows are the pure relevance softmax
    torch.testing.assert_close(soft_targets(rel, kinds, 0.0, tau), torch.diag(torch.tensor([1.0, 1, 0, 1])))
    assert soft_targets(rel, kinds, 1.0, tau)[3, 3] == pytest.approx(sm(3, 3), abs=1e-6)


def test_soft_targets_gathered_columns_and_bad_kinds():
    # rank 1 of 2: local rows 0..1 are global columns 2..3; column 1 is another rank's kind-0 row
    rel = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.0, 0.0, 0.5, 0.5]])
    col_valid = torch.tensor([True, False, True, True])
    out = soft_targets(rel, torch.tensor([1, 2]), 0.5, 1.0, offset=2, col_valid=col_valid)
    e = [math.exp(0.1), math.exp(0.2), math.exp(0.3)]
    z = sum(e)
    torch.testing.assert_close(out, torch.tensor([[0.5 * e[0] / z, 0.0, 0.5 + 0.5 * e[1] / z, 0.5 * e[2] / z],
                                                  [0.0, 0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="pair_kind"):
        soft_targets(torch.zeros(2, 2), torch.tensor([1, 3]), 0.5, 0.1)
    with pytest.raises(ValueError, match="col_valid"):
        soft_targets(torch.zeros(2, 4), torch.tensor([1, 2]), 0.5, 0.1)


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("temperature,include_image", [(None, True), (0.1, True), (None, False)])
def test_all_strict_equals_plain_cclm_contrastive(tiny_tokenizer, temperature, include_image):
    model = make_model(tiny_tokenizer).eval()
    obj = make_rc3(model, temperature=temperature, include_image=include_image, alpha=0.9)
    batch = make_batch(model, [2] * 5, image=include_image)
    with torch.no_grad():
        out = model(batch)
        res = obj(out, batch)
    scale = out["logit_scale"] if temperature is None else torch.tensor(1 / temperature)
    ref = contrastive_loss(out["text_embeds"], out["pair_embeds"], scale)["loss"]
    if include_image:
        ref = ref + contrastive_loss(out["image_embeds"], out["text_embeds"], scale)["loss"] \
            + contrastive_loss(out["image_embeds"], out["pair_embeds"], scale)["loss"]
    assert float(res["rc3_loss"]) == pytest.approx(float(ref), rel=1e-5)
    assert float(res["rc3_n_strict"]) == 5 and float(res["rc3_n_weak"]) == 0
    assert float(res["rc3_weak_diag"]) == 1.0
    # a parallel-text batch (no pair_kind: translations) gives the same text-text term
    text_only = {k: v for k, v in batch.items() if k not in ("pair_kind", "image")}
    with torch.no_grad():
        tt = make_rc3(model, include_image=False, temperature=temperature)(model(text_only), text_only)
    assert float(tt["rc3_loss"]) == pytest.approx(float(res["rc3_tt"]), rel=1e-6)


def test_mixed_kinds_match_plain_reference_loss_and_gradient():
    g = torch.Generator().manual_seed(0)
    t_raw = torch.randn(6, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    p_raw = torch.randn(6, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    kinds = [2, 1, 0, 1, 2, 1]
    obj = make_rc3(include_image=False, alpha=0.4, relevance_temperature=0.3)
    t, p = F.normalize(t_raw, dim=-1), F.normalize(p_raw, dim=-1)
    res = obj({"text_embeds": t, "pair_embeds": p, "logit_scale": torch.tensor(5.0, dtype=torch.float64)},
              {"pair_kind": torch.tensor(kinds)})
    got_grads = torch.autograd.grad(res["rc3_loss"], (t_raw, p_raw))
    t2, p2 = F.normalize(t_raw, dim=-1), F.normalize(p_raw, dim=-1)
    ref = reference_tt(t2, p2, 5.0, kinds, 0.4, 0.3)
    ref_grads = torch.autograd.grad(ref, (t_raw, p_raw))
    assert float(res["rc3_loss"].detach()) == pytest.approx(float(ref.detach()), rel=1e-9)
    # the relevance is a constant: gradients equal the reference's, which scores with detached copies
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the pair_kind-0 row takes no gradient (it is neither a row nor a candidate column)
    assert float(got_grads[0][2].abs().sum()) == 0.0 and float(got_grads[1][2].abs().sum()) == 0.0
    assert float(res["rc3_n_strict"]) == 2 and float(res["rc3_n_weak"]) == 3
    targets = soft_targets(t.detach() @ p.detach().t(), torch.tensor(kinds), 0.4, 0.3)
    targets_ba = soft_targets(p.detach() @ t.detach().t(), torch.tensor(kinds), 0.4, 0.3)
    diag = 0.5 * (targets.diagonal() + targets_ba.diagonal())
    assert float(res["rc3_weak_diag"]) == pytest.approx(float(diag[[1, 3, 5]].mean()), rel=1e-9)
    # no valid row: zero loss that still backpropagates
    none = obj({"text_embeds": t, "pair_embeds": p, "logit_scale": torch.tensor(5.0)},
               {"pair_kind": torch.zeros(6, dtype=torch.long)})
    assert float(none["rc3_loss"].detach()) == 0.0 and none["rc3_loss"].grad_fn is not None


# ------------------------------------------------------------------------------- pull strength
def _pulls(kinds, t, p, scale=10.0):
    """-dL/d eps_i where t_i(eps) = normalize(t_i + eps_i p_i): how hard the loss pulls t_i to p_i."""
    eps = torch.zeros(t.shape[0], dtype=t.dtype, requires_grad=True)
    tt = F.normalize(t + eps[:, None] * p, dim=-1)
    obj = make_rc3(include_image=False, alpha=0.5, relevance_temperature=0.1)
    loss = obj({"text_embeds": tt, "pair_embeds": p, "logit_scale": torch.tensor(scale, dtype=t.dtype)},
               {"pair_kind": torch.tensor(kinds)})["rc3_loss"]
    return -torch.autograd.grad(loss, eps)[0]


def test_weak_pair_with_disagreeing_texts_is_pulled_less_than_a_strict_pair():
    e = torch.eye(4, dtype=torch.float64)
    t = e.clone()
    p = F.normalize(torch.stack([e[0] + 0.5 * e[3],   # agrees with caption 0 (its closest pair)
                                 e[2] + 0.3 * e[1],   # caption 1 is closer to pair 2 than to this
                                 e[1] + 0.5 * e[2],
                                 e[3] + 0.3 * e[2]]), dim=-1)
    strict = _pulls([2, 2, 2, 2], t, p, scale=2.0)
    weak = _pulls([1, 1, 2, 2], t, p, scale=2.0)
    assert (strict[:2] > 0).all() and (weak[:2] > 0).all()
    # texts that agree: relevance peaks on the own pair, the target stays ~one-hot, same pull
    assert float(weak[0]) == pytest.approx(float(strict[0]), rel=0.05)
    # texts that disagree: about half the target mass moves to pair 2, the pull drops to ~1/4
    assert weak[1] < 0.5 * strict[1]
    # the targets behind it: at the optimum the diagonal probability equals the diagonal target
    # weight, so the disagreeing weak pair is left less close than a strict pair
    tgt = soft_targets(t @ p.t(), torch.tensor([1, 1, 2, 2]), 0.5, 0.1)
    assert 0.5 < float(tgt[1, 1]) < 0.51 and float(tgt[0, 0]) > 0.999


# ---------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("relevance", ["detached", "momentum"])
def test_loss_decreases_on_a_tiny_fixed_batch(tiny_tokenizer, relevance):
    from xvl.train.loop import TrainingModule
    from xvl.train.optim import build_optimizer

    model = make_model(tiny_tokenizer)
    obj = make_rc3(model, relevance=relevance, momentum=0.9)
    module = TrainingModule(model, CompositeObjective([obj], [1.0])).train()
    opt = build_optimizer(module, 1e-2, 0.0, (0.9, 0.98), 1e-6)
    batch = make_batch(model, [2, 1, 2, 1, 0, 1])
    losses, diag = [], []
    for i in range(30):
        torch.manual_seed(i)
        out = module(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.objectives.after_step(module.model)
        losses.append(float(out["rc3_loss"]))
        diag.append(float(out["rc3_weak_diag"]))
    assert losses[0] > 0.8 * 3 * math.log(5)  # near chance: 3 terms (5 valid text rows, 6 images)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    assert all(0.5 <= d <= 1.0 for d in diag)  # alpha 0.5: at least half the weight on the diagonal


# ------------------------------------------------------------------------------ momentum copy
def test_momentum_relevance_ema_and_state_dict_round_trip(tiny_tokenizer):
    model = make_model(tiny_tokenizer).train()
    obj = make_rc3(model, relevance="momentum", momentum=0.9).train()
    assert not obj.momentum_text.training and not obj.momentum_proj.training
    assert all(not p.requires_grad for p in obj.parameters())
    batch = make_batch(model, [1, 2, 1, 1])
    # right after construction the copy scores like the model (eval mode: no dropout)
    with torch.no_grad():
        model.eval()
        ref = model.encode_text(batch["pair_input_ids"], batch["pair_attention_mask"])
        model.train()
    torch.testing.assert_close(obj.encode_relevance(batch["pair_input_ids"], batch["pair_attention_mask"]), ref)

    res = obj(model(batch), batch)
    res["rc3_loss"].backward()
    assert all(p.grad is None for p in obj.parameters())
    assert model.text_proj.weight.grad is not None and model.text_proj.weight.grad.abs().sum() > 0

    with torch.no_grad():  # the model moves (as after an optimizer step)
        for p in list(model.text.parameters()) + list(model.text_proj.parameters()):
            p.add_(torch.randn_like(p))
    online = list(model.text.parameters()) + list(model.text_proj.parameters())
    mine = list(obj.momentum_text.parameters()) + list(obj.momentum_proj.parameters())
    before = [p.clone() for p in mine]
    obj.after_step(model)
    for pk, pk0, pq in zip(mine, before, online):
        assert torch.equal(pk, pk0 * 0.9 + pq * (1.0 - 0.9)) and not torch.equal(pk, pk0)
    for m in (1.0, 0.0):  # through the composite: 1 freezes the copy, 0 copies the model
        obj.args.momentum = m
        before = [p.clone() for p in mine]
        CompositeObjective([obj], [1.0]).after_step(model)
        for pk, pk0, pq in zip(mine, before, online):
            assert torch.equal(pk, pk0 if m == 1.0 else pq)
    obj.args.momentum = 0.9
    with torch.no_grad():
        for p in model.text_proj.parameters():
            p.add_(1.0)
    obj.after_step(model)  # copy != model now

    sd = obj.state_dict()
    assert any(k.startswith("momentum_text.") for k in sd) and "momentum_proj.weight" in sd
    fresh_model = make_model(tiny_tokenizer, seed=1)
    fresh = make_rc3(fresh_model, relevance="momentum", momentum=0.9)
    assert not torch.equal(fresh.momentum_proj.weight, obj.momentum_proj.weight)
    fresh.load_state_dict(sd, strict=True)
    for (n1, p1), (n2, p2) in zip(obj.state_dict().items(), fresh.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert not torch.equal(obj.momentum_proj.weight, model.text_proj.weight)
    fresh.eval()
    torch.testing.assert_close(fresh.encode_relevance(batch["input_ids"], batch["attention_mask"]),
                               obj.encode_relevance(batch["input_ids"], batch["attention_mask"]))
    # the optimizer never sees the copy; the detached variant has no state at all
    from xvl.train.loop import TrainingModule
    from xvl.train.optim import build_optimizer
    opt = build_optimizer(TrainingModule(model, CompositeObjective([obj], [1.0])), 1e-3, 0.01, (0.9, 0.98), 1e-6)
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in opt_ids for p in obj.parameters())
    assert make_rc3(model).state_dict() == {}


# ------------------------------------------------------------------------------ config, wiring
def test_args_registration_and_requirements(tiny_tokenizer):
    for kw, match in [({"relevance": "ema"}, "relevance"), ({"momentum": 1.5}, "momentum"),
                      ({"temperature": 0.0}, "temperature"), ({"relevance_temperature": -1.0}, "relevance_temperature"),
                      ({"alpha": 1.2}, "alpha")]:
        with pytest.raises(ValueError, match=match):
            make_rc3(**kw)
    with pytest.raises(ConfigError):
        build_objectives([ObjectiveSpec("rc3", 1.0, {"alpah": 0.5})])
    assert OBJECTIVES.get("rc3") is RC3Objective and RC3Objective.needs_pairs
    # parallel-text batches (no image) run the text-text term; image terms join where images are
    assert make_rc3().requires == ("pair_input_ids",) == make_rc3(include_image=False).requires
    # momentum relevance needs the model: built without one, forward says why
    bare = build_objectives([ObjectiveSpec("rc3", 1.0, {"relevance": "momentum"})]).parts[0]
    model = make_model(tiny_tokenizer).eval()
    batch = make_batch(model, [1, 2])
    with pytest.raises(RuntimeError, match="without a model"):
        bare(model(batch), batch)
    # text-only batches (mixed runs) get the text-text term
    text_only = {k: v for k, v in batch.items() if k != "image"}
    assert bare.applies({}, text_only) and make_rc3(include_image=False).applies({}, text_only)


# ------------------------------------------------------------------------------- distributed
B_LOCAL = 3
KINDS = [2, 1, 0, 0, 0, 1]  # rank 0 holds 2 valid rows, rank 1 one: uneven on purpose


def _dist_problem():
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(2 * B_LOCAL, 6, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    return x, y, z, w


def _dist_loss_and_grad(x, y, z, w, kinds):
    w = w.clone().requires_grad_()
    outputs = {"text_embeds": F.normalize(x @ w, dim=-1), "pair_embeds": F.normalize(y @ w, dim=-1),
               "image_embeds": F.normalize(z @ w, dim=-1), "logit_scale": torch.tensor(4.0, dtype=torch.float64)}
    loss = make_rc3(alpha=0.5, relevance_temperature=0.2)(outputs, {"pair_kind": torch.tensor(kinds)})["rc3_loss"]
    loss.backward()
    return loss.detach(), w.grad


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y, z, w = _dist_problem()
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        loss, grad = _dist_loss_and_grad(x[sl], y[sl], z[sl], w, KINDS[sl])
        for t in (loss, grad):  # what DDP / logging do: average over ranks
            dist.all_reduce(t)
            t /= world
        if rank == 0:
            torch.save({"loss": loss, "grad": grad}, os.path.join(out_dir, "rc3.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_gathered_loss_equals_single_process_with_uneven_valid_rows(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    got = torch.load(tmp_path / "rc3.pt", weights_only=True)
    ref_loss, ref_grad = _dist_loss_and_grad(*_dist_problem(), KINDS)
    torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got["grad"], ref_grad, rtol=1e-9, atol=1e-12)


def test_text_batches_run_the_text_term_alone(tiny_tokenizer):
    """In a mixed run a parallel-text batch (no image, no pair_kind: all strict) gets the plain
    text-text contrastive; the same batch with images adds the two image terms."""
    model = make_model(tiny_tokenizer).eval()
    batch = make_batch(model, [2, 2, 2])
    text_only = {k: v for k, v in batch.items() if k not in ("image", "pair_kind")}
    obj = make_rc3()
    out = model(text_only)
    res = obj(out, text_only)
    ref = contrastive_loss(out["text_embeds"], out["pair_embeds"], out["logit_scale"])["loss"]
    assert torch.allclose(res["rc3_loss"], ref, atol=1e-6) and "rc3_it" not in res
    res_img = obj(model(batch), batch)
    assert "rc3_it" in res_img and float(res_img["rc3_loss"]) > float(res["rc3_loss"])
