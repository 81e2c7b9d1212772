"""Fusion encoder (ALBEF / CCLM style): text tokens attend to themselves and to a context.

Each layer is post-LN BERT-shaped: self-attention over the text tokens, cross-attention from the
text tokens to the context tokens, then a feed-forward sublayer, each with a residual and a
LayerNorm. The context is the image's patch tokens (projected from the vision width to the text
width) or, for the text-text view, the paired sentence's token states (already at the text width).
A learned type vector tells the layers which kind of context they look at. The first output token
(the text's ``<s>`` / [CLS]) is the fused representation that the matching and VQA heads read.

    fused = model.fusion(text_tokens, text_mask, context_tokens, context_mask, context="image")

CCLM builds its fusion encoder from the upper half of a 12-layer text encoder; here its depth is
separate (``model.fusion.layers``), so a text tower trained alone (``configs/text-multi30k.yaml``)
can be loaded under it unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from xvl.config import FusionConfig

CONTEXTS = ("image", "text")


class FusionLayer(nn.Module):
    """Self-attention, cross-attention to the context, feed-forward (post-LN residual blocks)."""

    def __init__(self, width: int, heads: int, intermediate: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(width, eps=1e-12)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(width, intermediate), nn.GELU(), nn.Linear(intermediate, width))
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, x_pad: torch.Tensor, ctx: torch.Tensor,
                ctx_pad: Optional[torch.Tensor]) -> torch.Tensor:
        """``x_pad`` / ``ctx_pad``: True where a position is padding (ignored as a key)."""
        h, _ = self.self_attn(x, x, x, key_padding_mask=x_pad, need_weights=False)
        x = self.self_norm(x + self.dropout(h))
        h, _ = self.cross_attn(x, ctx, ctx, key_padding_mask=ctx_pad, need_weights=False)
        x = self.cross_norm(x + self.dropout(h))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class FusionEncoder(nn.Module):
    """``forward(text_tokens [B,L,H], text_mask [B,L], context [B,N,C], context_mask [B,N] | None,
    context="image"|"text") -> [B,L,H]`` fused token states (position 0: the [CLS] state).

    Args:
        cfg: ``model.fusion`` (depth, heads, FFN width, dropout).
        width: the text tower's hidden size H.
        image_width: the vision tower's token width C (projected to H).
    """

    def __init__(self, cfg: FusionConfig, width: int, image_width: int):
        super().__init__()
        if width % cfg.heads:
            raise ValueError(f"model.fusion.heads={cfg.heads} must divide the text width {width}")
        self.width = width
        self.image_proj = nn.Sequential(nn.Linear(image_width, width), nn.LayerNorm(width, eps=1e-12))
        self.context_type = nn.Embedding(len(CONTEXTS), width)
        nn.init.normal_(self.context_type.weight, std=0.02)
        inter = cfg.intermediate_size or 4 * width
        self.layers = nn.ModuleList(FusionLayer(width, cfg.heads, inter, cfg.dropout) for _ in range(cfg.layers))

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, context: torch.Tensor,
                context_mask: Optional[torch.Tensor] = None, context_type: str = "image") -> torch.Tensor:
        if context_type not in CONTEXTS:
            raise ValueError(f"context_type must be one of {CONTEXTS}, got {context_type!r}")
        if context_type == "image":
            context = self.image_proj(context)
        context = context + self.context_type.weight[CONTEXTS.index(context_type)]
        x_pad = text_mask == 0
        ctx_pad = None if context_mask is None else context_mask == 0
        x = text_tokens
        for layer in self.layers:
            x = layer(x, x_pad, context, ctx_pad)
        return x
