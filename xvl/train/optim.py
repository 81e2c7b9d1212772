"""AdamW with the usual no-decay groups, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

# 1-d tensors (biases, norm weights), the temperature and embedding tables are not decayed
NO_DECAY_NAME_PARTS = ("bias", "norm", "logit_scale", "embeddings", "pos_embed", "cls_token", "reg_token")


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(part in name.lower() for part in NO_DECAY_NAME_PARTS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``base_lr`` to ``base_lr*min_ratio``.

    ``step`` counts optimizer steps from 0; a pure function of the step, so resuming needs no
    scheduler state.
    """
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
