"""RC3 regularized cross-lingual contrast (Zhou et al., "RC3: Regularized Contrastive Cross-lingual
Cross-modal Pre-training", ACL Findings 2023).

RC3 adds *weakly aligned* multilingual pairs (independent captions of one image in different
languages) to cross-lingual contrastive pre-training and "constrains the representation proximity
of weakly-aligned inputs according to textual relevance". Strict pairs (translations) are exact
positives; a weak pair is a positive only as far as its two texts agree.

Formulation (DESIGN.md; only the paper's abstract was available to us, so the exact form of its
regularizer could not be checked and this module implements DESIGN.md's statement of it as
ALBEF-style soft targets). For a caption batch with ``text_embeds`` t, ``pair_embeds`` p (both
L2-normalized) and ``pair_kind`` k (2 strict, 1 weak, 0 no pair):

- text-text logits ``scale * t @ p.T`` (and ``scale * p @ t.T`` for the other direction);
- targets per row i (:func:`soft_targets`): strict rows one-hot(i); weak rows
  ``(1 - alpha) * one-hot(i) + alpha * softmax(rel_i / relevance_temperature)``, where ``rel_ij``
  is the cosine similarity between sentence i of the row side and candidate j of the column side,
  scored without gradient by the ``relevance`` encoder. When the weak pair's texts agree, ``rel``
  peaks on the diagonal and the target stays close to one-hot (pulled together almost like a
  translation); when they disagree, part of the target mass moves to the candidates the caption
  is actually closer to, so the pair is pulled together less (at the optimum the diagonal
  probability equals the diagonal target weight instead of 1);
- soft cross-entropy ``-sum_j target_ij * log_softmax(logits_i)_j``, averaged over the valid rows
  and over the two directions. Rows with ``pair_kind == 0`` (the "pair" is the caption itself)
  are excluded as rows *and* as candidate columns (their pair embedding is no second view);
- with ``include_image`` (CCLM-style), plus ITC of image vs caption and image vs pair with one-hot
  targets (:func:`xvl.objectives.contrastive.contrastive_loss`): the images of a batch are distinct,
  so those targets are exact. The image-vs-pair term keeps ``pair_kind == 0`` rows: their pair is
  a real caption of the image, so the one-hot target is right there too.

``rc3_loss`` is the sum of the terms (CCLM sums its ITC and TTC losses). With every row strict it
equals ``contrastive_loss(t, p) (+ contrastive_loss(img, t) + contrastive_loss(img, p))``.

Relevance encoder (``relevance``):

- ``"detached"``: the model's current weights, no gradient. Recomputing the embeddings under
  ``torch.no_grad`` with the same weights gives the same vectors as the outputs' ``text_embeds``
  / ``pair_embeds``, so those are used ``.detach()``-ed (no second forward). In train mode they
  carry the forward's dropout noise.
- ``"momentum"``: an EMA copy of the text tower and ``text_proj`` (like XLCo's key encoder:
  ``copy.deepcopy`` at construction, no gradient, eval mode, EMA-updated in :meth:`after_step`,
  saved in this objective's ``state_dict`` so training checkpoints hold it). It costs two extra
  text forwards per step and gives slowly moving, dropout-free relevance (ALBEF's distillation
  targets).

Across processes the column side is gathered (embeddings with gradient, relevance vectors and
``pair_kind`` without) and each rank scores its own rows against all W*B columns, the local-loss
layout of :mod:`xvl.objectives.contrastive`; ``local_negatives=True`` keeps everything on-rank.
Each rank divides its rows' sum by (global valid rows / W), so DDP's average over ranks equals
the single-process mean over the global batch even when ranks hold different numbers of valid
rows (the per-rank logged ``rc3_tt`` is therefore not a local mean; its average over ranks is).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xvl.data.captions import PAIR_NONE, PAIR_STRICT, PAIR_WEAK
from xvl.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size
from xvl.objectives.base import Objective
from xvl.objectives.contrastive import contrastive_loss
from xvl.registry import OBJECTIVES


def soft_targets(rel: torch.Tensor, pair_kind: torch.Tensor, alpha: float, tau: float,
                 offset: int = 0, col_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Contrastive targets [B,N] for rows of kind ``pair_kind`` [B] given relevance ``rel`` [B,N].

    Row i's positive is column ``offset + i``. Strict rows (2): one-hot; weak rows (1):
    ``(1 - alpha) * one-hot + alpha * softmax(rel_i / tau)`` with the softmax over the valid columns
    only; rows of kind 0: all zeros (excluded). ``col_valid`` [N] (bool) marks candidate columns;
    by default (square ``rel``) the columns of rows with ``pair_kind != 0``. Invalid columns get 0.
    """
    if rel.ndim != 2 or pair_kind.shape != (rel.shape[0],):
        raise ValueError(f"rel must be [B,N] and pair_kind [B], got {tuple(rel.shape)} and {tuple(pair_kind.shape)}")
    kinds = set(pair_kind.unique().tolist())
    if not kinds <= {PAIR_NONE, PAIR_WEAK, PAIR_STRICT}:
        raise ValueError(f"pair_kind values must be 0 (none), 1 (weak) or 2 (strict), got {sorted(kinds)}")
    b, n = rel.shape
    if col_valid is None:
        if n != b or offset != 0:
            raise ValueError("col_valid is required when rel is not square (gathered columns)")
        col_valid = pair_kind != PAIR_NONE
    col_valid = col_valid.to(device=rel.device, dtype=torch.bool)
    rows = torch.arange(b, device=rel.device)
    onehot = torch.zeros(b, n, dtype=rel.dtype, device=rel.device)
    onehot[rows, rows + offset] = 1.0
    soft = torch.softmax((rel.detach() / tau).masked_fill(~col_valid, float("-inf")), dim=-1)
    kind = pair_kind.to(rel.device)[:, None]
    weak = (1.0 - alpha) * onehot + alpha * soft
    return torch.where(kind == PAIR_STRICT, onehot,
                       torch.where(kind == PAIR_WEAK, weak, torch.zeros_like(onehot)))


