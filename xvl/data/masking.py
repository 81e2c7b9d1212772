"""Masked-language-model inputs: BERT 80/10/10 masking, XLM/InfoXLM TLM pair concatenation.

* :func:`mask_tokens` — pick ~``mlm_probability`` of the real (non-special, non-padding) tokens of
  each row; of those 80% become ``<mask>``, 10% a random non-special token, 10% stay unchanged.
  ``labels`` hold the original id there and ``-100`` (ignored by cross-entropy) elsewhere. Every row
  with at least one maskable token gets at least one selected position, so the loss is never NaN.
* :func:`build_tlm_inputs` — translation language modeling (XLM): each sentence is concatenated
  with its translation (padding dropped in between, each side keeping the special tokens the
  tokenizer gave it: ``<s> A </s><s> B </s>``), positions optionally restarting for the second
  sentence, token types optionally carrying language ids (XLM's language embeddings).
* :func:`add_mlm_inputs` — adds ``mlm_input_ids`` / ``mlm_attention_mask`` / ``mlm_labels`` (and
  for TLM ``mlm_position_ids`` / ``mlm_token_type_ids`` / ``mlm_segment``) to a collated batch;
  :class:`xvl.models.model.XVLModel` turns those into ``mlm_tokens`` for the ``mlm``/``tlm``
  objectives.
* :func:`mask_spans` — CCLM's caption masking: an exact per-row budget of positions (expected
  fraction = the masking probability) in contiguous spans (:func:`span_selection`), then 80/10/10
  (:func:`replace_selected`); :func:`co_mask_selection` — UC2's co-masking of aligned word pairs
  in a concatenated sentence pair (both words or neither).

Position ids follow the RoBERTa/XLM-R convention: real tokens are numbered from
``padding_idx + 1`` (HF's ``create_position_ids_from_input_ids``), padding gets ``padding_idx``.
Language embeddings reuse the token-type embedding table, so the text model needs
``type_vocab_size >= number of languages`` (XLM-R's default is 1); pass the text model's HF config
to :func:`add_mlm_inputs` (``text_config=``) to have that checked up front.

Randomness comes only from an explicit ``torch.Generator`` (CPU or on the data's device), so a
collator seeded per (seed, epoch, step) masks reproducibly.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

IGNORE_INDEX = -100
MODES = ("mmlm", "tlm")


def _special_ids(tokenizer, special_ids: Optional[Iterable[int]]) -> list:
    if special_ids is None:
        special_ids = list(getattr(tokenizer, "all_special_ids", []) or [])
        if tokenizer.pad_token_id is not None:
            special_ids.append(tokenizer.pad_token_id)
    return sorted({int(i) for i in special_ids})


def _rand_device(generator: Optional[torch.Generator], like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                mlm_probability: float = 0.15, generator: Optional[torch.Generator] = None,
                special_ids: Optional[Iterable[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of ``input_ids`` [B,L]; returns ``(masked_ids, labels)`` (new tensors).

    Args:
        input_ids, attention_mask: [B,L]; positions with ``attention_mask == 0`` are never selected.
        tokenizer: needs ``mask_token_id`` and ``len(tokenizer)`` (random replacements are drawn
            uniformly from the ids ``0..len(tokenizer)-1`` that are not special).
        mlm_probability: chance of selecting each maskable token.
        generator: a ``torch.Generator`` for reproducible masks (default: the global RNG).
        special_ids: ids never selected (default: ``tokenizer.all_special_ids`` plus the pad id).
    """
    if not 0.0 < mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token: masked language modeling needs one")
    specials = _special_ids(tokenizer, special_ids)
    device = input_ids.device
    rdev = _rand_device(generator, input_ids)

    maskable = attention_mask.bool().clone()
    if specials:
        maskable &= ~torch.isin(input_ids, torch.tensor(specials, device=device))

    shape = input_ids.shape
    u = torch.rand(shape, generator=generator, device=rdev).to(device)
    selected = (u < mlm_probability) & maskable
    # at least one selected position per row that has anything to mask: the maskable position
    # with the smallest draw (uniform among the row's maskable tokens)
    empty = ~selected.any(dim=1) & maskable.any(dim=1)
    if empty.any():
        best = u.masked_fill(~maskable, 2.0).argmin(dim=1)
        rows = empty.nonzero(as_tuple=True)[0]
        selected[rows, best[rows]] = True

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    r = torch.rand(shape, generator=generator, device=rdev).to(device)
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)
    masked = input_ids.clone()
    masked[to_mask] = tokenizer.mask_token_id

    vocab = torch.arange(len(tokenizer), device=rdev)
    if specials:
        vocab = vocab[~torch.isin(vocab, torch.tensor(specials, device=rdev))]
    if len(vocab) == 0:
        raise ValueError("the tokenizer has no non-special tokens to draw random replacements from")
    pick = torch.randint(len(vocab), shape, generator=generator, device=rdev)
    random_ids = vocab[pick].to(device=device, dtype=input_ids.dtype)
    masked[to_random] = random_ids[to_random]
    return masked, labels


