"""XTR: cross-lingual token-level reconstruction (EMS; Mao, Chu & Kurohashi, 2023).

From the mean-pooled sentence vector ``u(s)`` of a sentence and the embedding of the *other*
side's language, predict the bag of words of its translation ``t`` with one softmax over the
vocabulary::

    p(. | s, l_t) = softmax(W h + b),   h = g([e(l_t); u(s)])
    loss = KL(q_t || p(. | s, l_t)) + KL(q_s || p(. | t, l_s))          (``symmetric=True``)

``q_t`` is uniform over the token *types* (distinct ids) of ``t``; padding never counts and
special tokens (<s>, </s>, <pad>, <unk>, ...) are left out with ``exclude_special=True``. No input
masking: the encoder sees the whole sentence.

How the language enters (what EMS does): the official code (Mao-KU/EMS, ``modeling/model_v2.py``,
``has_la_emb=True``) **concatenates** a layer-normalized language embedding (``la_dim=128``) with
the sentence vector, ``torch.cat((la_emb, sent_emb))``, passes the concatenation through a
prediction-head transform (dense -> swish -> LayerNorm; to the token width when the output matrix is
shared with the input embeddings, else keeping the concatenated width) and then projects onto the
vocabulary. This module does the same: ``e(l)`` is an ``nn.Embedding(num_languages, lang_dim)``
followed by LayerNorm, ``g`` the transform (``transform=True``, the default), ``W`` either its own
matrix or, with ``tie_embeddings=True``, the text model's input embedding matrix (then ``g`` always
maps ``hidden+lang_dim -> hidden``, a plain linear map when ``transform=False``). ``b`` is a
per-token output bias (EMS v1 has one; v2 drops it; it costs nothing).

The KL is exact: with ``n`` types, ``KL(q||p) = -log n - (1/n) sum_{v in types} log p_v >= 0``
(the target entropy ``log n`` is included, as ``nn.KLDivLoss`` does in EMS), averaged over the rows
whose target has at least one type; the two directions are summed, as in EMS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES


def target_types(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], vocab_size: int,
                 exclude_ids: Iterable[int] = ()) -> torch.Tensor:
    """Multi-hot ``[B, V]`` bool: which ids occur in each row (padding and ``exclude_ids`` left out).

    Duplicates collapse to one entry (token *types*).
    """
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    exclude = torch.as_tensor(sorted(set(int(i) for i in exclude_ids if i is not None)),
                              dtype=input_ids.dtype, device=input_ids.device)
    if exclude.numel():
        keep = keep & ~torch.isin(input_ids, exclude)
    # ids at dropped positions are routed to a dummy column that is cut off afterwards
    ids = torch.where(keep, input_ids, torch.full_like(input_ids, vocab_size))
    types = torch.zeros(input_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=input_ids.device)
    types.scatter_(1, ids, True)
    return types[:, :vocab_size]


def uniform_kl(log_probs: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(q || p)`` with ``q`` uniform over ``types`` ([B,V] bool), ``log_probs`` = log p.

    ``KL = sum_v q_v (log q_v - log p_v) = -log n - (1/n) sum_{v in types} log p_v``; exactly 0 when
    ``p == q``. Rows without any type get 0 (the caller leaves them out of the mean).
    """
    mask = types.to(log_probs.dtype)
    n = mask.sum(-1)
    safe_n = n.clamp_min(1.0)
    # masked_fill, not a product: a -inf log-prob outside the support must not give 0 * -inf = nan
    picked = log_probs.masked_fill(~types, 0.0).sum(-1)
    kl = -torch.log(safe_n) - picked / safe_n
    return torch.where(n > 0, kl, torch.zeros_like(kl))


