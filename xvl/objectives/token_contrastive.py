"""Token-to-token contrastive alignment (VECO 2.0): aligned tokens of a translation pair attract.

For a sentence ``s`` (``input_ids`` -> ``text_tokens``) and its translation ``t``
(``pair_input_ids`` -> ``pair_tokens``) and each aligned token pair ``(i, j)``::

    loss_st(i, j) = -log softmax_j'( cos(h_i^s, h_j'^t) / tau )[j]   j' over valid tokens of t
    loss_ts(i, j) = -log softmax_i'( cos(h_i'^s, h_j^t) / tau )[i]   i' over valid tokens of s
    loss = 0.5 * (mean over pairs of loss_st + mean over pairs of loss_ts)

Negatives are only the other tokens of the *same* sentence pair ("valid" = attention mask 1 and
not a special token: ``<s>``, ``</s>``, ``<pad>``, ``<mask>``), so an example's terms do not
depend on the rest of the batch. A token aligned to several tokens gives one term per pair (the
other positives then count as negatives of that term). Rows without aligned pairs contribute
nothing; a batch without any gives a zero loss that still has a ``grad_fn``.

Alignment (``Args.alignment``):

* ``"mutual_argmax"`` (default): mutual nearest neighbours of the (detached, un-projected) token
  states, :func:`xvl.align.mutual_argmax_alignment`, optionally with ``Args.threshold``;
* ``"batch"``: ``batch["alignment"]``, a bool tensor ``[B, L, L2]`` (or a list of ``(i, j)`` pairs
  per example) built by the collator, e.g. with :func:`xvl.align.lexicon_alignment`.

``Args.projection_dim``: a shared linear head ``hidden -> projection_dim`` applied to both sides
before the cosine (None: the token states themselves).

Outputs: ``token_contrastive_loss``, ``token_contrastive_acc`` (top-1 of the positive among the
candidates, averaged over both directions and all pairs) and ``token_contrastive_pairs`` (number
of aligned pairs used).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xvl.align import alignment_to_tensor, mutual_argmax_alignment, special_token_ids, special_tokens_mask
from xvl.data.tokenizer import SPECIAL_TOKEN_IDS
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES

# XLM-R convention of our tokenizers, used when no model (tokenizer) is given: all but <unk>
_DEFAULT_SPECIAL_IDS = frozenset(i for t, i in SPECIAL_TOKEN_IDS.items() if t != "<unk>")


def token_contrastive_loss(a: torch.Tensor, b: torch.Tensor, valid_a: torch.Tensor, valid_b: torch.Tensor,
                           align: torch.Tensor, temperature: float):
    """Symmetric token InfoNCE; ``a`` [B,L,D], ``b`` [B,L2,D] (unnormalized), masks bool.

    Returns ``(loss, acc, n_pairs)``; with no pairs ``loss`` is ``0 * (a.sum() + b.sum())``.
    """
    align = align.bool() & valid_a[:, :, None] & valid_b[:, None, :]
    idx = align.nonzero(as_tuple=True)
    n = idx[0].numel()
    if n == 0:
        zero = 0.0 * (a.sum() + b.sum())
        return zero, zero.detach(), n
    with torch.autocast(device_type=a.device.type, enabled=False):  # cos / tau in float32
        a = F.normalize(a.float(), dim=-1)
        b = F.normalize(b.float(), dim=-1)
        sim = (a @ b.transpose(1, 2)) / temperature  # [B, L, L2]
    neg = torch.finfo(sim.dtype).min
    s_to_t = sim.masked_fill(~valid_b[:, None, :], neg)  # row i: candidates j' of t
    t_to_s = sim.masked_fill(~valid_a[:, :, None], neg)  # column j: candidates i' of s
    bi, i, j = idx
    pos = sim[bi, i, j]
    loss_st = torch.logsumexp(s_to_t, dim=2)[bi, i] - pos
    loss_ts = torch.logsumexp(t_to_s, dim=1)[bi, j] - pos
    loss = 0.5 * (loss_st.mean() + loss_ts.mean())
    with torch.no_grad():
        acc_st = (s_to_t.argmax(dim=2)[bi, i] == j).float().mean()
        acc_ts = (t_to_s.argmax(dim=1)[bi, j] == i).float().mean()
        acc = 0.5 * (acc_st + acc_ts)
    return loss, acc, n


@OBJECTIVES.register("token_contrastive")
class TokenContrastiveObjective(Objective):
    """VECO 2.0 token-to-token contrast between ``text_tokens`` and ``pair_tokens``."""

    name = "token_contrastive"

    @dataclass
    class Args:
        temperature: float = 0.1
        alignment: Literal["mutual_argmax", "batch"] = "mutual_argmax"
        # mutual_argmax only: also require cosine(i, j) >= threshold
        threshold: Optional[float] = None
        projection_dim: Optional[int] = None
        view_a: str = "text_tokens"
        view_b: str = "pair_tokens"
        alignment_key: str = "alignment"

    def __init__(self, args: "TokenContrastiveObjective.Args", model=None):
        super().__init__(args, model)
        if args.temperature <= 0:
            raise ValueError(f"token_contrastive: temperature must be > 0, got {args.temperature}")
        if args.alignment not in ("mutual_argmax", "batch"):
            raise ValueError(f"token_contrastive: alignment must be 'mutual_argmax' or 'batch', "
                             f"got {args.alignment!r}")
        tok = getattr(model, "tokenizer", None) if model is not None else None
        self.special_ids = sorted(special_token_ids(tok)) if tok is not None else sorted(_DEFAULT_SPECIAL_IDS)
        self.proj: Optional[nn.Module] = None
        if args.projection_dim is not None:
            if args.projection_dim <= 0:
                raise ValueError(f"token_contrastive: projection_dim must be > 0, got {args.projection_dim}")
            width = getattr(getattr(model, "text", None), "width", None)
            # without a model (config validation) the width is unknown: a lazy layer
            self.proj = (nn.Linear(width, args.projection_dim) if width is not None
                         else nn.LazyLinear(args.projection_dim))

    def _valid(self, ids_key: str, mask_key: str, batch, states: torch.Tensor) -> torch.Tensor:
        mask = batch.get(mask_key)
        valid = (torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
                 if mask is None else mask.bool())
        ids = batch.get(ids_key)
        if ids is not None:
            valid = valid & ~special_tokens_mask(ids, self.special_ids)
        return valid

    def forward(self, outputs, batch):
        ha, hb = outputs[self.args.view_a], outputs[self.args.view_b]
        va = self._valid("input_ids", "attention_mask", batch, ha)
        vb = self._valid("pair_input_ids", "pair_attention_mask", batch, hb)
        if self.args.alignment == "batch":
            if self.args.alignment_key not in batch:
                raise KeyError(f"token_contrastive: alignment='batch' needs batch['{self.args.alignment_key}'] "
                               f"(bool [B, L, L2] from the collator)")
            align = batch[self.args.alignment_key]
            if not torch.is_tensor(align):
                align = alignment_to_tensor(align, ha.shape[1], hb.shape[1], device=ha.device)
            expected = (ha.shape[0], ha.shape[1], hb.shape[1])
            if tuple(align.shape) != expected:
                raise ValueError(f"token_contrastive: batch['{self.args.alignment_key}'] has shape "
                                 f"{tuple(align.shape)}, expected {expected}")
            align = align.to(ha.device).bool()
        else:
            align = mutual_argmax_alignment(ha, hb, va, vb, threshold=self.args.threshold)
        za, zb = (self.proj(ha), self.proj(hb)) if self.proj is not None else (ha, hb)
        loss, acc, n = token_contrastive_loss(za, zb, va, vb, align, self.args.temperature)
        return {f"{self.name}_loss": loss, f"{self.name}_acc": acc,
                f"{self.name}_pairs": torch.tensor(float(n), device=ha.device)}
