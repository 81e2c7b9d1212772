"""Trainer parts: no-decay parameter groups, the lr schedule, checkpoint writing and pruning."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

from xvl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from xvl.train.optim import build_optimizer, lr_at, param_groups


def test_no_decay_on_biases_norms_and_temperature(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.1)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in kept
    assert not any(n.endswith("bias") or "norm" in n.lower() for n in decayed)
    assert "image_proj.weight" in decayed and "text_proj.weight" in decayed
    assert any("attn.qkv.weight" in n for n in decayed)
    assert len(decayed) + len(kept) == len(names)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    mids = [lr_at(s, 1.0, 10, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(mids, mids[1:]))  # monotone decay after warmup
    assert lr_at(35, 2.0, 10, 110) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def _trained_optimizer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    opt = build_optimizer(m, 1e-2, 0.1, (0.9, 0.98), 1e-6)
    for _ in range(3):
        m(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def test_checkpoint_round_trip_restores_optimizer_exactly(tmp_path):
    m, opt = _trained_optimizer()
    path = save_checkpoint(str(tmp_path), 3, m.state_dict(), opt, {"step": 3, "samples_seen": 15})
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in os.listdir(path))
    m2 = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    opt2 = build_optimizer(m2, 1e-2, 0.1, (0.9, 0.98), 1e-6)
    state, tstate = load_checkpoint(path, opt2)
    m2.load_state_dict(state)
    assert tstate["step"] == 3
    # one more identical step on both gives identical weights (moments and step counts restored)
    x = torch.randn(5, 4)
    for model, o in ((m, opt), (m2, opt2)):
        model(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_checkpoints_are_pruned_and_latest_points_at_a_complete_one(tmp_path):
    m, opt = _trained_optimizer()
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), step, m.state_dict(), opt, {"step": step, "samples_seen": 0}, keep=2)
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint-")) == \
        ["checkpoint-00000002", "checkpoint-00000003"]
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint-00000003")
    # a kill between the rename and the pointer update: latest names a complete older checkpoint
    (tmp_path / "latest").write_text("checkpoint-00000002\n")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint-00000002")
    # a pointer to something incomplete falls back to the newest complete checkpoint
    (tmp_path / "latest").write_text("checkpoint-00000009\n")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint-00000003")
    with open(tmp_path / "checkpoint-00000003" / "trainer_state.json") as f:
        assert json.load(f)["step"] == 3
