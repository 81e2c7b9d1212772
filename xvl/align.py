"""Word / token alignment between a sentence and its translation.

Two alignment sources, both giving *token* positions into the tokenized sequences that the model
sees (``<s> ... </s>`` with right padding, i.e. what ``tokenizer(texts, truncation=True,
max_length=...)`` produces and what the collators pad):

* :func:`lexicon_alignment` -- word pairs found in a bilingual :class:`Lexicon` (computed on
  text, e.g. in a collator; VECO 2.0's token-to-token contrast and the VTLM co-masking of aligned
  words both use it);
* :func:`mutual_argmax_alignment` -- mutual nearest neighbours of contextual token states by
  cosine similarity (SimAlign "argmax"; computed on the fly from the model, no gradient).

Helpers: :func:`word_spans` (subword spans of words), :func:`special_token_ids`,
:func:`special_tokens_mask` and :func:`alignment_to_tensor` (pairs -> bool ``[B, L, L2]``).

Word boundaries follow the tokenizers of this project: Metaspace pre-tokenization, where a token
starting with ``"▁"`` begins a new word (SentencePiece / XLM-R convention). Special tokens
(``<s>``, ``</s>``, ``<pad>``, ``<mask>``) are never part of a word; ``<unk>`` is (it stands for
real text).
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F

METASPACE = "\u2581"  # "▁"

Span = Tuple[int, int]
Pair = Tuple[int, int]

__all__ = [
    "Lexicon",
    "word_spans",
    "lexicon_alignment",
    "mutual_argmax_alignment",
    "alignment_to_tensor",
    "special_token_ids",
    "special_tokens_mask",
]


# --------------------------------------------------------------------------------------------
# Bilingual lexicon
# --------------------------------------------------------------------------------------------
# "# langs: en de", "# langs: en-de", "#langs=en\tde" (case-insensitive keyword)
_HEADER_RE = re.compile(r"^#\s*langs?\s*[:=]?\s*([A-Za-z][\w]*)\s*(?:-|\s)\s*([A-Za-z][\w]*)\s*$", re.I)
# MUSE file names: "en-de.txt", "en-de.0-5000.txt", "de-en.5000-6500.txt"
_FILENAME_RE = re.compile(r"^([a-z]{2,3}(?:_[A-Za-z]+)?)-([a-z]{2,3}(?:_[A-Za-z]+)?)(?:\.|$)")


def _strip_punct(word: str) -> str:
    """Drop leading / trailing punctuation (Unicode category P*): ``"circle."`` -> ``"circle"``."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end]


