"""Multilingual image-text retrieval evaluation (Recall@K, both directions, per language).

Library behind ``xvl eval retrieval --model DIR --data FILE.jsonl [--image-root DIR] [--out FILE.json]``.

Input: a jsonl file, one record per image::

    {"image_id": "0001", "image": "images/0001.jpg",
     "captions": [{"lang": "de", "text": "...", "kind": "native", "source": "..."}, ...]}

Several captions per image and per language are allowed. ``kind`` is one of ``original``,
``native``, ``human_translation``, ``machine_translation``.

Output (``evaluate_retrieval``)::

    {"per_language": {LANG: {"i2t": {"r1", "r5", "r10"}, "t2i": {"r1", "r5", "r10"},
                             "mean_recall", "n_images", "n_captions"}},
     "average": {"i2t": {...}, "t2i": {...}, "mean_recall"},
     "n_skipped": {reason: count}}

Recalls are fractions in [0, 1]. ``mean_recall`` is the mean of the six recalls; ``average`` is
the unweighted mean over languages of each recall and of ``mean_recall``.

Ranking rules (see :func:`recall_at_k`):

* per language, the candidates are the images with at least one caption in that language, and
  the text candidates are all captions of that language;
* image->text: a hit at k when ANY of the image's captions (in that language) is ranked within k;
* text->image: each caption ranks the candidate images; a hit when its own image is within k;
* ties count AGAINST the query (pessimistic).

Re-ranking (``--rerank K``, :func:`rerank_recall_at_k`; models with a fusion encoder): for each
query the top K candidates by contrastive similarity are re-scored by the matching head
(P(matched) of ``model.itm_head(model.fuse(text, image)[:, 0])``, ALBEF / CCLM's ITM re-ranking);
the final ranking is those K ordered by matching score, followed by the other candidates in
contrastive order. The result then also holds ``"rerank": K``. With a contrastive weight
``w > 0`` (``--rerank-contrastive W``) the K are ordered by ``log P(matched) + w * s`` instead,
``s`` the contrastive logit (logit scale x cosine): at ``w = 1`` that is the product of the
matching probability and the contrastive softmax over the query's candidates, so a weak matching
head refines the contrastive order instead of replacing it (BLIP re-ranks by ITM + ITC score
too). The result then also holds ``"rerank_contrastive": w``.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

from xvl.data.captions import read_caption_jsonl
from xvl.data.images import SkipCounter, load_image
from xvl.evaluation.common import batches, lang_kwargs, mean, pct, render_table
from xvl.evaluation.common import progress as progress_bar

logger = logging.getLogger(__name__)

__all__ = ["recall_at_k", "rerank_recall_at_k", "matching_scorer", "evaluate_retrieval", "load_records",
           "format_retrieval_table"]

DEFAULT_KS = (1, 5, 10)
MACHINE_TRANSLATION = "machine_translation"
_MISS = 2 ** 62  # rank given to a query whose true item cannot be scored (a miss for every k)


# --------------------------------------------------------------------------------------------
# Recall@K
# --------------------------------------------------------------------------------------------
def _check_ks(ks: Sequence[int]) -> tuple:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return ks


def _poison_nonfinite_rows(emb: Tensor, what: str) -> Tensor:
    """Replace rows holding any NaN/inf by all-NaN rows (their scores then count as misses)."""
    bad = ~torch.isfinite(emb).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        logger.warning(
            "recall_at_k: %d of %d %s embeddings are not finite; they are scored pessimistically "
            "(never a hit, always ranked ahead of the true item)", n_bad, emb.shape[0], what)
        emb = emb.clone()
        emb[bad] = float("nan")
    return emb


@torch.no_grad()
def recall_at_k(text_emb: Tensor, image_emb: Tensor, caption_image: Tensor,
                ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 1024) -> dict:
    """Recall@K for image->text and text->image retrieval.

    Args:
        text_emb: ``[T, D]`` caption embeddings.
        image_emb: ``[N, D]`` image embeddings. The score of a pair is the plain dot product, so
            pass normalized embeddings for cosine similarity.
        caption_image: ``[T]`` integer tensor; ``caption_image[t]`` is the row of ``image_emb``
            that caption ``t`` describes. Every image must have at least one caption (an image
            without captions cannot be a retrieval query, and must not be a candidate either):
            ``ValueError`` otherwise.
        ks: the cut-offs K; the result keys are ``f"r{k}"``.
        chunk_size: similarities are computed ``chunk_size`` query rows at a time (a chunk of
            captions x all images, then a chunk of images x all captions), so memory is
            ``O(chunk_size * max(T, N))`` and the full ``T x N`` matrix is never materialised.
            The result does not depend on ``chunk_size``.

    Returns:
        ``{"i2t": {"r1": float, ...}, "t2i": {"r1": float, ...}}``, fractions in [0, 1].

    Ranking definition (the rank is the 0-based position; a hit at k means ``rank < k``):

    * text->image, caption ``t`` with true image ``i``: ``rank = #{j != i : s(t, j) >= s(t, i)}``.
    * image->text, image ``i`` with caption set ``C_i``: ``best = max_{c in C_i} s(c, i)`` and
      ``rank = #{c not in C_i : s(c, i) >= best}``, i.e. a hit when ANY of the image's captions
      is within the top k among all captions.

    Ties are pessimistic: a wrong candidate scoring exactly as high as the true item is ranked
    ahead of it (ties among the captions of the same image do not matter). Hence a degenerate
    model (e.g. constant embeddings, where every score ties) gets recall 0 whenever there are
    more than k wrong candidates -- at most the ~k/N of random guessing, never the 1.0 that
    optimistic ("first index wins") tie-breaking would report. Recall@k is trivially 1.0 for
    any model when a query has at most k-1 wrong candidates (e.g. N <= k for text->image).

    Non-finite embeddings (NaN/inf rows) are scored pessimistically too, with a warning: a
    non-finite true item is never a hit, a non-finite wrong candidate is always ranked ahead.
    """
    ks = _check_ks(ks)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if text_emb.dim() != 2 or image_emb.dim() != 2:
        raise ValueError(f"text_emb and image_emb must be 2-D, got shapes "
                         f"{tuple(text_emb.shape)} and {tuple(image_emb.shape)}")
    T, D = text_emb.shape
    N = image_emb.shape[0]
    if image_emb.shape[1] != D:
        raise ValueError(f"embedding sizes differ: text {D}, image {image_emb.shape[1]}")
    if T == 0 or N == 0:
        raise ValueError(f"need at least one caption and one image, got T={T}, N={N}")
    caption_image = torch.as_tensor(caption_image)
    if caption_image.shape != (T,):
        raise ValueError(f"caption_image must have shape [{T}], got {tuple(caption_image.shape)}")
    if caption_image.dtype.is_floating_point or caption_image.dtype == torch.bool:
        raise ValueError(f"caption_image must be an integer tensor, got {caption_image.dtype}")

    device = text_emb.device
    caption_image = caption_image.to(device=device, dtype=torch.long)
    if int(caption_image.min()) < 0 or int(caption_image.max()) >= N:
        raise ValueError(f"caption_image values must be in [0, {N}), got range "
                         f"[{int(caption_image.min())}, {int(caption_image.max())}]")
    n_caps = torch.bincount(caption_image, minlength=N)
    if bool((n_caps == 0).any()):
        missing = torch.nonzero(n_caps == 0).flatten()[:10].tolist()
        raise ValueError(f"{int((n_caps == 0).sum())} image(s) have no caption (e.g. rows "
                         f"{missing}); leave them out of image_emb")

    dtype = text_emb.dtype if text_emb.dtype in (torch.float32, torch.float64) else torch.float32
    text_emb = _poison_nonfinite_rows(text_emb.to(dtype), "text")
    image_emb = _poison_nonfinite_rows(image_emb.to(device=device, dtype=dtype), "image")

    # ---- text -> image: a chunk of captions x all images at a time
    t2i_rank = torch.empty(T, dtype=torch.long, device=device)
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        sims = text_emb[start:end] @ image_emb.T                       # [c, N]
        true_idx = caption_image[start:end].unsqueeze(1)                # [c, 1]
        true = sims.gather(1, true_idx)                                 # [c, 1]
        ahead = (sims >= true) | torch.isnan(sims)                      # ties and NaN count against
        ahead.scatter_(1, true_idx, False)                              # the true image itself
        rank = ahead.sum(1)
        rank[torch.isnan(true.squeeze(1))] = _MISS                      # NaN true score: a miss
        t2i_rank[start:end] = rank

    # ---- image -> text: a chunk of images x all captions at a time
    i2t_rank = torch.empty(N, dtype=torch.long, device=device)
    for start in range(0, N, chunk_size):
        end = min(start + chunk_size, N)
        sims = image_emb[start:end] @ text_emb.T                        # [c, T]
        own = caption_image.unsqueeze(0) == torch.arange(start, end, device=device).unsqueeze(1)
        nan = torch.isnan(sims)
        best = sims.masked_fill(~own | nan, float("-inf")).max(dim=1, keepdim=True).values
        ahead = ((sims >= best) | nan) & ~own
        rank = ahead.sum(1)
        rank[(own & ~nan).sum(1) == 0] = _MISS                          # no scorable own caption
        i2t_rank[start:end] = rank

    def recalls(rank: Tensor) -> dict:
        return {f"r{k}": float((rank < k).double().mean()) for k in ks}

    return {"i2t": recalls(i2t_rank), "t2i": recalls(t2i_rank)}


# --------------------------------------------------------------------------------------------
# Re-ranking with the matching head
# --------------------------------------------------------------------------------------------
#: ``score_pairs(text_rows [M], image_rows [M]) -> [M]`` matching scores (higher = better match)
PairScorer = Callable[[Tensor, Tensor], Tensor]


def _reranked_ranks(sims: Tensor, true: Tensor, k: int, score: Callable[[Tensor, Tensor], Tensor],
                    query_rows: Tensor, contrastive_coef: float = 0.0) -> Tensor:
    """0-based rank of the best true candidate of each query after re-ranking its top ``k``.

    ``sims`` ``[c, M]`` contrastive scores of ``c`` queries against ``M`` candidates, ``true``
    ``[c, M]`` bool (the query's own items), ``score(query_rows [n], cand [n]) -> [n]`` the
    matching scores of (query, candidate) pairs.

    The contrastive order is by score, ties pessimistic (a wrong candidate before a true one,
    else by index); NaN wrong scores sort first and NaN true items are never hits, as in
    :func:`recall_at_k`. The top ``k`` of that order are re-sorted by matching score (again
    pessimistic: a wrong candidate tying the best true one is ahead; a NaN matching score on a
    wrong candidate is ahead, on a true one it is not a hit). A query whose true item is not in
    its top ``k`` keeps its contrastive rank (it is ``>= k`` and the re-sorted block does not
    move it), so only queries with a true item in the top ``k`` have their pairs scored.
    ``contrastive_coef > 0`` re-sorts by ``log(score) + contrastive_coef * sims`` instead.
    """
    nan = torch.isnan(sims)
    # contrastive rank, exactly as recall_at_k computes it (both directions in one formula)
    best = sims.masked_fill(~true | nan, float("-inf")).max(dim=1, keepdim=True).values
    rank = (((sims >= best) | nan) & ~true).sum(1)
    rank[(true & ~nan).sum(1) == 0] = _MISS
    need = torch.nonzero(rank < k).flatten()
    if need.numel() == 0:
        return rank
    sims, true, nan = sims[need], true[need], nan[need]
    # the top k in pessimistic contrastive order: wrong before true, then index, then by score
    key = sims.masked_fill(nan & ~true, float("inf")).masked_fill(nan & true, float("-inf"))
    order = torch.sort(true.to(torch.int8), dim=1, stable=True).indices
    order = order.gather(1, torch.sort(key.gather(1, order), dim=1, descending=True, stable=True).indices)
    top = order[:, :k]                                                       # [n, k]
    is_true = true.gather(1, top)
    usable = is_true & ~nan.gather(1, top)                                   # scorable true items
    m = score(query_rows[need].unsqueeze(1).expand_as(top).reshape(-1), top.reshape(-1))
    m = m.to(device=sims.device, dtype=torch.float64).view_as(top)
    if contrastive_coef:
        m = m.clamp_min(1e-30).log() + contrastive_coef * sims.gather(1, top).to(torch.float64)
    m_nan = torch.isnan(m)
    best = m.masked_fill(~usable | m_nan, float("-inf")).max(dim=1, keepdim=True).values
    new_rank = (((m >= best) | m_nan) & ~is_true).sum(1)
    new_rank[(usable & ~m_nan).sum(1) == 0] = _MISS
    rank[need] = new_rank
    return rank


@torch.no_grad()
def rerank_recall_at_k(text_emb: Tensor, image_emb: Tensor, caption_image: Tensor, score_pairs: PairScorer,
                       rerank: int, ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 1024,
                       contrastive_coef: float = 0.0) -> dict:
    """Recall@K (both directions) after re-ranking each query's top ``rerank`` candidates.

    Args:
        text_emb, image_emb, caption_image, ks, chunk_size: as in :func:`recall_at_k`.
        score_pairs: ``score_pairs(text_rows, image_rows) -> [M]`` matching scores for the pairs
            (row ``t`` of ``text_emb``, row ``i`` of ``image_emb``), higher = more likely matched;
            e.g. :func:`matching_scorer`. Called once per chunk and direction with every pair
            that needs a score (text->image: for each caption its top ``rerank`` images;
            image->text: for each image its top ``rerank`` captions).
        rerank: K >= 1, the number of top contrastive candidates to re-score.
        contrastive_coef: 0 (default): the K are ordered by matching score alone; ``c > 0``: by
            ``log(score) + c * (text_emb . image_emb)`` (``score`` a probability; ``c`` = weight
            x the model's logit scale for the product-of-experts form in the module docstring).

    For each query the final ranking is its top-K candidates by contrastive score, ordered by
    matching score, then the other candidates in contrastive order; ranks and ties are defined
    as in :func:`recall_at_k` (pessimistic; for image->text the best-ranked own caption counts).
    Queries whose true item is outside the top K keep their contrastive rank, which the
    matching scores cannot change, so their pairs are not scored.
    """
    ks = _check_ks(ks)
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 1:
        raise ValueError(f"rerank must be a positive integer, got {rerank!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not (isinstance(contrastive_coef, (int, float)) and math.isfinite(contrastive_coef) and contrastive_coef >= 0):
        raise ValueError(f"contrastive_coef must be a finite number >= 0, got {contrastive_coef!r}")
    if text_emb.dim() != 2 or image_emb.dim() != 2 or text_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"text_emb and image_emb must be [T, D] and [N, D], got shapes "
                         f"{tuple(text_emb.shape)} and {tuple(image_emb.shape)}")
    T, N = text_emb.shape[0], image_emb.shape[0]
    if T == 0 or N == 0:
        raise ValueError(f"need at least one caption and one image, got T={T}, N={N}")
    device = text_emb.device
    caption_image = torch.as_tensor(caption_image)
    if caption_image.shape != (T,) or caption_image.dtype.is_floating_point or caption_image.dtype == torch.bool:
        raise ValueError(f"caption_image must be an integer tensor of shape [{T}], got "
                         f"{caption_image.dtype} {tuple(caption_image.shape)}")
    caption_image = caption_image.to(device=device, dtype=torch.long)
    if int(caption_image.min()) < 0 or int(caption_image.max()) >= N:
        raise ValueError(f"caption_image values must be in [0, {N})")
    if bool((torch.bincount(caption_image, minlength=N) == 0).any()):
        raise ValueError("some image has no caption; leave it out of image_emb")
    dtype = text_emb.dtype if text_emb.dtype in (torch.float32, torch.float64) else torch.float32
    text_emb = _poison_nonfinite_rows(text_emb.to(dtype), "text")
    image_emb = _poison_nonfinite_rows(image_emb.to(device=device, dtype=dtype), "image")

    t2i_rank = torch.empty(T, dtype=torch.long, device=device)
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        sims = text_emb[start:end] @ image_emb.T                                     # [c, N]
        true = caption_image[start:end].unsqueeze(1) == torch.arange(N, device=device)
        t2i_rank[start:end] = _reranked_ranks(sims, true, min(rerank, N), score_pairs,
                                              torch.arange(start, end, device=device), contrastive_coef)
    i2t_rank = torch.empty(N, dtype=torch.long, device=device)
    for start in range(0, N, chunk_size):
        end = min(start + chunk_size, N)
        sims = image_emb[start:end] @ text_emb.T                                     # [c, T]
        true = caption_image.unsqueeze(0) == torch.arange(start, end, device=device).unsqueeze(1)
        i2t_rank[start:end] = _reranked_ranks(sims, true, min(rerank, T), lambda img, txt: score_pairs(txt, img),
                                              torch.arange(start, end, device=device), contrastive_coef)

    def recalls(rank: Tensor) -> dict:
        return {f"r{k}": float((rank < k).double().mean()) for k in ks}

    return {"i2t": recalls(i2t_rank), "t2i": recalls(t2i_rank)}


class _ModelMatchingScorer:
    """P(matched) from the model's fusion encoder + ``itm_head``; see :func:`matching_scorer`."""

    def __init__(self, model, texts: List[str], image_tokens: Tensor, image_rows: Sequence[int],
                 lang: Optional[str], batch_size: int, progress: bool):
        self.model, self.texts, self.image_tokens = model, list(texts), image_tokens
        self.image_rows = torch.as_tensor(list(image_rows), dtype=torch.long, device=image_tokens.device)
        self.batch_size, self.progress, self.lang_code = batch_size, progress, lang
        self.device = next(model.parameters()).device
        lang_ids = getattr(model, "lang_to_id", {}) or {}
        self.lang = torch.tensor(lang_ids[lang], device=self.device) if lang in lang_ids else None

    @torch.no_grad()
    def __call__(self, text_rows: Tensor, image_rows: Tensor) -> Tensor:
        text_rows, image_rows = text_rows.long().cpu(), image_rows.long().cpu()
        n = text_rows.numel()
        out = torch.empty(n, dtype=torch.float32)
        if n == 0:
            return out
        # sorted by text: a batch holds few distinct captions, each run through the text tower once
        order = torch.argsort(text_rows * (int(image_rows.max()) + 1) + image_rows, stable=True)
        bar = progress_bar(range(0, n, self.batch_size), self.progress, desc=f"rerank [{self.lang_code}]",
                           total=math.ceil(n / self.batch_size), unit="batch", leave=False)
        for start in bar:
            sel = order[start:start + self.batch_size]
            uniq, inv = torch.unique(text_rows[sel], return_inverse=True)
            tok = self.model.tokenize([self.texts[t] for t in uniq.tolist()])
            ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
            tokens = self.model.text(ids, mask, lang=self.lang)["text_tokens"]
            inv = inv.to(self.device)
            ctx = self.image_tokens[self.image_rows[image_rows[sel].to(self.image_rows.device)]].to(self.device)
            fused = self.model.fuse(tokens[inv], mask[inv], ctx, None, context_type="image")
            out[sel] = self.model.itm_head(fused[:, 0]).float().softmax(dim=-1)[:, 1].cpu()
        return out


def matching_scorer(model, texts: List[str], image_tokens: Tensor, image_rows: Sequence[int],
                    lang: Optional[str] = None, batch_size: int = 64, progress: bool = False) -> PairScorer:
    """A ``score_pairs`` for :func:`rerank_recall_at_k` from a model with a fusion encoder.

    ``score_pairs(text_rows, image_rows)[m]`` is P(matched) = softmax of
    ``model.itm_head(model.fuse(text tokens of texts[text_rows[m]], image tokens)[:, 0])`` at
    class 1, with the image tokens ``image_tokens[image_rows[image_rows_m]]`` (``image_tokens``:
    the cached patch tokens of all evaluated images, ``image_rows``: local candidate -> row).
    Pairs are processed ``batch_size`` at a time, sorted by text so each caption's token states
    are computed once per batch; ``lang`` routes language-specific text modules. Call it under
    ``model.eval()``.
    """
    if getattr(model, "fusion", None) is None or getattr(model, "itm_head", None) is None:
        raise ValueError("re-ranking needs a model with a fusion encoder and matching head "
                         "(model.fusion.layers > 0)")
    return _ModelMatchingScorer(model, texts, image_tokens, image_rows, lang, batch_size, progress)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
# the captions-schema reader lives with the data code; re-exported here as part of this API
load_records = read_caption_jsonl


# --------------------------------------------------------------------------------------------
# End-to-end evaluation
# --------------------------------------------------------------------------------------------
def _collect(records: list, languages, include_machine_translation: bool, skips: SkipCounter):
    """Filter records/captions. Returns ``[(image_id, path, [(lang, text), ...]), ...]``."""
    wanted = None
    if languages is not None:
        wanted = {languages} if isinstance(languages, str) else set(languages)
    seen_ids = set()
    out = []
    for n, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) \
                or not rec["image"] or not isinstance(rec.get("captions"), list):
            skips.skip("bad_record", f"record #{n}")
            continue
        image_id = str(rec.get("image_id", rec["image"]))
        if image_id in seen_ids:
            skips.skip("duplicate_image_id", image_id)
            continue
        seen_ids.add(image_id)
        caps = []
        for cap in rec["captions"]:
            if not isinstance(cap, dict) or not isinstance(cap.get("lang"), str) or not cap["lang"]:
                skips.skip("bad_caption", f"{image_id}: {cap!r:.80}")
                continue
            lang = cap["lang"]
            if wanted is not None and lang not in wanted:
                continue
            if cap.get("kind") == MACHINE_TRANSLATION and not include_machine_translation:
                continue
            text = cap.get("text")
            if not isinstance(text, str) or not text.strip():
                skips.skip("empty_caption", f"{image_id} [{lang}]")
                continue
            caps.append((lang, text))
        if caps:  # images without a usable caption are neither queries nor candidates
            out.append((image_id, rec["image"], caps))
    return out


@torch.no_grad()
def _encode_images(model, items: list, image_root: str, batch_size: int, device,
                   skips: SkipCounter, progress: bool):
    """Load, preprocess and encode images; returns (kept item indices, [n_kept, D] CPU tensor)."""
    kept, embs = [], []
    bar = progress_bar(range(0, len(items), batch_size), progress, desc="images",
                    total=math.ceil(len(items) / batch_size), unit="batch")
    for start in bar:
        pixels, idx = [], []
        for i in range(start, min(start + batch_size, len(items))):
            image_id, rel, _ = items[i]
            path = os.path.join(image_root, rel)
            img = load_image(path, skips)  # counts + logs missing_image / bad_image
            if img is None:
                continue
            try:
                pixels.append(model.preprocess(img))
            except Exception as e:  # a corrupt/degenerate image must not end a long eval
                skips.skip("bad_image", f"{path}: preprocess failed: {e!r}")
                continue
            idx.append(i)
        if not pixels:
            continue
        emb = model.encode_image(torch.stack(pixels).to(device), normalize=True)
        embs.append(emb.detach().float().cpu())
        kept.extend(idx)
    if not embs:
        return kept, None
    return kept, torch.cat(embs)


@torch.no_grad()
def _encode_texts(model, texts: list, batch_size: int, device, progress: bool, desc: str,
                  lang: Optional[str] = None) -> Tensor:
    embs = []
    bar = progress_bar(batches(texts, batch_size), progress, desc=desc,
                    total=math.ceil(len(texts) / batch_size), unit="batch")
    for batch in bar:
        tok = model.tokenize(list(batch))
        emb = model.encode_text(input_ids=tok["input_ids"].to(device),
                                attention_mask=tok["attention_mask"].to(device), normalize=True,
                                **lang_kwargs(model, lang))
        embs.append(emb.detach().float())
    return torch.cat(embs)


@torch.no_grad()
def _encode_image_tokens(model, items: list, kept: list, image_root: str, batch_size: int, device,
                         progress: bool) -> Tensor:
    """Patch tokens ``[len(kept), P, C]`` of the images that loaded (re-ranking only).

    The images are loaded and run through the vision tower a second time rather than keeping the
    first pass's tokens, so the plain (``rerank=0``) path is untouched (the extra pass is small next
    to scoring ``K`` fused pairs per query). The result stays on ``device`` for the whole
    evaluation: ``len(kept) * P * C`` floats, e.g. 1000 ViT-B/16 images at 224 px are
    1000 x 196 x 768 x 4 B = 0.6 GB; far larger sets would want a per-chunk recomputation instead.
    """
    out = []
    bar = progress_bar(range(0, len(kept), batch_size), progress, desc="image tokens",
                       total=math.ceil(len(kept) / batch_size), unit="batch")
    for start in bar:
        pixels = []
        for i in kept[start:start + batch_size]:
            path = os.path.join(image_root, items[i][1])
            img = load_image(path)
            if img is None:  # it loaded a moment ago: the data changed under the evaluation
                raise ValueError(f"image {path} could not be re-read for re-ranking")
            pixels.append(model.preprocess(img))
        out.append(model.vision(torch.stack(pixels).to(device))["image_tokens"])
    return torch.cat(out)


def evaluate_retrieval(model, records: list, image_root: str, batch_size: int = 64,
                       languages=None, include_machine_translation: bool = False,
                       chunk_size: int = 1024, progress: bool = True, rerank: int = 0,
                       rerank_contrastive: float = 0.0) -> dict:
    """Per-language Recall@{1,5,10} in both directions (see the module docstring for the output).

    Args:
        model: provides ``preprocess(pil) -> [3,H,W]``, ``tokenize(list[str]) -> {"input_ids",
            "attention_mask"}``, ``encode_image(pixels, normalize=True)``,
            ``encode_text(input_ids=, attention_mask=, normalize=True)`` and ``parameters()``.
        records: as returned by :func:`load_records`.
        image_root: directory the records' ``"image"`` paths are relative to (absolute paths
            are used as they are; ``None`` or ``""`` means the current directory).
        batch_size: images / captions per forward pass.
        languages: restrict to these language codes (default: every language in the data).
            A requested language without captions is left out with a warning.
        include_machine_translation: also use captions of kind ``machine_translation``
            (left out by default; leaving them out is a filter, not a skip, so not counted).
        chunk_size: rows per similarity chunk, see :func:`recall_at_k`.
        progress: show tqdm progress bars.
        rerank: K > 0 re-scores each query's top K contrastive candidates with the matching head
            (see :func:`rerank_recall_at_k` / :func:`matching_scorer`; the model needs a fusion
            encoder, else ``ValueError`` before anything is loaded) and adds ``"rerank": K`` to the
            result. The patch tokens of all evaluated images are kept in memory for it (see
            :func:`_encode_image_tokens`); each caption is re-encoded by the text tower when its
            pairs are scored. 0 (default): contrastive ranking only, the result has no
            ``"rerank"`` key.
        rerank_contrastive: weight ``w`` of the contrastive logit in the re-ranking score
            (``log P(matched) + w * logit_scale * cosine``; 0: matching score alone); reported as
            ``"rerank_contrastive"`` when > 0.

    Each image is loaded and encoded once (only images with at least one usable caption), each
    distinct caption text once per language. The model is put in eval mode under
    ``torch.no_grad`` and its previous train/eval mode is restored afterwards.

    Skips never crash the run; they are logged and counted in ``n_skipped``: ``missing_image``
    / ``bad_image`` (the image with all its captions), ``empty_caption`` (empty or whitespace
    text), and, for malformed input, ``bad_record``, ``bad_caption``, ``duplicate_image_id``.
    ``ValueError`` when nothing is left to evaluate (e.g. every image failed to load).
    Tie handling is pessimistic, see :func:`recall_at_k`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be an integer >= 0, got {rerank!r}")
    if not (isinstance(rerank_contrastive, (int, float)) and math.isfinite(rerank_contrastive)
            and rerank_contrastive >= 0):
        raise ValueError(f"rerank_contrastive must be a finite number >= 0, got {rerank_contrastive!r}")
    if rerank_contrastive and not rerank:
        raise ValueError("rerank_contrastive weighs the contrastive score in re-ranking: set rerank K > 0 too")
    if rerank and (getattr(model, "fusion", None) is None or getattr(model, "itm_head", None) is None):
        raise ValueError(f"rerank={rerank} needs a model with a fusion encoder and matching head "
                         "(model.fusion.layers > 0); this model is a dual encoder: use rerank=0")
    image_root = "" if image_root is None else os.fspath(image_root)
    skips = SkipCounter("retrieval eval")
    items = _collect(records, languages, include_machine_translation, skips)
    if not items:
        raise ValueError(f"no usable captions in {len(records)} records (languages={languages}, "
                         f"include_machine_translation={include_machine_translation}); "
                         f"skipped: {skips.as_dict()}")

    device = next(model.parameters()).device
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        kept, image_emb = _encode_images(model, items, image_root, batch_size, device, skips,
                                         progress)
        if image_emb is None:
            raise ValueError(f"none of the {len(items)} images could be loaded from "
                             f"{image_root or os.getcwd()!r}; skipped: {skips.as_dict()}")
        image_emb = image_emb.to(device)
        image_tokens, coef = None, 0.0
        if rerank:
            if rerank_contrastive:
                coef = float(rerank_contrastive * model.get_logit_scale().detach())
            image_tokens = _encode_image_tokens(model, items, kept, image_root, batch_size, device, progress)

        # captions per language, over the images that loaded: image_pos = row in image_emb
        by_lang: dict = {}
        for image_pos, item_idx in enumerate(kept):
            for lang, text in items[item_idx][2]:
                by_lang.setdefault(lang, []).append((image_pos, text))
        if languages is not None:
            wanted = [languages] if isinstance(languages, str) else list(languages)
            for lang in wanted:
                if lang not in by_lang:
                    logger.warning("retrieval eval: no usable captions for language %r", lang)

        per_language = {}
        for lang in sorted(by_lang):
            pairs = by_lang[lang]
            # candidates: the images with at least one caption in this language
            cand = sorted({pos for pos, _ in pairs})
            local = {pos: j for j, pos in enumerate(cand)}
            caption_image = torch.tensor([local[pos] for pos, _ in pairs], dtype=torch.long)
            # encode each distinct text once
            uniq = list(dict.fromkeys(text for _, text in pairs))
            uniq_emb = _encode_texts(model, uniq, batch_size, device, progress, f"text [{lang}]", lang=lang)
            row = {t: j for j, t in enumerate(uniq)}
            text_emb = uniq_emb[torch.tensor([row[t] for _, t in pairs], device=uniq_emb.device)]
            del uniq_emb
            cand_emb = image_emb[torch.tensor(cand, device=image_emb.device)]
            if rerank:
                scorer = matching_scorer(model, [t for _, t in pairs], image_tokens, cand, lang=lang,
                                         batch_size=batch_size, progress=progress)
                rec = rerank_recall_at_k(text_emb, cand_emb, caption_image, scorer, rerank,
                                         ks=DEFAULT_KS, chunk_size=chunk_size, contrastive_coef=coef)
            else:
                rec = recall_at_k(text_emb, cand_emb, caption_image, ks=DEFAULT_KS,
                                  chunk_size=chunk_size)
            del text_emb, cand_emb
            rec["mean_recall"] = mean(list(rec["i2t"].values()) + list(rec["t2i"].values()))
            rec["n_images"] = len(cand)
            rec["n_captions"] = len(pairs)
            per_language[lang] = rec
            logger.info("retrieval [%s]: %d images, %d captions, mean recall %.4f",
                        lang, len(cand), len(pairs), rec["mean_recall"])
    finally:
        model.train(was_training)

    langs = list(per_language)
    average = {
        d: {f"r{k}": mean(per_language[l][d][f"r{k}"] for l in langs) for k in DEFAULT_KS}
        for d in ("i2t", "t2i")
    }
    average["mean_recall"] = mean(per_language[l]["mean_recall"] for l in langs)
    if skips.total:
        logger.warning("retrieval eval: skipped %s", skips.as_dict())
    result = {"per_language": per_language, "average": average, "n_skipped": skips.as_dict()}
    if rerank:
        result["rerank"] = rerank
    if rerank_contrastive:
        result["rerank_contrastive"] = float(rerank_contrastive)
    return result


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------
def format_retrieval_table(result: dict) -> str:
    """Plain-text table of an :func:`evaluate_retrieval` result; recalls shown in percent.

    Columns: lang, n_img, n_cap, i2t R@1/5/10, t2i R@1/5/10, mean recall; one row per language
    (sorted), last row ``avg`` (the unweighted mean over languages; counts shown as ``-``).
    """
    ks = DEFAULT_KS
    header = (["lang", "n_img", "n_cap"] + [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks]
              + ["mean R"])

    def cells(name: str, r: dict, n_img, n_cap) -> list:
        return ([name, str(n_img), str(n_cap)]
                + [pct(r.get("i2t", {}).get(f"r{k}")) for k in ks]
                + [pct(r.get("t2i", {}).get(f"r{k}")) for k in ks]
                + [pct(r.get("mean_recall"))])

    rows = [cells(lang, r, r.get("n_images", "-"), r.get("n_captions", "-"))
            for lang, r in sorted(result.get("per_language", {}).items())]
    rows.append(cells("avg", result.get("average", {}), "-", "-"))
    return render_table(header, rows)
