"""ITC/TTC contrastive objective, the objective registry and the weighted composite."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xvl.config import ObjectiveSpec
from xvl.configlib import ConfigError
from xvl.objectives.base import build_objectives
from xvl.objectives.contrastive import contrastive_loss


def reference_infonce(a, b, scale):
    """Plain loops: for each row i, -log softmax over j of scale*<a_i, b_j> at j=i, both ways."""
    n = a.shape[0]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [scale * float(x[i] @ y[j]) for j in range(n)]
            m = max(logits)
            lse = m + math.log(sum(math.exp(v - m) for v in logits))
            total += (lse - logits[i]) / n
    return total / 2


def test_contrastive_matches_reference():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(7, 5), dim=-1)
    b = F.normalize(torch.randn(7, 5), dim=-1)
    got = contrastive_loss(a, b, torch.tensor(12.5))["loss"]
    assert float(got) == pytest.approx(reference_infonce(a, b, 12.5), rel=1e-5)


def test_contrastive_is_asymmetric_in_views_but_symmetric_in_loss():
    torch.manual_seed(1)
    a = F.normalize(torch.randn(6, 4), dim=-1)
    b = F.normalize(torch.randn(6, 4), dim=-1)
    s = torch.tensor(10.0)
    assert float(contrastive_loss(a, b, s)["loss"]) == pytest.approx(float(contrastive_loss(b, a, s)["loss"]), rel=1e-6)
    # perfectly aligned, well separated views: loss near zero, accuracy 1
    e = torch.eye(6)
    r = contrastive_loss(e, e, torch.tensor(100.0))
    assert float(r["loss"]) < 1e-6 and float(r["acc"]) == 1.0


def test_itc_objective_uses_learnable_scale_and_gets_its_gradient():
    obj = build_objectives([ObjectiveSpec("itc", 1.0, {})])
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    torch.manual_seed(2)
    outputs = {"image_embeds": F.normalize(torch.randn(5, 8), dim=-1),
               "text_embeds": F.normalize(torch.randn(5, 8), dim=-1),
               "logit_scale": log_scale.exp()}
    res = obj(outputs, {})
    assert set(res) >= {"loss", "itc_loss", "itc_acc"}
    res["loss"].backward()
    assert log_scale.grad is not None and log_scale.grad != 0


def test_ttc_views_and_fixed_temperature():
    obj = build_objectives([ObjectiveSpec("itc", 2.0, {"view_a": "text_embeds", "view_b": "pair_embeds",
                                                       "temperature": 0.1})])
    torch.manual_seed(3)
    t, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    res = obj({"text_embeds": t, "pair_embeds": p, "logit_scale": torch.tensor(1.0)}, {})
    assert float(res["loss"]) == pytest.approx(2 * reference_infonce(t, p, 10.0), rel=1e-5)


def test_unknown_objective_and_bad_args_fail_up_front():
    with pytest.raises(ValueError, match="did you mean 'itc'"):
        build_objectives([ObjectiveSpec("itcc")])
    with pytest.raises(ConfigError, match="local_negatives"):
        build_objectives([ObjectiveSpec("itc", 1.0, {"local_negative": True})])


def test_ttc_pair_rows_count_only_strict_translations_as_queries():
    """CCLM's TTC on caption pairs: rows without a translation (pair_kind != 2) are no positives but
    stay negatives for the others; equals the reference restricted to the strict rows' terms."""
    obj = build_objectives([ObjectiveSpec("ttc", 1.0, {"temperature": 0.2})])
    torch.manual_seed(4)
    t, p = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    kind = torch.tensor([2, 1, 2, 0, 2])
    res = obj({"text_embeds": t, "pair_embeds": p, "logit_scale": torch.tensor(1.0)}, {"pair_kind": kind})
    assert "ttc_loss" in res
    expect = 0.0
    for i in (0, 2, 4):
        expect += 0.5 * (F.cross_entropy(5.0 * t[i] @ p.t(), torch.tensor(i))
                         + F.cross_entropy(5.0 * p[i] @ t.t(), torch.tensor(i))) / 3
    assert float(res["loss"]) == pytest.approx(float(expect), rel=1e-5)
    # parallel-text batches carry no pair_kind: every row counts
    res = obj({"text_embeds": t, "pair_embeds": p, "logit_scale": torch.tensor(1.0)}, {})
    assert float(res["loss"]) == pytest.approx(reference_infonce(t, p, 5.0), rel=1e-5)


def test_composite_skips_objectives_a_batch_cannot_feed_and_names_views_apart():
    obj = build_objectives([ObjectiveSpec("itc"), ObjectiveSpec("ttc"),
                            ObjectiveSpec("itc", 1.0, {"view_b": "pair_embeds"})])
    torch.manual_seed(5)
    t, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    text_batch = {"text_embeds": t, "pair_embeds": p, "logit_scale": torch.tensor(10.0)}
    res = obj(text_batch, {})
    assert "ttc_loss" in res and "itc_loss" not in res and "itc_pair_loss" not in res
    i = F.normalize(torch.randn(4, 8), dim=-1)
    res = obj({**text_batch, "image_embeds": i}, {})
    assert {"itc_loss", "ttc_loss", "itc_pair_loss"} <= set(res)
    assert float(res["loss"]) == pytest.approx(float(res["itc_loss"] + res["ttc_loss"] + res["itc_pair_loss"]), rel=1e-6)
    with pytest.raises(ValueError, match="no objective applies"):
        build_objectives([ObjectiveSpec("itc")])({"text_embeds": t, "logit_scale": torch.tensor(1.0)}, {})