def build_tlm_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     pair_input_ids: torch.Tensor, pair_attention_mask: torch.Tensor,
                     lang: Optional[torch.Tensor] = None, pair_lang: Optional[torch.Tensor] = None,
                     restart_positions: bool = True, padding_idx: int = 1) -> Dict[str, torch.Tensor]:
    """Concatenate each sentence with its translation into one right-padded sequence.

    Row i is ``A_i`` (its attended tokens, specials included, in order) followed by ``B_i``;
    padding only at the end (the pad id is ``padding_idx``). Returns:

    * ``mlm_input_ids``, ``mlm_attention_mask`` [B, max_i(len A_i + len B_i)]
    * ``mlm_position_ids``: ``padding_idx + 1 + k`` for the k-th token of each side when
      ``restart_positions`` (XLM: the translation's positions restart), else numbered straight
      through; ``padding_idx`` at padding (RoBERTa/XLM-R convention, as HF computes them itself)
    * ``mlm_token_type_ids`` (only when ``lang`` and ``pair_lang`` [B] are given): the language id
      of each token (``lang[i]`` on A, ``pair_lang[i]`` on B, 0 at padding) — XLM's language
      embeddings through the token-type table, which needs ``type_vocab_size >= #languages``
    * ``segment`` (bool): True on the tokens of the second sentence
    """
    if (lang is None) != (pair_lang is None):
        raise ValueError("build_tlm_inputs: give both lang and pair_lang, or neither")
    if input_ids.shape[0] != pair_input_ids.shape[0]:
        raise ValueError(f"build_tlm_inputs: {input_ids.shape[0]} sentences but "
                         f"{pair_input_ids.shape[0]} translations")
    device = input_ids.device
    am, pm = attention_mask.bool(), pair_attention_mask.bool()
    la, lb = am.sum(1), pm.sum(1)
    total = la + lb
    bsz, length = input_ids.shape[0], int(total.max()) if input_ids.shape[0] else 0

    ids = torch.full((bsz, length), padding_idx, dtype=input_ids.dtype, device=device)
    mask = torch.zeros((bsz, length), dtype=attention_mask.dtype, device=device)
    pos = torch.full((bsz, length), padding_idx, dtype=torch.long, device=device)
    seg = torch.zeros((bsz, length), dtype=torch.bool, device=device)
    types = torch.zeros((bsz, length), dtype=torch.long, device=device) if lang is not None else None
    for i in range(bsz):
        a, b = input_ids[i][am[i]], pair_input_ids[i][pm[i]]
        na, nb = a.numel(), b.numel()
        ids[i, :na], ids[i, na:na + nb] = a, b
        mask[i, :na + nb] = 1
        seg[i, na:na + nb] = True
        if restart_positions:
            pos[i, :na] = padding_idx + 1 + torch.arange(na, device=device)
            pos[i, na:na + nb] = padding_idx + 1 + torch.arange(nb, device=device)
        else:
            pos[i, :na + nb] = padding_idx + 1 + torch.arange(na + nb, device=device)
        if types is not None:
            types[i, :na], types[i, na:na + nb] = lang[i], pair_lang[i]
    out = {"mlm_input_ids": ids, "mlm_attention_mask": mask, "mlm_position_ids": pos, "segment": seg}
    if types is not None:
        out["mlm_token_type_ids"] = types
    return out


