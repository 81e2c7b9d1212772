"""Text tower: a transformers encoder (from config or a local pretrained dir) plus a pooler."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from xvl.config import TextConfig
from xvl.registry import POOLERS


@POOLERS.register("mean")
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``attention_mask`` is 1 (padding excluded)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@POOLERS.register("cls")
def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's state (<s>/[CLS])."""
    return hidden[:, 0]


def build_text_config(cfg: TextConfig, tokenizer) -> PretrainedConfig:
    """The HF config for a from-scratch encoder, sized to the tokenizer and max length."""
    overrides = dict(cfg.config)
    overrides.setdefault("vocab_size", len(tokenizer))
    overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
    for name in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            overrides.setdefault(name, tid)
    # RoBERTa-family position ids start after the padding index, hence the +2 head-room
    overrides.setdefault("max_position_embeddings", cfg.max_length + 2)
    return AutoConfig.for_model(cfg.model_type, **overrides)


class TextTower(nn.Module):
    """``forward(input_ids, attention_mask, ...) -> {"text_tokens", "text_pooled", "text_hidden_states"}``.

    ``text_tokens`` [B,L,H] is the last layer; ``text_hidden_states`` the tuple of every layer's
    states (index 0: embeddings, k: layer k) for objectives that read an inner layer (XLCo).
    ``lang`` [B] (language ids) is passed on to language-specific modules when the tower has them.
    """

    def __init__(self, cfg: TextConfig, tokenizer, hf_config: Optional[PretrainedConfig] = None,
                 load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        if hf_config is None and cfg.pretrained and load_weights:
            self.model = AutoModel.from_pretrained(cfg.pretrained, trust_remote_code=False)
        else:
            self.model = AutoModel.from_config(hf_config or build_text_config(cfg, tokenizer))
        if len(tokenizer) > self.model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the text model's vocabulary is "
                f"{self.model.config.vocab_size}: they do not belong together")
        # the HF pooler (dense+tanh on [CLS]) is unused: drop it so DDP sees no unused parameters
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.pool = POOLERS.get(cfg.pooling)
        self.width = self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lang: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> Dict[str, object]:
        extra = {k: v for k, v in (("position_ids", position_ids), ("token_type_ids", token_type_ids)) if v is not None}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        hidden = out.last_hidden_state
        return {"text_tokens": hidden, "text_pooled": self.pool(hidden, attention_mask),
                "text_hidden_states": out.hidden_states}
