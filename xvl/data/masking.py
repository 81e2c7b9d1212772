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

Position ids follow the RoBERTa/XLM-R convention: real tokens are numbered from
``padding_idx + 1`` (HF's ``create_position_ids_from_input_ids``), padding gets ``padding_idx``.
Language embeddings reuse the token-type embedding table, so the text model needs
``type_vocab_size >= number of languages`` (XLM-R's default is 1); pass the text model's HF config
to :func:`add_mlm_inputs` (``text_config=``) to have that checked up front.

Randomness comes only from an explicit ``torch.Generator`` (CPU or on the data's device), so a
collator seeded per (seed, epoch, step) masks reproducibly.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

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
