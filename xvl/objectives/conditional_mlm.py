"""Conditional masked language modeling (CCLM): masked caption tokens recovered through the fusion
encoder, conditioned on the image or on the caption's translation.

CCLM ("Cross-View Language Modeling", Zeng et al. 2022) treats an image-caption pair and a
sentence-translation pair as two views of one object and trains both with the same losses; its
MLM masks the text of a pair and predicts the masked tokens from the fused states, so a token
can be recovered from the other view::

    x~ = mask(caption)                                    (40% of the tokens, CCLM)
    h  = fusion( text_tower(x~), context )                context: image patches | translation
    loss = mean over masked positions of CE( fusion_mlm_head(h), original token )

* Masking (in the data loader, :meth:`ConditionalMLM.input_preparer` ->
  :func:`add_cmlm_inputs`): :func:`xvl.data.masking.mask_spans` on ``input_ids`` —
  ``mask_probability`` of each row's non-special tokens (an exact per-row budget, so the
  expected fraction is ``mask_probability``), each masked position starting a span of a length
  drawn uniformly from ``span_lengths`` with probability ``span_probability`` (CCLM's "skipgram"
  masking), BERT's 80/10/10 corruption. It writes only ``cmlm_input_ids`` / ``cmlm_labels``
  (-100 off the masked positions), so it runs next to the mlm/tlm preparer (``mlm_*``).
* ``condition="image"``: the context is ``outputs["image_tokens"]`` (the vision tower's patch
  tokens, projected inside the fusion encoder), ``context_type="image"``.
  ``condition="translation"``: the context is ``outputs["pair_tokens"]`` (the text tower's states
  of the unmasked ``pair_input_ids``) with ``pair_attention_mask``, ``context_type="text"``; rows
  whose ``pair_kind`` is 0 (no real second sentence: the "pair" is the caption itself, which would
  give the answer away) are left out of the loss.
  ``condition="auto"``: per batch, the image when the batch has one, else the translation — CCLM's
  setup of one MLM over image-caption batches and parallel-text batches in the same run.
* The masked caption goes through the text tower with the batch's ``lang`` (X-Mod adapters).

Deviations from CCLM: the fusion encoder is a separate cross-attention stack on top of the full
text tower (CCLM uses the upper layers of its text encoder as the fusion layers; see
:mod:`xvl.models.fusion`); masking is per subword token (CCLM's BERT masker extends spans over
whole words) and has no cap on the number of masked tokens per caption (CCLM: ``max_masks``);
the last span of a row may be cut short to keep the budget exact (CCLM masks the whole span and
then drops random masked positions, which can break spans apart).

Outputs: ``cmlm_loss`` and ``cmlm_acc`` (top-1 accuracy on the masked tokens).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from xvl.data.masking import IGNORE_INDEX, mask_spans
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES

CONDITIONS = ("image", "translation", "auto")


def add_cmlm_inputs(batch: Dict, tokenizer, generator: Optional[torch.Generator] = None,
                    mask_probability: float = 0.4, span_probability: float = 0.0,
                    span_lengths: Sequence[int] = (2, 3)) -> Dict:
    """Add ``cmlm_input_ids`` (the span-masked caption) and ``cmlm_labels`` to ``batch`` (in place;
    also returned). The attention mask is the caption's own (``attention_mask``)."""
    masked, labels = mask_spans(batch["input_ids"], batch["attention_mask"], tokenizer,
                                mask_probability=mask_probability, span_probability=span_probability,
                                span_lengths=span_lengths, generator=generator)
    batch.update(cmlm_input_ids=masked, cmlm_labels=labels)
    return batch