@torch.no_grad()
def topk_recall_counts(logits: torch.Tensor, types: torch.Tensor, k: int = 10):
    """(hits, total): how many target types are among each row's top-``k`` logits, summed."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    hits = types.gather(1, top).sum()
    return hits, types.sum()


@OBJECTIVES.register("xtr")
class XTRObjective(Objective):
    """Cross-lingual token-level reconstruction over (``input_ids``, ``pair_input_ids``) pairs.

    Reads ``outputs["text_pooled"]`` / ``outputs["pair_pooled"]`` and the batch's ``input_ids``,
    ``attention_mask``, ``lang``, ``pair_input_ids``, ``pair_attention_mask``, ``pair_lang``.
    Returns ``xtr_loss`` and ``xtr_top10_recall`` (fraction of target types in the top-10 predicted
    tokens, over both directions).
    """

    name = "xtr"

    @dataclass
    class Args:
        # W = the text model's input embedding matrix (EMS ``share_emb``); off in EMS's runs
        tie_embeddings: bool = False
        # both directions: s -> bag(t) and t -> bag(s)
        symmetric: bool = True
        # leave special tokens (<s>, </s>, <pad>, <unk>, <mask>, ...) out of the target types
        exclude_special: bool = True
        # width of the target-language embedding concatenated with u (EMS ``la_dim``)
        lang_dim: int = 128
        # EMS's prediction-head transform (dense -> swish -> LayerNorm) before the vocabulary projection
        transform: bool = True

    def __init__(self, args: "XTRObjective.Args", model=None):
        super().__init__(args, model)
        if model is None:
            raise ValueError("the xtr objective needs the model (vocabulary, languages, embeddings)")
        if args.lang_dim < 1:
            raise ValueError(f"objectives.xtr.args.lang_dim must be >= 1, got {args.lang_dim}")
        embed = model.text.model.get_input_embeddings()
        vocab_size, hidden = embed.weight.shape[0], model.text.width
        self.vocab_size = vocab_size
        self.num_languages = len(model.cfg.languages)
        self.lang_embed = nn.Embedding(self.num_languages, args.lang_dim)
        self.lang_norm = nn.LayerNorm(args.lang_dim, eps=1e-12)
        cat = hidden + args.lang_dim
        out_dim = embed.weight.shape[1] if args.tie_embeddings else cat
        if args.transform:
            self.head = nn.Sequential(nn.Linear(cat, out_dim), nn.SiLU(), nn.LayerNorm(out_dim, eps=1e-12))
        elif args.tie_embeddings:
            self.head = nn.Linear(cat, out_dim)
        else:
            self.head = nn.Identity()
        if args.tie_embeddings:
            # a plain reference, not a submodule: the weight stays the model's own parameter (no
            # duplicate in the state dict / safetensors checkpoint, one copy in the optimizer)
            self._tied = [embed]
            self.decoder = None
        else:
            self._tied = []
            self.decoder = nn.Linear(out_dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        special = getattr(model.tokenizer, "all_special_ids", []) if args.exclude_special else []
        self.special_ids = sorted(set(int(i) for i in special))

    # ------------------------------------------------------------------------------ pieces
    def output_weight(self) -> torch.Tensor:
        return self._tied[0].weight if self._tied else self.decoder.weight

    def language_embedding(self, lang: torch.Tensor) -> torch.Tensor:
        return self.lang_norm(self.lang_embed(lang))

    def logits(self, pooled: torch.Tensor, target_lang: torch.Tensor) -> torch.Tensor:
        """``W g([e(l); u]) + b`` -> [B, V] vocabulary logits (float32)."""
        lang = torch.as_tensor(target_lang, device=pooled.device).long()
        if lang.dim() != 1 or lang.shape[0] != pooled.shape[0]:
            raise ValueError(f"xtr: target language ids must be [B]={pooled.shape[0]}, got {tuple(lang.shape)}")
        h = self.head(torch.cat([self.language_embedding(lang).to(pooled.dtype), pooled], dim=-1))
        w = self.output_weight()
        return F.linear(h.float(), w.float(), self.bias.float())

    def types(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return target_types(input_ids, attention_mask, self.vocab_size, self.special_ids)

    def direction(self, pooled, target_lang, target_ids, target_mask):
        """One direction: (per-row KL [B], valid rows [B], logits [B,V], types [B,V])."""
        logits = self.logits(pooled, target_lang)
        types = self.types(target_ids, target_mask)
        kl = uniform_kl(F.log_softmax(logits, dim=-1), types)
        return kl, types.any(-1), logits, types

    # ------------------------------------------------------------------------------ forward
    def forward(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> Dict[str, torch.Tensor]:
        for key in ("pair_input_ids", "lang", "pair_lang"):
            if key not in batch:
                raise KeyError(f"xtr needs parallel batches with '{key}' (a translation pair per row)")
        dirs = [(outputs["text_pooled"], batch["pair_lang"], batch["pair_input_ids"],
                 batch.get("pair_attention_mask"))]
        if self.args.symmetric:
            dirs.append((outputs["pair_pooled"], batch["lang"], batch["input_ids"], batch.get("attention_mask")))
        loss = None
        hits = total = None
        for pooled, lang, ids, mask in dirs:
            kl, valid, logits, types = self.direction(pooled, lang, ids, mask)
            # mean over rows whose target has at least one type; 0 (still in the graph) if none
            part = (kl * valid).sum() / valid.sum().clamp_min(1)
            loss = part if loss is None else loss + part
            h, n = topk_recall_counts(logits.detach(), types, k=10)
            hits, total = (h, n) if hits is None else (hits + h, total + n)
        recall = hits.float() / total.clamp_min(1).float()
        return {"xtr_loss": loss, "xtr_top10_recall": recall.detach()}