def check_text_config(text_config, position_ids: Optional[torch.Tensor] = None,
                      token_type_ids: Optional[torch.Tensor] = None) -> None:
    """Clear errors when ids would index past the text model's position / token-type tables."""
    if text_config is None:
        return
    if token_type_ids is not None and token_type_ids.numel():
        tv = int(getattr(text_config, "type_vocab_size", 1))
        need = int(token_type_ids.max()) + 1
        if need > tv:
            raise ValueError(
                f"language embeddings need language id {need - 1} in the token-type table, but the "
                f"text model has type_vocab_size={tv}; set model.text.config.type_vocab_size to at "
                f"least the number of model.languages, or turn language_embeddings off")
    if position_ids is not None and position_ids.numel():
        mp = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        if mp and int(position_ids.max()) >= mp:
            raise ValueError(
                f"position id {int(position_ids.max())} is past the text model's "
                f"max_position_embeddings={mp}; use restart_positions=True for TLM, shorter "
                f"sentences, or a larger max_position_embeddings")


def add_mlm_inputs(batch: Dict, tokenizer, mode: str = "mmlm", mlm_probability: float = 0.15,
                   generator: Optional[torch.Generator] = None, restart_positions: bool = True,
                   language_embeddings: bool = False, text_config=None) -> Dict:
    """Add masked-LM inputs to a collated ``batch`` (in place; the batch is also returned).

    ``mode="mmlm"`` (monolingual MLM): masks ``input_ids``; adds ``mlm_input_ids``,
    ``mlm_attention_mask``, ``mlm_labels``, and ``mlm_lang`` when the batch has ``lang``.
    ``mode="tlm"`` (translation LM): concatenates ``input_ids`` with ``pair_input_ids`` (see
    :func:`build_tlm_inputs`) and masks tokens of both sentences; adds also ``mlm_position_ids``
    and ``mlm_segment``. With ``language_embeddings`` the per-token language ids (from ``lang`` /
    ``pair_lang``) go to ``mlm_token_type_ids`` (the text model needs ``type_vocab_size >=``
    number of languages; checked when ``text_config`` — the text model's HF config — is given).
    """
    if mode not in MODES:
        raise ValueError(f"unknown masking mode '{mode}' (known: {', '.join(MODES)})")
    if language_embeddings and "lang" not in batch:
        raise ValueError("language_embeddings needs the batch's 'lang' ids")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1
    if mode == "mmlm":
        ids, am = batch["input_ids"], batch["attention_mask"]
        extra: Dict[str, torch.Tensor] = {}
        if "lang" in batch:
            extra["mlm_lang"] = batch["lang"]
        if language_embeddings:
            lang = torch.as_tensor(batch["lang"], device=ids.device)
            extra["mlm_token_type_ids"] = lang[:, None].expand_as(ids) * am.long()
    else:
        for key in ("pair_input_ids", "pair_attention_mask"):
            if key not in batch:
                raise ValueError(f"TLM needs translation pairs: the batch has no '{key}'")
        lang = pair_lang = None
        if language_embeddings:
            if "pair_lang" not in batch:
                raise ValueError("language_embeddings with TLM needs the batch's 'pair_lang' ids")
            lang, pair_lang = batch["lang"], batch["pair_lang"]
        t = build_tlm_inputs(batch["input_ids"], batch["attention_mask"], batch["pair_input_ids"],
                             batch["pair_attention_mask"], lang=lang, pair_lang=pair_lang,
                             restart_positions=restart_positions, padding_idx=pad)
        ids, am = t["mlm_input_ids"], t["mlm_attention_mask"]
        extra = {"mlm_position_ids": t["mlm_position_ids"], "mlm_segment": t["segment"]}
        if "mlm_token_type_ids" in t:
            extra["mlm_token_type_ids"] = t["mlm_token_type_ids"]
    check_text_config(text_config, extra.get("mlm_position_ids"), extra.get("mlm_token_type_ids"))
    masked, labels = mask_tokens(ids, am, tokenizer, mlm_probability=mlm_probability, generator=generator)
    batch.update({"mlm_input_ids": masked, "mlm_attention_mask": am, "mlm_labels": labels, **extra})
    return batch


