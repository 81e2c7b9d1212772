"""Masked language modeling on the text tower: InfoXLM's MMLM and XLM's TLM.

The objective only scores: the batch must already hold ``mlm_input_ids`` / ``mlm_attention_mask``
/ ``mlm_labels`` (built by :func:`xvl.data.masking.add_mlm_inputs`), from which the model computes
``outputs["mlm_tokens"]``. Whether that is monolingual MLM (one masked sentence) or TLM (a masked
sentence + translation pair) is decided by how the masking built the batch; the ``tlm`` name
is the same objective logged as ``tlm_loss`` / ``tlm_acc``, and its ``Args.mode`` defaults to
``"tlm"`` so a collator can call ``objective.add_inputs(batch, tokenizer, generator)``.

The head is RoBERTa's LM head: dense -> GELU -> LayerNorm -> decoder to the vocabulary + bias.
With ``tie_embeddings`` the decoder weight *is* the text model's input embedding matrix
(``model.text.model.get_input_embeddings().weight``); it is read from the model at every call
and not registered in this module, so it is owned (saved, optimized, synced) once, by the model.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Dict, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xvl.data.masking import IGNORE_INDEX, add_mlm_inputs
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES


class MLMHead(nn.Module):
    """dense(H,H) -> GELU -> LayerNorm; the vocabulary projection is applied by the objective."""

    def __init__(self, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(F.gelu(self.dense(x)))


@OBJECTIVES.register("mlm")
class MaskedLanguageModeling(Objective):
    """Cross-entropy of the LM head on ``outputs["mlm_tokens"]`` vs ``batch["mlm_labels"]``."""

    name = "mlm"
    prepares = "mlm"  # mlm and tlm both write mlm_* keys

    @dataclass
    class Args:
        tie_embeddings: bool = True  # decoder weight = the text model's input embeddings
        label_smoothing: float = 0.0
        # how a collator should build the batch (see add_inputs / xvl.data.masking.add_mlm_inputs)
        mode: Literal["mmlm", "tlm"] = "mmlm"
        mlm_probability: float = 0.15
        restart_positions: bool = True  # TLM: the translation's positions restart
        language_embeddings: bool = False  # language ids as token types (type_vocab_size >= #langs)

    def __init__(self, args: "MaskedLanguageModeling.Args", model=None):
        super().__init__(args, model)
        if not 0.0 < args.mlm_probability <= 1.0:
            raise ValueError(f"{self.name}: mlm_probability must be in (0, 1], got {args.mlm_probability}")
        if not 0.0 <= args.label_smoothing < 1.0:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 1), got {args.label_smoothing}")
        self.head = None
        self.decoder = None
        self._text_config = None
        if model is None:  # config validation only: the head needs the model's sizes
            return
        hf = model.text.model
        cfg = hf.config
        self._text_config = cfg
        if args.language_embeddings:
            n_lang = len(getattr(model, "lang_to_id", {}) or {})
            tv = int(getattr(cfg, "type_vocab_size", 1))
            if n_lang > tv:
                raise ValueError(
                    f"{self.name}: language_embeddings needs type_vocab_size >= the number of "
                    f"languages ({n_lang}) but the text model has type_vocab_size={tv}; set "
                    f"model.text.config.type_vocab_size: {n_lang}")
        emb = hf.get_input_embeddings()
        self.head = MLMHead(cfg.hidden_size, eps=getattr(cfg, "layer_norm_eps", 1e-5))
        vocab, hidden = emb.weight.shape
        self.bias = nn.Parameter(torch.zeros(vocab))
        if args.tie_embeddings:
            # kept outside the module tree: the model owns this weight (no duplicate in
            # state_dict / optimizer / safetensors checkpoints)
            object.__setattr__(self, "_tied_embeddings", emb)
            self.decoder = None
        else:
            self.decoder = nn.Linear(hidden, vocab, bias=False)
            self.decoder.weight.data.copy_(emb.weight.data)

    @property
    def decoder_weight(self) -> torch.Tensor:
        if self.decoder is not None:
            return self.decoder.weight
        return self._tied_embeddings.weight

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits [..., V] for token states [..., H]."""
        if self.head is None:
            raise RuntimeError(f"objective '{self.name}' was built without a model: it needs the "
                               "text tower's sizes and embeddings (build_objective(..., model=model))")
        return F.linear(self.head(tokens), self.decoder_weight, self.bias)

    def input_preparer(self):
        a = self.args
        return functools.partial(add_mlm_inputs, mode=a.mode, mlm_probability=a.mlm_probability,
                                 restart_positions=a.restart_positions, language_embeddings=a.language_embeddings,
                                 text_config=self._text_config)

    def add_inputs(self, batch: Dict, tokenizer, generator=None) -> Dict:
        """Mask ``batch`` as this objective's args say (see :func:`add_mlm_inputs`)."""
        a = self.args
        return add_mlm_inputs(batch, tokenizer, mode=a.mode, mlm_probability=a.mlm_probability,
                              generator=generator, restart_positions=a.restart_positions,
                              language_embeddings=a.language_embeddings, text_config=self._text_config)

    def forward(self, outputs, batch):
        if "mlm_tokens" not in outputs or "mlm_labels" not in batch:
            raise KeyError(f"objective '{self.name}' needs batch['mlm_input_ids'/'mlm_attention_mask'/"
                           "'mlm_labels'] (xvl.data.masking.add_mlm_inputs) so the model returns "
                           "outputs['mlm_tokens']")
        labels = batch["mlm_labels"].to(outputs["mlm_tokens"].device)
        sel = labels != IGNORE_INDEX
        # only the selected positions go through the vocabulary projection (the expensive part)
        logits = self.logits(outputs["mlm_tokens"][sel]).float()
        target = labels[sel]
        if target.numel() == 0:
            zero = logits.sum() * 0.0  # keeps the graph (DDP) while contributing nothing
            return {f"{self.name}_loss": zero, f"{self.name}_acc": zero.detach()}
        loss = F.cross_entropy(logits, target, label_smoothing=self.args.label_smoothing)
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return {f"{self.name}_loss": loss, f"{self.name}_acc": acc}


@OBJECTIVES.register("tlm")
class TranslationLanguageModeling(MaskedLanguageModeling):
    """The same loss on TLM batches (sentence + translation), logged as ``tlm_loss``."""

    name = "tlm"
    needs_pairs = True  # on image-caption data: a second caption of the image (a translation when it has one)

    @dataclass
    class Args(MaskedLanguageModeling.Args):
        mode: Literal["mmlm", "tlm"] = "tlm"
