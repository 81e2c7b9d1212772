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
from typing import Dict, Literal, Optional

import torch
import torch.nn.functional as F

from xvl.distributed import all_gather_with_grad, get_rank, get_world_size
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                     local_negatives: bool = False, row_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Symmetric InfoNCE between row-aligned ``a`` [B,D] and ``b`` [B,D] (rows i are positives).

    Returns ``loss`` (mean of a->b and b->a cross-entropy) and ``acc`` (a->b top-1 accuracy).
    ``row_mask`` [B] bool: only these rows count as queries (both directions); every row stays a
    negative. Used for text-text terms on caption pairs where some rows have no real translation.
    """
    if local_negatives or get_world_size() == 1:
        all_a, all_b, offset = a, b, 0
    else:
        all_a, all_b = all_gather_with_grad(a), all_gather_with_grad(b)
        offset = get_rank() * a.shape[0]
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits_ab = scale * a @ all_b.t()
    logits_ba = scale * b @ all_a.t()
    if row_mask is None:
        loss = 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
        acc = (logits_ab.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc}
    w = row_mask.to(logits_ab.dtype)
    per_row = 0.5 * (F.cross_entropy(logits_ab, labels, reduction="none")
                     + F.cross_entropy(logits_ba, labels, reduction="none"))
    n = w.sum()
    # no valid row: a zero that keeps the graph (DDP) and contributes nothing
    loss = (per_row * w).sum() / n.clamp_min(1.0)
    acc = (((logits_ab.argmax(-1) == labels).to(w.dtype) * w).sum() / n.clamp_min(1.0)).detach()
    return {"loss": loss, "acc": acc}


#: the name an instance logs under, by its views (several contrastive terms can run in one recipe)
VIEW_NAMES = {("image_embeds", "text_embeds"): "itc", ("text_embeds", "pair_embeds"): "ttc",
              ("image_embeds", "pair_embeds"): "itc_pair"}
#: pair_rows -> the pair_kind values whose rows count (see xvl.data.captions: 2 strict, 1 weak, 0 none)
PAIR_ROWS = {"all": None, "paired": (1, 2), "strict": (2,)}


@OBJECTIVES.register("itc")
class ContrastiveObjective(Objective):
    """ITC (image-text) by default; set ``view_a``/``view_b`` for TTC (text-pair) contrast.

    CCLM's cross-view contrast is this one loss in one embedding space applied to several view
    pairs: image-caption, image-second caption and caption-translation (``ttc``). ``pair_rows``
    picks which rows of a caption-pair batch count as positives (``strict``: translations only,
    CCLM's TTC; ``paired``: any second caption; ``all``); batches without ``pair_kind`` (parallel
    text) use every row.
    """

    name = "itc"

    @dataclass
    class Args:
        view_a: str = "image_embeds"
        view_b: str = "text_embeds"
        local_negatives: bool = False
        # fixed temperature instead of the model's learnable one (EMS: cosine with tau 0.1)
        temperature: Optional[float] = None
        pair_rows: Literal["all", "paired", "strict"] = "all"

    def __init__(self, args, model=None):
        super().__init__(args, model)
        self.name = VIEW_NAMES.get((args.view_a, args.view_b), f"{args.view_a}-{args.view_b}")

    @property
    def needs_pairs(self) -> bool:
        return "pair_embeds" in (self.args.view_a, self.args.view_b)

    def applies(self, outputs, batch):
        return self.args.view_a in outputs and self.args.view_b in outputs

    def forward(self, outputs, batch):
        a, b = outputs[self.args.view_a], outputs[self.args.view_b]
        if self.args.temperature is not None:
            scale = torch.tensor(1.0 / self.args.temperature, device=a.device)
        else:
            scale = outputs["logit_scale"]
        mask = None
        kinds = PAIR_ROWS[self.args.pair_rows]
        if kinds is not None and "pair_kind" in batch:
            pk = batch["pair_kind"].to(a.device)
            mask = torch.zeros_like(pk, dtype=torch.bool)
            for k in kinds:
                mask |= pk == k
        r = contrastive_loss(a, b, scale, local_negatives=self.args.local_negatives, row_mask=mask)
        return {f"{self.name}_loss": r["loss"], f"{self.name}_acc": r["acc"], "logit_scale": scale.detach()}


@OBJECTIVES.register("ttc")
class TextContrastiveObjective(ContrastiveObjective):
    """TTC: the same loss on a caption and its translation (``text_embeds`` vs ``pair_embeds``)."""

    @dataclass
    class Args(ContrastiveObjective.Args):
        view_a: str = "text_embeds"
        view_b: str = "pair_embeds"
        pair_rows: Literal["all", "paired", "strict"] = "strict"