def masked_token_loss(head, states: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Mean cross-entropy of ``head(states)`` on the positions where ``labels != -100``, and top-1
    accuracy. Only those positions go through the vocabulary projection; with none, a zero loss
    that keeps the graph (DDP)."""
    sel = labels != IGNORE_INDEX
    target = labels[sel]
    if target.numel() == 0:
        zero = states.sum() * 0.0
        return {"loss": zero, "acc": zero.detach()}
    logits = head(states[sel]).float()
    loss = F.cross_entropy(logits, target)
    acc = (logits.detach().argmax(-1) == target).float().mean()
    return {"loss": loss, "acc": acc}


@OBJECTIVES.register("cmlm")
class ConditionalMLM(Objective):
    """CCLM's conditional MLM through the fusion encoder (see the module docstring)."""

    name = "cmlm"
    prepares = "cmlm"

    @dataclass
    class Args:
        mask_probability: float = 0.4  # CCLM masks 40% of the caption tokens
        span_probability: float = 0.0  # chance that a masked position starts a multi-token span
        span_lengths: List[int] = field(default_factory=lambda: [2, 3])  # span length: uniform over these
        condition: Literal["image", "translation", "auto"] = "image"
        # predict the masks of the first max_rows rows only (cost: a text + fusion forward per row);
        # None = every row (CCLM)
        max_rows: Optional[int] = None

    def __init__(self, args: "ConditionalMLM.Args", model=None):
        super().__init__(args, model)
        if not 0.0 < args.mask_probability <= 1.0:
            raise ValueError(f"cmlm: mask_probability must be in (0, 1], got {args.mask_probability}")
        if not 0.0 <= args.span_probability <= 1.0:
            raise ValueError(f"cmlm: span_probability must be in [0, 1], got {args.span_probability}")
        if not args.span_lengths or any(int(n) != n or n < 1 for n in args.span_lengths):
            raise ValueError(f"cmlm: span_lengths must be a non-empty list of integers >= 1, got {args.span_lengths}")
        if args.condition not in CONDITIONS:
            raise ValueError(f"cmlm: condition must be one of {CONDITIONS}, got {args.condition!r}")
        if model is not None and getattr(model, "fusion", None) is None:
            raise ValueError("cmlm predicts through the fusion encoder: set model.fusion.layers > 0")
        # the composite skips the objective on batches without these (image-only objective on a
        # parallel-text batch, ...); "auto" decides per batch in applies()
        base = ("cmlm_input_ids", "cmlm_labels")
        self.requires = {"image": base + ("image",), "translation": base + ("pair_input_ids",),
                         "auto": base}[args.condition]
        # on image-caption data the translation view needs a second caption per image
        self.needs_pairs = args.condition != "image"

    def applies(self, outputs, batch) -> bool:
        if not super().applies(outputs, batch):
            return False
        return self.args.condition != "auto" or "image" in batch or "pair_input_ids" in batch

    def input_preparer(self):
        a = self.args
        return functools.partial(add_cmlm_inputs, mask_probability=a.mask_probability,
                                 span_probability=a.span_probability, span_lengths=tuple(a.span_lengths))

    def _context(self, outputs, batch):
        """(context, context_mask, context_type, rows kept in the loss or None = all)."""
        cond = self.args.condition
        if cond == "auto":
            cond = "image" if "image" in batch else "translation"
        if cond == "image":
            if "image_tokens" not in outputs:
                raise KeyError("cmlm (condition=image) needs outputs['image_tokens']: the batch must hold 'image'")
            return outputs["image_tokens"], None, "image", None
        if "pair_tokens" not in outputs:
            raise KeyError("cmlm (condition=translation) needs outputs['pair_tokens']: the batch must hold "
                           "'pair_input_ids' / 'pair_attention_mask'")
        keep = batch["pair_kind"] != 0 if "pair_kind" in batch else None
        return outputs["pair_tokens"], batch["pair_attention_mask"], "text", keep

    def forward(self, outputs, batch):
        model = self.xvl_model
        ids, labels = batch["cmlm_input_ids"], batch["cmlm_labels"]
        mask = batch["attention_mask"]
        context, context_mask, context_type, keep = self._context(outputs, batch)
        lang = batch.get("lang")
        n = self.args.max_rows
        if n is not None and n < ids.shape[0]:
            ids, labels, mask, context = ids[:n], labels[:n], mask[:n], context[:n]
            lang = None if lang is None else lang[:n]
            context_mask = None if context_mask is None else context_mask[:n]
            keep = None if keep is None else keep[:n]
        text = model.text(ids, mask, lang=lang)["text_tokens"]
        fused = model.fuse(text, mask, context, context_mask, context_type=context_type)
        labels = labels.to(fused.device)
        if keep is not None:
            labels = labels.masked_fill(~keep.to(labels.device)[:, None], IGNORE_INDEX)
        out = masked_token_loss(model.fusion_mlm_head, fused, labels)
        return {f"{self.name}_loss": out["loss"], f"{self.name}_acc": out["acc"]}