class Lexicon:
    """A bilingual word lexicon ``src_lang -> tgt_lang`` (many-to-many).

    Args:
        pairs: ``(src_word, tgt_word)`` pairs.
        src_lang, tgt_lang: language codes (informational; checked by :meth:`from_file`).
        lowercase: match case-insensitively (entries and queries are lowercased); default on.

    Lookup normalizes words with NFKC, strips leading/trailing punctuation and (if ``lowercase``)
    casefolds, so ``"Kreis,"`` matches an entry ``kreis``.
    """

    def __init__(self, pairs: Iterable[Tuple[str, str]], src_lang: Optional[str] = None,
                 tgt_lang: Optional[str] = None, lowercase: bool = True):
        self.src_lang, self.tgt_lang, self.lowercase = src_lang, tgt_lang, lowercase
        self._map: Dict[str, Set[str]] = {}
        self._n = 0
        for s, t in pairs:
            s, t = self.normalize(s), self.normalize(t)
            if not s or not t:
                continue
            entry = self._map.setdefault(s, set())
            if t not in entry:
                entry.add(t)
                self._n += 1

    def normalize(self, word: str) -> str:
        word = _strip_punct(unicodedata.normalize("NFKC", word).strip())
        return word.lower() if self.lowercase else word

    def translations(self, word: str) -> Set[str]:
        """The (normalized) target words of ``word`` (empty set if unknown)."""
        return self._map.get(self.normalize(word), set())

    def matches(self, src_word: str, tgt_word: str) -> bool:
        """Whether the lexicon pairs ``src_word`` with ``tgt_word``."""
        t = self.normalize(tgt_word)
        return bool(t) and t in self.translations(src_word)

    def __contains__(self, pair) -> bool:
        return self.matches(*pair)

    def __len__(self) -> int:
        """Number of distinct (src, tgt) entries."""
        return self._n

    def pairs(self) -> List[Tuple[str, str]]:
        return sorted((s, t) for s, ts in self._map.items() for t in ts)

    def inverse(self) -> "Lexicon":
        """The ``tgt_lang -> src_lang`` lexicon."""
        return Lexicon(((t, s) for s, t in self.pairs()), self.tgt_lang, self.src_lang, self.lowercase)

    def __repr__(self) -> str:
        return f"Lexicon({self.src_lang}->{self.tgt_lang}, {len(self)} entries)"

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"], src_lang: Optional[str] = None,
                  tgt_lang: Optional[str] = None, lowercase: bool = True) -> "Lexicon":
        """Read a lexicon file (UTF-8), one entry per line.

        * ``src_word<TAB>tgt_word`` -- a line containing a tab is split on the tab (so entries may
          hold spaces; such phrases simply never match a single word);
        * ``src_word tgt_word`` -- otherwise on whitespace (the MUSE dictionary format), exactly
          two fields;
        * empty lines are skipped; lines starting with ``#`` are comments, except a language
          header ``# langs: en de`` (or ``# langs: en-de``) before the first entry.

        Languages come from ``src_lang``/``tgt_lang``, else the header, else a MUSE file name
        (``en-de.txt``, ``en-de.0-5000.txt``). If the file's languages are the requested ones
        swapped (file ``de-en``, asked ``en -> de``) the lexicon is inverted; any other mismatch is
        a ``ValueError``. A missing file raises ``FileNotFoundError`` naming it; a malformed line
        a ``ValueError`` naming the file and line.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lexicon file not found: {path}")
        file_langs: Optional[Tuple[str, str]] = None
        m = _FILENAME_RE.match(os.path.basename(path))
        if m:
            file_langs = (m.group(1), m.group(2))
        pairs: List[Tuple[str, str]] = []
        with open(path, "r", encoding="utf-8-sig") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                if line.lstrip().startswith("#"):
                    h = _HEADER_RE.match(line.strip())
                    if h and not pairs:
                        file_langs = (h.group(1), h.group(2))
                    continue
                fields = [x.strip() for x in line.split("\t")] if "\t" in line else line.split()
                if len(fields) != 2 or not fields[0] or not fields[1]:
                    raise ValueError(f"{path}:{lineno}: expected 'src<TAB>tgt' or 'src tgt', got {line!r}")
                pairs.append((fields[0], fields[1]))
        invert = False
        if file_langs is not None:
            want = (src_lang or file_langs[0], tgt_lang or file_langs[1])
            if want == file_langs:
                pass
            elif want == (file_langs[1], file_langs[0]):
                invert = True
            else:
                raise ValueError(f"{path}: lexicon is {file_langs[0]}->{file_langs[1]}, "
                                 f"asked for {want[0]}->{want[1]}")
            src_lang, tgt_lang = want
        if invert:
            pairs = [(t, s) for s, t in pairs]
        return cls(pairs, src_lang, tgt_lang, lowercase=lowercase)


# --------------------------------------------------------------------------------------------
# Tokens and words
# --------------------------------------------------------------------------------------------
def special_token_ids(tokenizer) -> Set[int]:
    """Ids that never belong to a word: the tokenizer's special tokens except ``<unk>``."""
    ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", []))
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        ids.discard(int(unk))
    return ids


