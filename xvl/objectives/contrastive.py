"""Cross-view contrastive objective (CLIP / CCLM ITC): symmetric InfoNCE, learnable temperature.

One loss serves image-text pairs (``image_embeds`` vs ``text_embeds``) and text-text pairs
(``text_embeds`` vs ``pair_embeds``): ``view_a`` / ``view_b`` pick the two feature keys.

Across processes the *other* view is gathered with gradient and each rank scores its own B rows
against all W*B columns with labels ``arange(B) + rank*B`` (open_clip's "local loss"): memory is
B x WB instead of WB x WB, and with DDP averaging the gradient equals the single-process gradient
of the global batch. ``local_negatives=True`` keeps negatives on-rank (EMS-style).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from xvl.distributed import all_gather_with_grad, get_rank, get_world_size
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                     local_negatives: bool = False) -> Dict[str, torch.Tensor]:
    """Symmetric InfoNCE between row-aligned ``a`` [B,D] and ``b`` [B,D] (rows i are positives).

    Returns ``loss`` (mean of a->b and b->a cross-entropy) and ``acc`` (a->b top-1 accuracy).
    """
    if local_negatives or get_world_size() == 1:
        all_a, all_b, offset = a, b, 0
    else:
        all_a, all_b = all_gather_with_grad(a), all_gather_with_grad(b)
        offset = get_rank() * a.shape[0]
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits_ab = scale * a @ all_b.t()
    logits_ba = scale * b @ all_a.t()
    loss = 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
    acc = (logits_ab.argmax(-1) == labels).float().mean()
    return {"loss": loss, "acc": acc}


@OBJECTIVES.register("itc")
class ContrastiveObjective(Objective):
    """ITC (image-text) by default; set ``view_a``/``view_b`` for TTC (text-pair) contrast."""

    name = "itc"

    @dataclass
    class Args:
        view_a: str = "image_embeds"
        view_b: str = "text_embeds"
        local_negatives: bool = False
        # fixed temperature instead of the model's learnable one (EMS: cosine with tau 0.1)
        temperature: Optional[float] = None

    def applies(self, outputs, batch):
        return self.args.view_a in outputs and self.args.view_b in outputs

    def forward(self, outputs, batch):
        a, b = outputs[self.args.view_a], outputs[self.args.view_b]
        if self.args.temperature is not None:
            scale = torch.tensor(1.0 / self.args.temperature, device=a.device)
        else:
            scale = outputs["logit_scale"]
        r = contrastive_loss(a, b, scale, local_negatives=self.args.local_negatives)
        return {f"{self.name}_loss": r["loss"], f"{self.name}_acc": r["acc"], "logit_scale": scale.detach()}
