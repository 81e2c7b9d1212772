"""Heads on the fusion encoder's states: matching (ITM/TTM), masked-token prediction, answers (VQA)."""
from __future__ import annotations

import torch
from torch import nn


class MatchingHead(nn.Module):
    """[CLS] fused state -> 2 logits (0: not matched, 1: matched), as ALBEF / CCLM's ``itm_head``."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, 2)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.proj(cls_state)


class MaskedTokenHead(nn.Module):
    """Fused token states -> vocabulary logits (BERT LM head: dense + GELU + LN, then a decoder tied to
    the text tower's input embeddings plus a bias). The embedding matrix is held as a plain reference
    (not a submodule), so it stays the text model's own parameter: one copy in the state dict and in
    the optimizer."""

    def __init__(self, width: int, embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, embeddings.weight.shape[1]), nn.GELU(),
                                       nn.LayerNorm(embeddings.weight.shape[1], eps=1e-12))
        self._embeddings = [embeddings]
        self.bias = nn.Parameter(torch.zeros(embeddings.weight.shape[0]))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.transform(states) @ self._embeddings[0].weight.t() + self.bias


class AnswerHead(nn.Module):
    """[CLS] fused state -> answer-class logits (VQA as classification over an answer vocabulary;
    ALBEF/UNITER-style 2-layer MLP)."""

    def __init__(self, width: int, num_answers: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12),
                                 nn.Linear(hidden, num_answers))

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.mlp(cls_state)