def special_tokens_mask(input_ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """Bool mask, True where ``input_ids`` holds one of ``special_ids``."""
    ids = torch.as_tensor(sorted(set(int(i) for i in special_ids)), device=input_ids.device,
                          dtype=input_ids.dtype)
    return torch.isin(input_ids, ids)


def _rows(input_ids) -> List[List[int]]:
    if torch.is_tensor(input_ids):
        x = input_ids.detach().cpu()
        return (x.unsqueeze(0) if x.ndim == 1 else x).tolist()
    input_ids = list(input_ids)
    if input_ids and isinstance(input_ids[0], int):
        return [input_ids]
    return [list(r) for r in input_ids]


def word_spans(tokenizer, input_ids, attention_mask=None) -> List[List[Span]]:
    """Token spans ``[start, end)`` of the words of each row of ``input_ids`` ([B, L] or [L]).

    Works from ids alone: a token whose string starts with ``"▁"`` (Metaspace / SentencePiece)
    starts a new word, any other token continues the current word; the first ordinary token after
    a special token always starts a word. Special tokens (see :func:`special_token_ids`), padding
    and positions where ``attention_mask`` is 0 belong to no word. (From text, the fast
    tokenizer's ``word_ids()`` gives the same spans; :func:`lexicon_alignment` uses that.)
    """
    special = special_token_ids(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        special.add(int(pad))
    rows = _rows(input_ids)
    masks = _rows(attention_mask) if attention_mask is not None else [None] * len(rows)
    out: List[List[Span]] = []
    for ids, mask in zip(rows, masks):
        toks = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        spans: List[Span] = []
        start = None
        for k, (i, tok) in enumerate(zip(ids, toks)):
            if int(i) in special or (mask is not None and not mask[k]):
                if start is not None:
                    spans.append((start, k))
                start = None
                continue
            if start is None:
                start = k
            elif tok.startswith(METASPACE):
                spans.append((start, k))
                start = k
        if start is not None:
            spans.append((start, len(ids)))
        out.append(spans)
    return out


def _spans_from_word_ids(word_ids: Sequence[Optional[int]]) -> List[Span]:
    spans: List[Span] = []
    prev, start = None, None
    for k, w in enumerate(list(word_ids) + [None]):
        if w != prev or w is None:
            if prev is not None:
                spans.append((start, k))
            start = k
        prev = w
    return spans


# --------------------------------------------------------------------------------------------
# Lexicon alignment
# --------------------------------------------------------------------------------------------
def lexicon_alignment(src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer, lexicon: Lexicon,
                      max_length: Optional[int] = None, subwords: str = "first",
                      one_to_one: bool = True) -> List[List[Pair]]:
    """Aligned token pairs ``(i_src, j_tgt)`` for each sentence pair, from a bilingual lexicon.

    Each side is tokenized as ``tokenizer(texts, truncation=True, max_length=max_length)`` (the
    collator's call; positions are the same after right padding) and split into words with the
    fast tokenizer's ``word_ids()``; a word's text is taken from the original string through the
    character offsets. A source word and a target word are aligned when ``lexicon`` pairs them
    (``lexicon.matches``).

    * ``one_to_one`` (default): every word is aligned at most once; candidates are taken greedily
      by closest relative position in the sentence (ties: left to right), so
      "red ball red" / "rot Ball rot" aligns the two "red" to the two "rot" in order.
      Otherwise every lexicon match is kept.
    * ``subwords="first"`` (default): an aligned word pair aligns the first subword tokens of the
      two words (one token pair per word pair); ``"all"``: every (src subword, tgt subword) pair.

    Words cut by truncation keep their surviving tokens. Returns a list (one per sentence pair)
    of ``(i, j)`` sorted by ``i`` then ``j``.
    """
    if len(src_texts) != len(tgt_texts):
        raise ValueError(f"lexicon_alignment: {len(src_texts)} source vs {len(tgt_texts)} target texts")
    if subwords not in ("first", "all"):
        raise ValueError(f"lexicon_alignment: subwords must be 'first' or 'all', got {subwords!r}")
    src_texts, tgt_texts = list(src_texts), list(tgt_texts)
    if not src_texts:
        return []
    kw = dict(truncation=max_length is not None, max_length=max_length)
    enc_s = tokenizer(src_texts, **kw)
    enc_t = tokenizer(tgt_texts, **kw)

    def words(enc, b, text):
        out = []
        for start, end in _spans_from_word_ids(enc.word_ids(b)):
            w = enc.token_to_word(b, start)
            chars = enc.word_to_chars(b, w) if w is not None else None
            word = text[chars.start:chars.end] if chars is not None else ""
            out.append(((start, end), word))
        return out

    result: List[List[Pair]] = []
    for b, (s_text, t_text) in enumerate(zip(src_texts, tgt_texts)):
        sw, tw = words(enc_s, b, s_text), words(enc_t, b, t_text)
        cands = []
        for a, (_, s_word) in enumerate(sw):
            targets = lexicon.translations(s_word)
            if not targets:
                continue
            for c, (_, t_word) in enumerate(tw):
                if lexicon.normalize(t_word) in targets:
                    dist = abs((a + 0.5) / len(sw) - (c + 0.5) / len(tw))
                    cands.append((dist, a, c))
        cands.sort()
        used_s, used_t, chosen = set(), set(), []
        for _, a, c in cands:
            if one_to_one and (a in used_s or c in used_t):
                continue
            used_s.add(a)
            used_t.add(c)
            chosen.append((a, c))
        pairs: Set[Pair] = set()
        for a, c in chosen:
            (s0, s1), (t0, t1) = sw[a][0], tw[c][0]
            if subwords == "first":
                pairs.add((s0, t0))
            else:
                pairs.update((i, j) for i in range(s0, s1) for j in range(t0, t1))
        result.append(sorted(pairs))
    return result


def alignment_to_tensor(alignments: Sequence[Sequence[Pair]], src_len: int, tgt_len: int,
                        device=None) -> torch.Tensor:
    """Pairs per example -> bool ``[B, src_len, tgt_len]`` (pairs outside the shape are dropped)."""
    out = torch.zeros(len(alignments), src_len, tgt_len, dtype=torch.bool, device=device)
    for b, pairs in enumerate(alignments):
        for i, j in pairs:
            if 0 <= i < src_len and 0 <= j < tgt_len:
                out[b, i, j] = True
    return out


# --------------------------------------------------------------------------------------------
# Mutual-argmax alignment of contextual states
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def mutual_argmax_alignment(src_states: torch.Tensor, tgt_states: torch.Tensor,
                            src_mask: torch.Tensor, tgt_mask: torch.Tensor,
                            special_mask: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                            threshold: Optional[float] = None) -> torch.Tensor:
    """Mutual nearest neighbours by cosine similarity -> bool ``[B, L, L2]``.

    ``(i, j)`` is aligned iff both are valid tokens, ``j`` is the argmax of ``sim(i, .)`` over the
    valid target tokens and ``i`` the argmax of ``sim(., j)`` over the valid source tokens (and,
    with ``threshold``, ``sim(i, j) >= threshold``). Valid = ``mask`` true (attention mask, 1 for
    real tokens) and not special: ``special_mask`` is ``(src_special [B, L], tgt_special [B, L2])``
    (bool, True = exclude), e.g. from :func:`special_tokens_mask`. Ties go to the lowest index.
    Computed in float32 on detached states; no gradient flows.
    """
    a = F.normalize(src_states.detach().float(), dim=-1)
    b = F.normalize(tgt_states.detach().float(), dim=-1)
    vs, vt = src_mask.bool(), tgt_mask.bool()
    if special_mask is not None:
        s_sp, t_sp = special_mask
        if s_sp is not None:
            vs = vs & ~s_sp.bool()
        if t_sp is not None:
            vt = vt & ~t_sp.bool()
    sim = a @ b.transpose(1, 2)  # [B, L, L2]
    valid = vs[:, :, None] & vt[:, None, :]
    sim = sim.masked_fill(~valid, float("-inf"))
    fwd = F.one_hot(sim.argmax(dim=2), sim.shape[2]).bool()  # [B, L, L2]: row i -> best j
    bwd = F.one_hot(sim.argmax(dim=1), sim.shape[1]).bool().transpose(1, 2)  # col j -> best i
    out = fwd & bwd & valid
    if threshold is not None:
        out &= sim >= threshold
    return out