def soft_contrastive_term(logits: torch.Tensor, targets: torch.Tensor, row_valid: torch.Tensor,
                          col_valid: torch.Tensor, denominator: Optional[float] = None) -> torch.Tensor:
    """``sum`` over valid rows of ``-sum_j targets_ij * log_softmax(logits_i)_j``, divided by
    ``denominator`` (default: the number of valid rows, i.e. the mean). Invalid columns are no
    candidates. Nothing to average: ``0 * logits.sum()`` (keeps the graph for DDP)."""
    logp = torch.log_softmax(logits.masked_fill(~col_valid[None], float("-inf")), dim=-1)
    # 0 * -inf is nan: zero the invalid columns' log-probabilities (their targets are 0 anyway)
    per_row = -(targets * logp.masked_fill(~col_valid[None], 0.0)).sum(-1)
    n = float(row_valid.sum()) if denominator is None else float(denominator)
    if n <= 0:
        return 0.0 * logits.sum()
    return per_row[row_valid].sum() / n


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision inputs (autocast), unchanged otherwise (fp64 stays fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@OBJECTIVES.register("rc3")
class RC3Objective(Objective):
    """Cross-lingual contrast with relevance-softened targets for weakly aligned pairs (RC3)."""

    name = "rc3"
    needs_pairs = True

    @dataclass
    class Args:
        # which encoder scores the text relevance of weak pairs (no gradient either way)
        relevance: Literal["detached", "momentum"] = "detached"
        momentum: float = 0.995  # EMA rate of the momentum text tower + text_proj
        temperature: Optional[float] = None  # None: the model's learnable logit_scale
        relevance_temperature: float = 0.1
        alpha: float = 0.5  # share of a weak row's target that comes from relevance
        include_image: bool = True  # + ITC image-caption and image-pair (one-hot)
        local_negatives: bool = False

    def __init__(self, args: "RC3Objective.Args", model=None):
        super().__init__(args, model)
        if args.relevance not in ("detached", "momentum"):
            raise ValueError(f"objectives.rc3.args.relevance must be 'detached' or 'momentum', got {args.relevance!r}")
        if not 0.0 <= args.momentum <= 1.0:
            raise ValueError(f"objectives.rc3.args.momentum must be in [0, 1], got {args.momentum}")
        if args.temperature is not None and not args.temperature > 0:
            raise ValueError(f"objectives.rc3.args.temperature must be > 0 (or null), got {args.temperature}")
        if not args.relevance_temperature > 0:
            raise ValueError(f"objectives.rc3.args.relevance_temperature must be > 0, got {args.relevance_temperature}")
        if not 0.0 <= args.alpha <= 1.0:
            raise ValueError(f"objectives.rc3.args.alpha must be in [0, 1], got {args.alpha}")
        # parallel-text batches (no image; every pair strict) run the text-text term alone; the image
        # terms join wherever the batch has images (include_image)
        self.requires = ("pair_input_ids",)
        self.momentum_text: Optional[nn.Module] = None
        self.momentum_proj: Optional[nn.Module] = None
        if args.relevance == "momentum" and model is not None:
            # EMA copies, not submodules of the model: excluded from the optimizer (it only sees
            # parameters with requires_grad), saved in this objective's state_dict
            self.momentum_text = copy.deepcopy(model.text)
            self.momentum_proj = copy.deepcopy(model.text_proj)
            for p in self._momentum_parameters():
                p.requires_grad_(False)
                p.grad = None
            self.train(self.training)

    # ------------------------------------------------------------------------------ momentum
    def _momentum_parameters(self):
        for m in (self.momentum_text, self.momentum_proj):
            yield from m.parameters()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.momentum_text is not None:
            # deterministic relevance: the momentum encoder scores, it is not an augmentation
            self.momentum_text.eval()
            self.momentum_proj.eval()
        return self

    @torch.no_grad()
    def encode_relevance(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         lang: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalized sentence vectors [B,D] from the momentum text tower + projection (no gradient)."""
        if self.momentum_text is None:
            raise RuntimeError("rc3 with relevance='momentum' was built without a model: construct it "
                               "with model=... (build_objectives(specs, model=model))")
        pooled = self.momentum_text(input_ids, attention_mask, lang=lang)["text_pooled"]
        return F.normalize(_at_least_fp32(self.momentum_proj(pooled)), dim=-1)

    @torch.no_grad()
    def after_step(self, model) -> None:
        """EMA: theta_m = m * theta_m + (1 - m) * theta for the text tower and ``text_proj``
        (buffers copied)."""
        if self.momentum_text is None:
            return
        m = self.args.momentum
        for mine, online in ((self.momentum_text, model.text), (self.momentum_proj, model.text_proj)):
            for (nk, pk), (nq, pq) in zip(mine.named_parameters(), online.named_parameters(), strict=True):
                if nk != nq or pk.shape != pq.shape:
                    raise RuntimeError(f"rc3 momentum encoder does not match the model: {nk} vs {nq}")
                pk.copy_(pk * m + pq.detach() * (1.0 - m))
            for bk, bq in zip(mine.buffers(), online.buffers(), strict=True):
                bk.copy_(bq)

    # ------------------------------------------------------------------------------ objective
    def _relevance_vectors(self, outputs, batch):
        if self.args.relevance == "detached":
            # same weights as a no-grad recomputation would use: the outputs themselves, detached
            return _at_least_fp32(outputs["text_embeds"].detach()), _at_least_fp32(outputs["pair_embeds"].detach())
        return (self.encode_relevance(batch["input_ids"], batch["attention_mask"], batch.get("lang")),
                self.encode_relevance(batch["pair_input_ids"], batch["pair_attention_mask"], batch.get("pair_lang")))

    def forward(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> Dict[str, torch.Tensor]:
        a = self.args
        t, p = outputs["text_embeds"], outputs["pair_embeds"]
        if a.temperature is not None:
            scale = torch.tensor(1.0 / a.temperature, device=t.device)
        else:
            scale = outputs["logit_scale"]
        kind = batch.get("pair_kind")
        if kind is None:  # parallel-text batches: every pair is a translation
            kind = torch.full((t.shape[0],), PAIR_STRICT, dtype=torch.long)
        kind = kind.to(t.device)
        rel_t, rel_p = self._relevance_vectors(outputs, batch)

        distributed = not a.local_negatives and get_world_size() > 1
        if distributed:  # collectives run on every rank, whatever its rows are
            all_t, all_p = all_gather_with_grad(t), all_gather_with_grad(p)
            all_rel_t, all_rel_p = all_gather_no_grad(rel_t), all_gather_no_grad(rel_p)
            all_kind = all_gather_no_grad(kind)
            offset = get_rank() * t.shape[0]
        else:
            all_t, all_p, all_rel_t, all_rel_p, all_kind, offset = t, p, rel_t, rel_p, kind, 0

        row_valid, col_valid = kind != PAIR_NONE, all_kind != PAIR_NONE
        # mean over the *global* valid rows: each rank divides its sum by (global count / W), so
        # DDP's average over ranks is exactly the single-process mean of the global batch
        world = get_world_size() if distributed else 1
        denominator = float(col_valid.sum()) / world
        terms, diag_weights = [], []
        for q, keys, rq, rkeys in ((t, all_p, rel_t, all_rel_p), (p, all_t, rel_p, all_rel_t)):
            targets = soft_targets(_at_least_fp32(rq @ rkeys.t()), kind, a.alpha, a.relevance_temperature,
                                   offset=offset, col_valid=col_valid)
            logits = scale * q @ keys.t()
            terms.append(soft_contrastive_term(_at_least_fp32(logits), targets, row_valid, col_valid, denominator))
            rows = torch.arange(q.shape[0], device=q.device)
            diag_weights.append(targets[rows, rows + offset])
        tt_loss = 0.5 * (terms[0] + terms[1])
        loss = tt_loss

        weak = kind == PAIR_WEAK
        dev = t.device
        result = {
            f"{self.name}_tt": tt_loss.detach(),
            # how much of a weak row's target stays on its own pair (1 = treated as a translation);
            # 1 without weak rows (nothing softened; not NaN: the trainer averages metrics over steps)
            f"{self.name}_weak_diag": (0.5 * (diag_weights[0] + diag_weights[1]))[weak].mean()
            if bool(weak.any()) else torch.ones((), device=dev),
            f"{self.name}_n_strict": (kind == PAIR_STRICT).sum().float(),
            f"{self.name}_n_weak": weak.sum().float(),
            "logit_scale": scale.detach(),
        }
        if a.include_image and "image_embeds" in outputs:
            img = outputs["image_embeds"]
            it = contrastive_loss(img, t, scale, local_negatives=a.local_negatives)
            ip = contrastive_loss(img, p, scale, local_negatives=a.local_negatives)
            loss = loss + it["loss"] + ip["loss"]
            result.update({f"{self.name}_it": it["loss"].detach(), f"{self.name}_ip": ip["loss"].detach(),
                           f"{self.name}_it_acc": it["acc"].detach()})
        result[f"{self.name}_loss"] = loss
        return result