def mask_patch_blocks(batch_size: int, grid_size: Tuple[int, int], mask_ratio: float = 0.3,
                      block_size: int = 2, generator: Optional[torch.Generator] = None,
                      device=None) -> torch.Tensor:
    """Random square blocks of image patches to mask (MRTM, :mod:`xvl.objectives.mrtm`).

    The ``gh x gw`` patch grid is tiled into ``block_size x block_size`` blocks aligned at multiples
    of ``block_size`` (the last row / column of blocks is cut short when the grid is not divisible).
    Each row of the batch masks the blocks taken in a random order, as many as bring the number of
    masked patches closest to ``mask_ratio * gh * gw`` (at least one block). Returns a bool tensor
    ``[batch_size, gh * gw]`` in row-major patch order (timm's token order), True = masked.
    Randomness comes only from ``generator`` (default: the global RNG).
    """
    gh, gw = (int(v) for v in grid_size)
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if gh < 1 or gw < 1:
        raise ValueError(f"grid_size must be positive, got {tuple(grid_size)}")
    rdev = generator.device if generator is not None else torch.device("cpu")
    nbw = -(-gw // block_size)
    block_of = ((torch.arange(gh, device=rdev) // block_size)[:, None] * nbw
                + (torch.arange(gw, device=rdev) // block_size)[None, :]).flatten()  # [N] block id
    sizes = torch.bincount(block_of)  # patches per block (edge blocks may be smaller)
    order = torch.rand(batch_size, sizes.numel(), generator=generator, device=rdev).argsort(dim=1)
    covered = sizes[order].cumsum(dim=1)  # patches masked after taking the first k+1 blocks
    last = (covered - mask_ratio * gh * gw).abs().argmin(dim=1)  # ties: fewer blocks
    chosen = order.argsort(dim=1) <= last[:, None]  # [B, n_blocks]: rank within the order <= last
    mask = chosen.gather(1, block_of.expand(batch_size, -1))
    return mask.to(device) if device is not None else mask


# ---------------------------------------------------------------------------------------------
# Span masking (CCLM's conditional MLM) and co-masking of aligned words (UC2's VTLM)
# ---------------------------------------------------------------------------------------------
# Both select an exact per-row *budget* of positions rather than flipping a coin per position: a
# row with ``n`` maskable tokens masks ``K = floor(p * n + u)`` of them, ``u ~ U[0, 1)`` (stochastic
# rounding, so ``E[K] = p * n`` exactly), at least one and at most ``n``. Spans are then placed
# until the budget is used up, the last one cut short if needed, so overlapping or clipped spans
# never change the masked fraction (placing independent span starts at rate ``p / E[length]``
# would under-shoot by the overlaps and at the sentence ends). This is CCLM's / X-VLM's
# ``TextMaskingGenerator`` scheme (``n_pred = round(len * mask_prob)`` positions, visited in random
# order, each starting a 2..3-token "skipgram" with probability ``skipgram_prb``).


def maskable_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer=None,
                       special_ids: Optional[Iterable[int]] = None) -> torch.Tensor:
    """Bool [B,L]: attended positions holding no special token (``special_ids``, default the
    tokenizer's special ids and pad), the only ones masking may select."""
    specials = _special_ids(tokenizer, special_ids)
    maskable = attention_mask.bool().clone()
    if specials:
        maskable &= ~torch.isin(input_ids, torch.tensor(specials, device=input_ids.device))
    return maskable


def _budgets(n: torch.Tensor, probability: float, u: torch.Tensor) -> list:
    """Per-row counts ``clamp(floor(p * n + u), 1, n)`` (0 where ``n == 0``); ``u`` ~ U[0,1) [B]."""
    k = torch.floor(probability * n.double() + u.double()).long()
    k = torch.minimum(k.clamp_min(1), n)
    return k.tolist()


def replace_selected(input_ids: torch.Tensor, selected: torch.Tensor, tokenizer,
                     generator: Optional[torch.Generator] = None,
                     special_ids: Optional[Iterable[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of the ``selected`` positions (bool [B,L]) of ``input_ids``.

    Of the selected positions 80% become ``<mask>``, 10% a random non-special id (uniform over
    ``0..len(tokenizer)-1`` minus ``special_ids``), 10% keep their token. Returns new tensors
    ``(masked_ids, labels)``; ``labels`` hold the original id at the selected positions and -100
    elsewhere. The same corruption as :func:`mask_tokens`, for selections made by other rules.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token: masked language modeling needs one")
    specials = _special_ids(tokenizer, special_ids)
    device, rdev, shape = input_ids.device, _rand_device(generator, input_ids), input_ids.shape
    selected = selected.to(device=device, dtype=torch.bool)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    r = torch.rand(shape, generator=generator, device=rdev).to(device)
    masked = input_ids.clone()
    masked[selected & (r < 0.8)] = tokenizer.mask_token_id
    vocab = torch.arange(len(tokenizer), device=rdev)
    if specials:
        vocab = vocab[~torch.isin(vocab, torch.tensor(specials, device=rdev))]
    if len(vocab) == 0:
        raise ValueError("the tokenizer has no non-special tokens to draw random replacements from")
    random_ids = vocab[torch.randint(len(vocab), shape, generator=generator, device=rdev)]
    to_random = selected & (r >= 0.8) & (r < 0.9)
    masked[to_random] = random_ids.to(device=device, dtype=input_ids.dtype)[to_random]
    return masked, labels


def span_selection(maskable: torch.Tensor, mask_probability: float, span_probability: float = 0.0,
                   span_lengths: Sequence[int] = (2, 3),
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Positions to mask (bool [B,L]) in contiguous spans, exactly the row's budget of them.

    Each row with ``n`` maskable positions (``maskable`` True) gets ``K = clamp(floor(p*n + u), 1,
    n)`` selected positions, ``u ~ U[0,1)`` (so ``E[K] = mask_probability * n``). The maskable
    positions are visited in a random order; an unselected one starts a span whose length is, with
    probability ``span_probability``, drawn uniformly from ``span_lengths``, else 1. A span runs
    right over maskable, not yet selected positions and stops early at a special token, padding,
    an already selected position, or when the budget ``K`` is reached (so the last span of a row
    may be shorter); visiting continues until ``K`` positions are selected.
    """
    if not 0.0 < mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in (0, 1], got {mask_probability}")
    if not 0.0 <= span_probability <= 1.0:
        raise ValueError(f"span_probability must be in [0, 1], got {span_probability}")
    lengths = [int(x) for x in span_lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"span_lengths must be a non-empty list of lengths >= 1, got {list(span_lengths)}")
    maskable = maskable.bool()
    bsz, length = maskable.shape
    rdev = _rand_device(generator, maskable)
    # all randomness drawn up front, from the generator only (reproducible per batch)
    order = torch.rand(bsz, length, generator=generator, device=rdev).argsort(dim=1).cpu().tolist()
    starts_span = (torch.rand(bsz, length, generator=generator, device=rdev) < span_probability).cpu().tolist()
    pick = torch.randint(len(lengths), (bsz, length), generator=generator, device=rdev).cpu().tolist()
    u = torch.rand(bsz, generator=generator, device=rdev).cpu()
    ok = maskable.cpu()
    budgets = _budgets(ok.sum(1), mask_probability, u)
    ok = ok.tolist()
    selected = [[False] * length for _ in range(bsz)]
    for i in range(bsz):
        k, row_ok, sel, covered = budgets[i], ok[i], selected[i], 0
        for pos in order[i]:
            if covered >= k:
                break
            if not row_ok[pos] or sel[pos]:
                continue
            span = lengths[pick[i][pos]] if starts_span[i][pos] else 1
            for q in range(pos, min(pos + min(span, k - covered), length)):
                if not row_ok[q] or sel[q]:
                    break
                sel[q] = True
                covered += 1
    return torch.tensor(selected, dtype=torch.bool, device=maskable.device)


def mask_spans(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
               mask_probability: float = 0.4, span_probability: float = 0.0,
               span_lengths: Sequence[int] = (2, 3), generator: Optional[torch.Generator] = None,
               special_ids: Optional[Iterable[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """CCLM's caption masking: spans of tokens, then BERT's 80/10/10; returns ``(masked_ids, labels)``.

    The selection is :func:`span_selection` over the attended, non-special tokens (``special_ids``,
    default the tokenizer's special ids and pad: never selected), so the expected masked fraction
    of each row's maskable tokens is ``mask_probability`` (exactly, by the per-row budget; only a
    row with ``mask_probability * n < 1`` masks more, its one guaranteed token). Every row with a
    maskable token masks at least one. ``span_probability = 0`` is token-level masking at an exact
    rate. The corruption is :func:`replace_selected`; ``labels`` are -100 off the selection.
    """
    specials = _special_ids(tokenizer, special_ids)
    selected = span_selection(maskable_positions(input_ids, attention_mask, special_ids=specials), mask_probability,
                              span_probability, span_lengths, generator)
    return replace_selected(input_ids, selected, tokenizer, generator, specials)


def co_mask_selection(maskable: torch.Tensor, word_pairs: Sequence[Sequence[Tuple[Tuple[int, int], Tuple[int, int]]]],
                      mask_probability: float = 0.15, co_mask_probability: float = 0.5,
                      generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """UC2 co-masking on a concatenated sentence pair: aligned words are masked on both sides.

    Args:
        maskable: bool [B,L], positions that may be masked (attended, not special) in the
            concatenation ``[caption ; translation]``.
        word_pairs: per row, aligned words as ``((a0, a1), (b0, b1))`` token spans ``[start, end)``
            in the concatenation's coordinates (one in each sentence).
        mask_probability: the row's budget is ``K = clamp(floor(p * n + u), 1, n)`` of its ``n``
            maskable tokens (``u ~ U[0,1)``; ``E[K] = p * n``).
        co_mask_probability: the share of ``K`` (in tokens, stochastically rounded) spent on
            co-masked word pairs: pairs are taken in a random order and *all* maskable tokens of
            both words are selected, a pair that would overrun ``K`` is skipped, until that share
            is reached or the pairs run out. The rest of the budget goes to ordinary token-level
            masking of the remaining maskable positions (uniformly, without replacement).

    Returns ``(selected, co_masked)``, bool [B,L]; ``co_masked`` marks the positions selected by
    co-masking (a subset of ``selected``). Exactly ``K`` positions per row are selected.
    """
    if not 0.0 < mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in (0, 1], got {mask_probability}")
    if not 0.0 <= co_mask_probability <= 1.0:
        raise ValueError(f"co_mask_probability must be in [0, 1], got {co_mask_probability}")
    maskable = maskable.bool()
    bsz, length = maskable.shape
    if len(word_pairs) != bsz:
        raise ValueError(f"co_mask_selection: {len(word_pairs)} rows of word pairs for a batch of {bsz}")
    rdev = _rand_device(generator, maskable)
    n_pairs = max([len(p) for p in word_pairs] + [0])
    pair_order = torch.rand(bsz, max(n_pairs, 1), generator=generator, device=rdev).argsort(dim=1).cpu().tolist()
    pos_keys = torch.rand(bsz, length, generator=generator, device=rdev).cpu()
    u = torch.rand(bsz, 2, generator=generator, device=rdev).cpu()
    ok = maskable.cpu()
    budgets = _budgets(ok.sum(1), mask_probability, u[:, 0])
    co_budgets = torch.floor(co_mask_probability * torch.tensor(budgets, dtype=torch.float64)
                             + u[:, 1].double()).long().tolist()
    selected = torch.zeros(bsz, length, dtype=torch.bool)
    co = torch.zeros(bsz, length, dtype=torch.bool)
    for i in range(bsz):
        k, covered, row_ok = budgets[i], 0, ok[i]
        pairs = list(word_pairs[i])
        for j in pair_order[i]:
            if covered >= min(co_budgets[i], k):
                break
            if j >= len(pairs):
                continue
            (a0, a1), (b0, b1) = pairs[j]
            side_a = [q for q in range(max(a0, 0), min(a1, length)) if row_ok[q] and not co[i, q]]
            side_b = [q for q in range(max(b0, 0), min(b1, length)) if row_ok[q] and not co[i, q]]
            toks = side_a + side_b
            # both words or neither: a pair with a side that has nothing left to mask is no co-mask
            if not side_a or not side_b or covered + len(toks) > k:
                continue
            co[i, toks] = True
            covered += len(toks)
        rest = k - covered
        if rest > 0:
            keys = pos_keys[i].masked_fill(~row_ok | co[i], 2.0)
            selected[i, keys.argsort()[:rest]] = True
    selected |= co
    return selected.to(maskable.device), co.to(maskable.device)
