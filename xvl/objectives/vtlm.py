"""Visual translation language modeling (UC2): masked LM over [image ; caption ; translation],
with aligned words co-masked in both sentences.

UC2 (Zhou et al. 2021) feeds image regions, a caption and its (machine) translation to one
single-stream transformer and masks tokens of both sentences; its co-masking masks words that are
aligned between the two sentences *together*, so neither sentence can copy the word from the
other and the model has to recover it from the image. Our model has a text tower and a separate
cross-attention fusion encoder instead of a single stream, so VTLM is::

    x~ = mask([caption ; translation])                    TLM concatenation, positions restarting
    h  = fusion( text_tower(x~), image patch tokens )     the image is the cross-attention context
    loss = mean over masked positions of CE( fusion_mlm_head(h), original token )

Both sentences see each other inside the text tower (as in XLM's TLM) and the image through the
fusion encoder's cross-attention, which together play the part of UC2's single stream.

Masking (data loader: :meth:`VTLM.input_preparer` -> :class:`VTLMPreparer`): the concatenation
is :func:`xvl.data.masking.build_tlm_inputs`; each row's budget is ``mask_probability`` of its
non-special tokens (exact per row, stochastically rounded), of which a share ``co_mask_probability``
is spent on aligned word pairs, masked whole and on both sides, the rest on ordinary token-level
masking (:func:`xvl.data.masking.co_mask_selection`), then BERT's 80/10/10
(:func:`xvl.data.masking.replace_selected`). It writes only ``vtlm_*`` keys: ``vtlm_input_ids``,
``vtlm_attention_mask``, ``vtlm_position_ids``, ``vtlm_segment`` (True on the translation),
``vtlm_labels`` (-100 off the masked positions), ``vtlm_co_masked`` (the co-masked positions) and,
with ``language_embeddings``, ``vtlm_token_type_ids`` (each token's language id).

Alignment (``Args.alignment``):

* ``"lexicon"``: word pairs from a bilingual lexicon (``Args.lexicon``: one file in the format
  :meth:`xvl.align.Lexicon.from_file` reads, or a directory of such files, one per language
  pair; each must name its languages in a ``# langs: en de`` header or an ``en-de.txt`` file
  name). Computed in the data loader on the token ids: words are :func:`xvl.align.word_spans`
  (SentencePiece ``▁`` word starts), a word's text is its decoded tokens, and a caption word and a
  translation word are aligned when the lexicon for the row's language pair (either direction)
  pairs them, one-to-one, greedily by closest relative position (as
  :func:`xvl.align.lexicon_alignment`). Working on the ids (not re-tokenized text) keeps the
  positions exactly those of the batch. Rows whose languages no lexicon covers get no co-masking.
* ``"none"``: no co-masking (plain TLM masking of the concatenation, conditioned on the image).

Mutual-argmax alignment from the model's own states is not supported: it needs the model, which
the data loader does not have, and masking in the forward pass would take the masks out of the
loader's reproducible per-batch generator.

Positions and languages: the translation's positions restart by default (``restart_positions``;
the concatenation of two captions is longer than the text tower's position table allows for a
model built for one caption). With restarted positions and nothing else telling the two sentences
apart, two tokens with the same id at the same index of both sentences are indistinguishable to
the transformer (same input embedding, same keys to attend to, so identical states at every layer)
— which is exactly a co-masked word pair at matching indices ("a dog runs" / "ein Hund läuft"):
the model cannot know which language to produce there. ``language_embeddings=True`` (XLM's
language embeddings through the token-type table: ``type_vocab_size >= #languages``, as the
``tlm`` objective) or ``restart_positions=False`` (if the position table is long enough) removes
that; the objective logs a warning when co-masking runs with neither.

Rows with ``pair_kind == 0`` (no real second caption: the "translation" is the caption itself) get
no masked positions and are left out of the loss. Weakly aligned pairs (``pair_kind == 1``,
independent captions of the image in two languages) are kept: their lexicon-aligned words are
still words both captions say about the image.

Deviations from UC2: a two-stream text tower + cross-attention fusion instead of one single-stream
transformer over regions and both sentences (see above); patch tokens instead of detector regions;
the co-masking share is a fraction of the masked *tokens* (a co-masked word pair counts all its
subword tokens on both sides); the aligned words come from a bilingual lexicon (UC2's own aligner
is not reproduced).
With X-Mod adapters the whole concatenation is routed through the caption language's adapters
(routing is per row).

Outputs: ``vtlm_loss``, ``vtlm_acc`` (top-1 on masked tokens) and ``vtlm_co_masked`` (the share of
the scored masked tokens that were co-masked).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch

from xvl.align import Lexicon, word_spans
from xvl.data.masking import (IGNORE_INDEX, build_tlm_inputs, check_text_config, co_mask_selection,
                              maskable_positions, replace_selected)
from xvl.objectives.base import Objective
from xvl.objectives.conditional_mlm import masked_token_loss
from xvl.registry import OBJECTIVES

logger = logging.getLogger(__name__)

Span = Tuple[int, int]
WordPair = Tuple[Span, Span]


def load_lexicons(path: str) -> Dict[Tuple[str, str], Lexicon]:
    """``{(src_lang, tgt_lang): Lexicon}`` from a lexicon file or a directory of them (every regular
    file not starting with ``.``). Each file must name its languages (header or file name)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if not f.startswith(".") and os.path.isfile(os.path.join(path, f)))
        if not files:
            raise ValueError(f"vtlm: lexicon directory {path} holds no files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"vtlm: lexicon not found: {path}")
    out: Dict[Tuple[str, str], Lexicon] = {}
    for f in files:
        lex = Lexicon.from_file(f)
        if lex.src_lang is None or lex.tgt_lang is None:
            raise ValueError(f"vtlm: lexicon {f} does not name its languages: add a '# langs: en de' "
                             "header line or name the file like en-de.txt")
        key = (lex.src_lang, lex.tgt_lang)
        if key in out or key[::-1] in out:
            raise ValueError(f"vtlm: two lexicons for {key[0]}-{key[1]} (second: {f})")
        out[key] = lex
    return out


def _words(tokenizer, ids: List[int], spans: List[Span], cache: Dict[tuple, str]) -> List[str]:
    """The text of each word span (decoded; special tokens glued to a word, an ``<unk>``, dropped).
    ``cache`` maps token-id tuples to text across the batch (captions repeat their words)."""
    out = []
    for s, e in spans:
        key = tuple(ids[s:e])
        if key not in cache:
            cache[key] = tokenizer.decode(list(key), skip_special_tokens=True).strip()
        out.append(cache[key])
    return out


def lexicon_word_pairs(src_words: Sequence[str], tgt_words: Sequence[str], lexicon: Lexicon) -> List[Tuple[int, int]]:
    """Indices ``(a, c)`` of lexicon-aligned words, one-to-one, greedily by closest relative
    position (ties: left to right) — the rule of :func:`xvl.align.lexicon_alignment`."""
    where: Dict[str, List[int]] = {}  # normalized target word -> its indices
    for c, t in enumerate(tgt_words):
        where.setdefault(lexicon.normalize(t), []).append(c)
    cands = []
    for a, s in enumerate(src_words):
        for t in lexicon.translations(s):
            for c in where.get(t, ()):
                cands.append((abs((a + 0.5) / len(src_words) - (c + 0.5) / len(tgt_words)), a, c))
    used_a, used_c, out = set(), set(), []
    for _, a, c in sorted(cands):
        if a not in used_a and c not in used_c:
            used_a.add(a)
            used_c.add(c)
            out.append((a, c))
    return sorted(out)


class VTLMPreparer:
    """The data-loader side of VTLM: ``prepare(batch, tokenizer, generator)`` adds the ``vtlm_*``
    inputs (see the module docstring). Picklable (DataLoader workers)."""

    def __init__(self, mask_probability: float, co_mask_probability: float,
                 lexicons: Optional[Dict[Tuple[str, str], Lexicon]], languages: Optional[Sequence[str]],
                 restart_positions: bool = True, language_embeddings: bool = False, text_config=None):
        self.mask_probability = mask_probability
        self.co_mask_probability = co_mask_probability
        self.lexicons = dict(lexicons or {})
        self.languages = list(languages) if languages is not None else None
        self.restart_positions = restart_positions
        self.language_embeddings = language_embeddings
        self.text_config = text_config  # the text model's HF config: position / token-type table checks

    def _lexicon(self, lang: int, pair_lang: int) -> Tuple[Optional[Lexicon], bool]:
        """The lexicon for (caption language, translation language) and whether it runs translation
        -> caption (then its source side is the translation)."""
        if self.languages is None or not (0 <= lang < len(self.languages) and 0 <= pair_lang < len(self.languages)):
            return None, False
        a, b = self.languages[lang], self.languages[pair_lang]
        if (a, b) in self.lexicons:
            return self.lexicons[(a, b)], False
        if (b, a) in self.lexicons:
            return self.lexicons[(b, a)], True
        return None, False

    def word_pairs(self, batch: Dict, tokenizer, keep: torch.Tensor) -> List[List[WordPair]]:
        """Aligned word pairs per row as token spans of the concatenation (caption first)."""
        bsz = batch["input_ids"].shape[0]
        if not self.lexicons or "lang" not in batch or "pair_lang" not in batch:
            return [[] for _ in range(bsz)]
        ids_a, am_a = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
        ids_b, am_b = batch["pair_input_ids"].cpu(), batch["pair_attention_mask"].cpu().bool()
        # token k of a sentence sits at (number of attended tokens before it) in the concatenation
        # (build_tlm_inputs keeps each side's attended tokens in order, the caption first)
        pos_a, pos_b = (am_a.long().cumsum(1) - 1).tolist(), (am_b.long().cumsum(1) - 1).tolist()
        len_a = am_a.sum(1).tolist()
        lang, pair_lang = batch["lang"].tolist(), batch["pair_lang"].tolist()
        spans_a, spans_b = word_spans(tokenizer, ids_a, am_a), word_spans(tokenizer, ids_b, am_b)
        rows_a, rows_b, cache = ids_a.tolist(), ids_b.tolist(), {}
        out: List[List[WordPair]] = []
        for i in range(bsz):
            lex, swapped = self._lexicon(int(lang[i]), int(pair_lang[i]))
            if lex is None or not keep[i] or not spans_a[i] or not spans_b[i]:
                out.append([])
                continue
            words_a = _words(tokenizer, rows_a[i], spans_a[i], cache)
            words_b = _words(tokenizer, rows_b[i], spans_b[i], cache)
            if swapped:
                matches = [(a, c) for c, a in lexicon_word_pairs(words_b, words_a, lex)]
            else:
                matches = lexicon_word_pairs(words_a, words_b, lex)
            row, pa, pb, off = [], pos_a[i], pos_b[i], len_a[i]
            for a, c in matches:
                (s0, s1), (t0, t1) = spans_a[i][a], spans_b[i][c]
                row.append(((pa[s0], pa[s1 - 1] + 1), (off + pb[t0], off + pb[t1 - 1] + 1)))
            out.append(row)
        return out

    def __call__(self, batch: Dict, tokenizer, generator: Optional[torch.Generator] = None) -> Dict:
        if "pair_input_ids" not in batch:  # nothing to translate: the objective skips this batch
            return batch
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1
        lang = pair_lang = None
        if self.language_embeddings:
            if "lang" not in batch or "pair_lang" not in batch:
                raise ValueError("vtlm: language_embeddings needs the batch's 'lang' and 'pair_lang' ids")
            lang, pair_lang = batch["lang"], batch["pair_lang"]
        t = build_tlm_inputs(batch["input_ids"], batch["attention_mask"], batch["pair_input_ids"],
                             batch["pair_attention_mask"], lang=lang, pair_lang=pair_lang,
                             restart_positions=self.restart_positions, padding_idx=pad)
        check_text_config(self.text_config, t["mlm_position_ids"], t.get("mlm_token_type_ids"))
        ids, am = t["mlm_input_ids"], t["mlm_attention_mask"]
        bsz = ids.shape[0]
        keep = (batch["pair_kind"] != 0).cpu() if "pair_kind" in batch else torch.ones(bsz, dtype=torch.bool)
        maskable = maskable_positions(ids, am, tokenizer) & keep.to(ids.device)[:, None]
        pairs = self.word_pairs(batch, tokenizer, keep)
        selected, co = co_mask_selection(maskable, pairs, self.mask_probability, self.co_mask_probability,
                                         generator=generator)
        masked, labels = replace_selected(ids, selected, tokenizer, generator)
        batch.update(vtlm_input_ids=masked, vtlm_attention_mask=am, vtlm_position_ids=t["mlm_position_ids"],
                     vtlm_segment=t["segment"], vtlm_labels=labels, vtlm_co_masked=co)
        if "mlm_token_type_ids" in t:
            batch["vtlm_token_type_ids"] = t["mlm_token_type_ids"]
        return batch


@OBJECTIVES.register("vtlm")
class VTLM(Objective):
    """UC2's visual translation LM through the fusion encoder (see the module docstring)."""

    name = "vtlm"
    prepares = "vtlm"
    requires = ("image", "vtlm_input_ids", "vtlm_labels")
    needs_pairs = True

    @dataclass
    class Args:
        mask_probability: float = 0.15
        # share of the masked tokens spent on aligned word pairs masked in both sentences
        co_mask_probability: float = 0.5
        alignment: Literal["lexicon", "none"] = "lexicon"
        lexicon: Optional[str] = None  # a lexicon file or a directory of them (alignment=lexicon)
        restart_positions: bool = True  # the translation's positions restart (XLM's TLM)
        # language ids as token types (XLM's language embeddings; type_vocab_size >= #languages)
        language_embeddings: bool = False

    def __init__(self, args: "VTLM.Args", model=None):
        super().__init__(args, model)
        if not 0.0 < args.mask_probability <= 1.0:
            raise ValueError(f"vtlm: mask_probability must be in (0, 1], got {args.mask_probability}")
        if not 0.0 <= args.co_mask_probability <= 1.0:
            raise ValueError(f"vtlm: co_mask_probability must be in [0, 1], got {args.co_mask_probability}")
        if args.alignment not in ("lexicon", "none"):
            raise ValueError(f"vtlm: alignment must be 'lexicon' or 'none', got {args.alignment!r}")
        if args.alignment == "lexicon" and not args.lexicon:
            raise ValueError("vtlm: alignment=lexicon needs args.lexicon (a bilingual lexicon file or directory); "
                             "use alignment=none for VTLM without co-masking")
        if args.alignment == "none" and args.lexicon:
            raise ValueError("vtlm: a lexicon is given but alignment=none: set alignment=lexicon or drop the lexicon")
        if model is not None and getattr(model, "fusion", None) is None:
            raise ValueError("vtlm predicts through the fusion encoder: set model.fusion.layers > 0")
        # loaded up front (also at config validation) so a bad file fails before training starts
        self.lexicons = load_lexicons(args.lexicon) if args.alignment == "lexicon" else {}
        self.languages = list(model.cfg.languages) if model is not None else None
        self._text_config = model.text.model.config if model is not None else None
        if args.language_embeddings and self._text_config is not None:
            tv = int(getattr(self._text_config, "type_vocab_size", 1))
            if len(self.languages) > tv:
                raise ValueError(f"vtlm: language_embeddings needs type_vocab_size >= the number of languages "
                                 f"({len(self.languages)}) but the text model has type_vocab_size={tv}; set "
                                 f"model.text.config.type_vocab_size: {len(self.languages)}")
        if (model is not None and self.lexicons and args.co_mask_probability > 0 and args.restart_positions
                and not args.language_embeddings):
            logger.warning("vtlm: co-masking with restarted positions and no language embeddings: a co-masked "
                           "word pair at the same index of both sentences gets identical states (the model "
                           "cannot tell which language to predict); set language_embeddings=true "
                           "(type_vocab_size >= #languages) or restart_positions=false")

    def input_preparer(self):
        if self.lexicons and self.languages is None:
            raise ValueError("vtlm: lexicon co-masking needs the model's language list (build with model=...)")
        a = self.args
        return VTLMPreparer(a.mask_probability, a.co_mask_probability, self.lexicons, self.languages,
                            restart_positions=a.restart_positions, language_embeddings=a.language_embeddings,
                            text_config=self._text_config)

    def forward(self, outputs, batch):
        model = self.xvl_model
        if "image_tokens" not in outputs:
            raise KeyError("vtlm needs outputs['image_tokens']: the batch must hold 'image'")
        ids, mask = batch["vtlm_input_ids"], batch["vtlm_attention_mask"]
        text = model.text(ids, mask, lang=batch.get("lang"), position_ids=batch.get("vtlm_position_ids"),
                          token_type_ids=batch.get("vtlm_token_type_ids"))["text_tokens"]
        fused = model.fuse(text, mask, outputs["image_tokens"], None, context_type="image")
        labels = batch["vtlm_labels"].to(fused.device)
        if "pair_kind" in batch:  # no real second caption: not scored (the preparer masks nothing there)
            labels = labels.masked_fill((batch["pair_kind"] == 0).to(labels.device)[:, None], IGNORE_INDEX)
        out = masked_token_loss(model.fusion_mlm_head, fused, labels)
        result = {f"{self.name}_loss": out["loss"], f"{self.name}_acc": out["acc"]}
        if "vtlm_co_masked" in batch:
            sel = labels != IGNORE_INDEX
            co = batch["vtlm_co_masked"].to(sel.device) & sel
            result[f"{self.name}_co_masked"] = co.sum().float() / sel.sum().clamp_min(1).float()
        return result
