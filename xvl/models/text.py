"""Text tower: a transformers encoder (from config or a local pretrained dir) plus a pooler."""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from xvl.config import TextConfig
from xvl.models.adapters import LanguageAdapters, Routing
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
    ``lang`` [B] (ids into the language vocabulary ``languages``) routes each row through its
    language's X-Mod adapters when ``cfg.adapters.enabled`` (then it is required); otherwise unused.

    X-Mod adapters (:mod:`xvl.models.adapters`): ``self.adapters[i]`` is layer i's
    :class:`LanguageAdapters`, applied by a forward hook on ``self.model.encoder.layer[i].output``
    (the FFN sublayer, after its post-LayerNorm), so the HF weights keep their names and pretrained
    checkpoints load unchanged. ``forward`` computes the batch's routing once, stores it on the
    tower for the hooks and clears it afterwards: the tower is **not reentrant** (no nested or
    concurrent forwards on the same instance, e.g. threads / ``nn.DataParallel``; DDP is fine),
    calling ``self.model`` directly raises, and HF gradient checkpointing (which re-runs layers
    during backward, after the routing is cleared) is not supported with adapters.
    """

    def __init__(self, cfg: TextConfig, tokenizer, hf_config: Optional[PretrainedConfig] = None,
                 load_weights: bool = True, languages: Optional[Sequence[str]] = None):
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
        self.adapters: Optional[nn.ModuleList] = None
        self._routing: Optional[Routing] = None
        if cfg.adapters.enabled:
            self._build_adapters(languages)

    # ------------------------------------------------------------------------- X-Mod adapters
    def _ffn_outputs(self) -> List[nn.Module]:
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if layers is None or not all(isinstance(getattr(l, "output", None), nn.Module) for l in layers):
            raise ValueError(f"text.adapters need a BERT-style encoder (model.encoder.layer[i].output, e.g. "
                             f"BERT / RoBERTa / XLM-R); {type(self.model).__name__} has none")
        return [layer.output for layer in layers]

    def _build_adapters(self, languages: Optional[Sequence[str]]) -> None:
        ad = self.cfg.adapters
        vocab = list(languages) if languages is not None else ad.languages
        if vocab is None:
            raise ValueError("text.adapters.enabled needs the language vocabulary (model.languages): "
                             "pass languages= to TextTower, or set text.adapters.languages")
        with_module = list(ad.languages) if ad.languages is not None else list(vocab)
        hc = self.model.config
        outputs = self._ffn_outputs()
        self.adapters = nn.ModuleList(
            LanguageAdapters(hc.hidden_size, ad.bottleneck, with_module, vocab=vocab, activation=hc.hidden_act,
                             dropout=hc.hidden_dropout_prob, init_std=getattr(hc, "initializer_range", 0.02))
            for _ in outputs)
        for i, out in enumerate(outputs):
            # a partial of a bound method (not a closure): deepcopy / pickle of the tower re-bind it
            out.register_forward_hook(functools.partial(self._adapter_hook, i))

    def _adapter_hook(self, index: int, module: nn.Module, args, output):
        if self._routing is None:
            raise RuntimeError("language adapters ran without language ids: call TextTower.forward(..., lang=), "
                               "not its HF model directly (gradient checkpointing, which re-runs layers in "
                               "backward, is not supported with adapters)")
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"expected {type(module).__name__} to return a tensor, got {type(output).__name__}")
        return self.adapters[index](output, routing=self._routing)

    @property
    def languages(self) -> Optional[List[str]]:
        """The language vocabulary ``lang`` ids index into (None without adapters)."""
        return None if self.adapters is None else list(self.adapters[0].vocab)

    def add_language(self, code: str, init_from: Optional[str] = None) -> List[nn.Parameter]:
        """Add ``code``'s adapter in every layer (copied from ``init_from``'s, else random).

        ``code`` is appended to the vocabulary if new and to ``cfg.adapters.languages`` (made explicit).
        Returns the new parameters.
        """
        if self.adapters is None:
            raise ValueError("cannot add a language: text.adapters.enabled is off")
        first = self.adapters[0]
        first._check_code(code)
        if code in first.adapters:
            raise ValueError(f"language {code!r} already has an adapter")
        if init_from is not None and init_from not in first.adapters:
            raise KeyError(f"cannot initialise {code!r} from {init_from!r}: no adapter for {init_from!r} "
                           f"(adapters: {first.languages})")
        params: List[nn.Parameter] = []
        for a in self.adapters:
            params += a.add_language(code, init_from=init_from)
        self.cfg.adapters.languages = first.languages
        return params

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lang: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> Dict[str, object]:
        extra = {k: v for k, v in (("position_ids", position_ids), ("token_type_ids", token_type_ids)) if v is not None}
        if self.adapters is None:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        else:
            if lang is None:
                raise ValueError("text.adapters.enabled: the text tower needs lang (language ids [B]) to pick "
                                 "each row's language adapters")
            if self._routing is not None:
                raise RuntimeError("TextTower.forward is not reentrant with adapters (a forward is already running)")
            lang = torch.as_tensor(lang, device=input_ids.device)
            if lang.dim() == 0:
                lang = lang.expand(input_ids.shape[0])
            if lang.shape != input_ids.shape[:1]:
                raise ValueError(f"lang must be [B] = [{input_ids.shape[0]}], got shape {tuple(lang.shape)}")
            self._routing = self.adapters[0].route(lang)
            try:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                 **extra)
            finally:
                self._routing = None
        hidden = out.last_hidden_state
        return {"text_tokens": hidden, "text_pooled": self.pool(hidden, attention_mask),
                "text_hidden_states": out.hidden_states}
