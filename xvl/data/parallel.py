"""Parallel (translation) text for cross-lingual text-encoder training (EMS / InfoXLM / VECO line).

Readers (each returns ``ParallelPair`` s with canonical language codes, see
:func:`xvl.data.languages.normalize_lang`, and counts what it skips in a
:class:`~xvl.data.images.SkipCounter`; nothing is dropped silently):

* :func:`read_aligned_files`: line-aligned files, one per language (Multi30K ``train.en``,
  ``train.de``, ...); all language pairs or only pairs with a pivot language.
* :func:`read_tatoeba`: LASER's Tatoeba v1 directory (``tatoeba.deu-eng.deu`` / ``.eng``).
* :func:`read_pairs_file`: TSV (``src<TAB>tgt`` or ``src_lang<TAB>src<TAB>tgt_lang<TAB>tgt``) or
  jsonl (``{"src", "tgt", "src_lang", "tgt_lang"}``).
* :func:`read_hf_pairs`: a ``datasets.Dataset`` / ``DatasetDict`` or a *local* json / jsonl /
  parquet / csv / tsv file (or a ``save_to_disk`` directory); flat text columns or the HF
  translation format ``{"translation": {"de": ..., "en": ...}}``. Nothing is ever downloaded.
* :func:`pairs_from_captions`: translation pairs hidden in a captions-schema jsonl
  (flickr8k-ml: Multi30K's de/fr/cs human translations of one English caption per image).

Empty sentences (after stripping whitespace) on either side are skipped and counted (reason
``empty_line`` / ``empty_text``; one count per dropped pair). Over-long sentences are kept as they
are: truncation to ``max_length`` tokens happens in :class:`ParallelCollator`.

:class:`ParallelTextDataset` mixes several corpora (or language pairs) with XLM-style temperature
sampling (corpus ``i`` gets a share proportional to ``n_i ** alpha``), as a deterministic function of
``(seed, epoch, index)`` so a resumed run sees the same samples; :class:`ParallelCollator` makes the
batch (``input_ids``/``attention_mask``/``lang`` for one side, ``pair_*`` for the other).
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from xvl.data.captions import read_caption_jsonl, sample_rng
from xvl.data.images import SkipCounter
from xvl.data.languages import normalize_lang

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ParallelPair:
    """Two sentences that translate each other; languages are canonical codes (``de``, ``yue``)."""
    src_text: str
    tgt_text: str
    src_lang: str
    tgt_lang: str


def lang_pair_name(src_lang: str, tgt_lang: str) -> str:
    """Direction-independent name of a language pair: ``("en", "de")`` -> ``"de-en"``."""
    a, b = sorted((normalize_lang(src_lang), normalize_lang(tgt_lang)))
    return f"{a}-{b}"


def group_by_lang_pair(pairs: Iterable[ParallelPair]) -> Dict[str, List[ParallelPair]]:
    """Split pairs into corpora by language pair (``"de-en"``; ``de->en`` and ``en->de`` together),
    e.g. to temperature-sample language pairs in :class:`ParallelTextDataset`."""
    out: Dict[str, List[ParallelPair]] = {}
    for p in pairs:
        out.setdefault(lang_pair_name(p.src_lang, p.tgt_lang), []).append(p)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# Line-aligned files
# --------------------------------------------------------------------------------------------
def _read_lines(path: str) -> List[str]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"parallel data file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final newline does not start another line
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def _load_aligned(paths: Mapping[str, str]) -> Dict[str, List[str]]:
    """Read line-aligned files ``lang -> path``; all must have the same number of lines."""
    lines = {lang: _read_lines(p) for lang, p in paths.items()}
    items = list(paths.items())
    ref_lang, ref_path = items[0]
    for lang, p in items[1:]:
        if len(lines[lang]) != len(lines[ref_lang]):
            raise ValueError(
                f"misaligned parallel files: {ref_path} has {len(lines[ref_lang])} lines but {p} "
                f"has {len(lines[lang])} lines (line i of each file must be the same sentence)")
    return lines


def _aligned_paths(paths_or_prefix, languages: Optional[Sequence[str]]) -> "OrderedDict[str, str]":
    """``{canonical lang: path}`` from a dict ``lang -> path`` or a prefix plus languages."""
    out: "OrderedDict[str, str]" = OrderedDict()
    if isinstance(paths_or_prefix, Mapping):
        items = list(paths_or_prefix.items())
        if languages is not None:
            wanted = [normalize_lang(x) for x in languages]
            items = [(k, v) for k, v in items if normalize_lang(k) in wanted]
    elif isinstance(paths_or_prefix, (str, os.PathLike)):
        if not languages:
            raise ValueError("read_aligned_files: with a path prefix, give the languages "
                             "(e.g. prefix '.../train' and languages ['en', 'de'] for train.en, "
                             "train.de)")
        prefix = os.fspath(paths_or_prefix)
        items = [(lang, f"{prefix}.{lang}") for lang in languages]
    else:
        raise TypeError(f"expected a dict lang -> path or a path prefix, got {type(paths_or_prefix)}")
    for lang, p in items:
        code = normalize_lang(lang)
        if code in out:
            raise ValueError(f"language {code} given twice ({out[code]} and {os.fspath(p)})")
        out[code] = os.fspath(p)
    if len(out) < 2:
        raise ValueError(f"need files in at least two languages, got {dict(out)}")
    return out


def _lang_pairs(langs: Sequence[str], pairs: str) -> List[Tuple[str, str]]:
    """(src, tgt) language pairs for ``pairs="all"`` or ``"pivot:<lang>"`` (src = non-pivot)."""
    if pairs == "all":
        return [(a, b) for i, a in enumerate(langs) for b in langs[i + 1:]]
    if isinstance(pairs, str) and pairs.startswith("pivot:"):
        pivot = normalize_lang(pairs[len("pivot:"):])
        if pivot not in langs:
            raise ValueError(f"pivot language {pivot} is not among the languages {list(langs)}")
        return [(lang, pivot) for lang in langs if lang != pivot]
    raise ValueError(f"pairs must be 'all' or 'pivot:<lang>', got {pairs!r}")


def read_aligned_files(paths_or_prefix: Union[Mapping[str, PathLike], PathLike],
                       languages: Optional[Sequence[str]] = None, pairs: str = "all",
                       skips: Optional[SkipCounter] = None) -> List[ParallelPair]:
    """Pairs from line-aligned files (line ``i`` of every file is the same sentence).

    Args:
        paths_or_prefix: ``{"en": ".../train.en", "de": ".../train.de"}`` or a prefix
            ``".../train"`` with ``languages=["en", "de", "fr"]`` (files ``<prefix>.<lang>``).
            With a dict, ``languages`` optionally selects some of its languages.
        pairs: ``"all"``: every pair of languages, in the given language order (src = the earlier
            language); ``"pivot:en"``: only pairs with English (src = the other language).

    Files with different line counts raise ``ValueError`` naming both files and both counts. An
    empty line on either side drops that pair (counted as ``empty_line``). Order: by line, then
    by language pair.
    """
    paths = _aligned_paths(paths_or_prefix, languages)
    skips = skips if skips is not None else SkipCounter("parallel")
    lines = _load_aligned(paths)
    lang_pairs = _lang_pairs(list(paths), pairs)
    n = len(next(iter(lines.values())))
    out: List[ParallelPair] = []
    for i in range(n):
        for a, b in lang_pairs:
            ta, tb = lines[a][i].strip(), lines[b][i].strip()
            if not ta or not tb:
                empty = paths[a] if not ta else paths[b]
                skips.skip("empty_line", f"{empty}:{i + 1} ({a}-{b})")
                continue
            out.append(ParallelPair(ta, tb, a, b))
    logger.info("%s: %d pairs (%s), skipped %s", list(paths.values())[0], len(out),
                ", ".join(f"{a}-{b}" for a, b in lang_pairs), skips.as_dict())
    return out


def read_tatoeba(directory: PathLike, languages: Optional[Sequence[str]] = None,
                 skips: Optional[SkipCounter] = None) -> Dict[str, List[ParallelPair]]:
    """LASER Tatoeba v1: ``tatoeba.<xxx>-eng.<xxx>`` and ``tatoeba.<xxx>-eng.eng`` in ``directory``.

    Returns ``{"deu-eng": [ParallelPair(<deu sentence>, <eng sentence>, "de", "en"), ...], ...}``
    (keys are the file names' pair names, sorted). ``languages`` keeps only pairs whose
    non-English side is one of them (any code form). A pair with one of its two files missing,
    or with different line counts, raises; an unknown language code in a file name raises
    ``ValueError`` naming the file.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Tatoeba directory not found: {directory}")
    skips = skips if skips is not None else SkipCounter("tatoeba")
    wanted = {normalize_lang(x) for x in languages} if languages is not None else None
    names = set()
    for fn in os.listdir(directory):
        parts = fn.split(".")
        if len(parts) == 3 and parts[0] == "tatoeba" and parts[1].count("-") == 1:
            names.add(parts[1])
    out: Dict[str, List[ParallelPair]] = {}
    for name in sorted(names):
        src3, tgt3 = name.split("-")
        try:
            src, tgt = normalize_lang(src3), normalize_lang(tgt3)
        except ValueError as e:
            raise ValueError(f"{os.path.join(directory, 'tatoeba.' + name)}.*: {e}") from None
        if wanted is not None and not ({src, tgt} - {"en"}) & wanted:
            continue
        paths = OrderedDict([(src, os.path.join(directory, f"tatoeba.{name}.{src3}")),
                             (tgt, os.path.join(directory, f"tatoeba.{name}.{tgt3}"))])
        if src == tgt:
            raise ValueError(f"{paths[src]}: both sides of Tatoeba pair {name} are language {src}")
        out[name] = read_aligned_files(paths, skips=skips)
    if not out:
        raise ValueError(f"{directory}: no Tatoeba files (tatoeba.xxx-eng.xxx) found"
                         + (f" for languages {sorted(wanted)}" if wanted is not None else ""))
    return out


# --------------------------------------------------------------------------------------------
# Pair files (TSV / jsonl)
# --------------------------------------------------------------------------------------------
def _make_pair(src, tgt, src_lang, tgt_lang, skips: SkipCounter, where: str,
               reason: str = "empty_text") -> Optional[ParallelPair]:
    src = src.strip() if isinstance(src, str) else ""
    tgt = tgt.strip() if isinstance(tgt, str) else ""
    if not src or not tgt:
        skips.skip(reason, where)
        return None
    return ParallelPair(src, tgt, src_lang, tgt_lang)


def read_pairs_file(path: PathLike, src_lang: Optional[str] = None, tgt_lang: Optional[str] = None,
                    skips: Optional[SkipCounter] = None, fmt: Optional[str] = None) -> List[ParallelPair]:
    """Pairs from a TSV or jsonl file (``fmt`` ``"tsv"``/``"jsonl"``; default by suffix:
    ``.jsonl``/``.json`` are jsonl, anything else TSV).

    * TSV with 2 columns ``src<TAB>tgt``: ``src_lang`` and ``tgt_lang`` are required.
    * TSV with 4 columns ``src_lang<TAB>src<TAB>tgt_lang<TAB>tgt`` (languages per line).
    * jsonl records ``{"src": .., "tgt": .., "src_lang": .., "tgt_lang": ..}``; the language
      arguments are the default for records without language fields.

    An empty side (or a blank TSV line) is skipped and counted; a line with another number of
    columns, invalid JSON or no languages raises ``ValueError`` naming the file and line.
    """
    path = os.fspath(path)
    skips = skips if skips is not None else SkipCounter(os.path.basename(path))
    fmt = fmt or ("jsonl" if path.lower().endswith((".jsonl", ".json")) else "tsv")
    if fmt not in ("tsv", "jsonl"):
        raise ValueError(f"fmt must be 'tsv' or 'jsonl', got {fmt!r}")
    d_src = normalize_lang(src_lang) if src_lang is not None else None
    d_tgt = normalize_lang(tgt_lang) if tgt_lang is not None else None
    out: List[ParallelPair] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        where = f"{path}:{lineno}"
        if fmt == "jsonl":
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            s_lang = normalize_lang(rec["src_lang"]) if rec.get("src_lang") else d_src
            t_lang = normalize_lang(rec["tgt_lang"]) if rec.get("tgt_lang") else d_tgt
            if s_lang is None or t_lang is None:
                raise ValueError(f"{where}: record has no src_lang/tgt_lang and none were given")
            pair = _make_pair(rec.get("src"), rec.get("tgt"), s_lang, t_lang, skips, where)
        else:
            if not line.strip():
                skips.skip("empty_line", where)
                continue
            cols = line.split("\t")
            if len(cols) == 2:
                if d_src is None or d_tgt is None:
                    raise ValueError(f"{where}: a 2-column TSV needs src_lang and tgt_lang "
                                     "arguments (or use 4 columns: src_lang, src, tgt_lang, tgt)")
                s_lang, t_lang, s, t = d_src, d_tgt, cols[0], cols[1]
            elif len(cols) == 4:
                s_lang, t_lang = normalize_lang(cols[0].strip()), normalize_lang(cols[2].strip())
                s, t = cols[1], cols[3]
            else:
                raise ValueError(f"{where}: expected 2 or 4 tab-separated columns, got {len(cols)}")
            pair = _make_pair(s, t, s_lang, t_lang, skips, where, reason="empty_line")
        if pair is not None:
            out.append(pair)
    logger.info("%s: %d pairs, skipped %s", path, len(out), skips.as_dict())
    return out


# --------------------------------------------------------------------------------------------
# HF datasets
# --------------------------------------------------------------------------------------------
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
                ".tsv": "csv"}


def _load_local_hf(path: str, split: Optional[str], cache_dir: Optional[str]):
    import datasets

    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset not found: {path} (read_hf_pairs only reads local "
                                "files or datasets.Dataset objects; it never downloads)")
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    ext = os.path.splitext(path)[1].lower()
    builder = _HF_BUILDERS.get(ext)
    if builder is None:
        raise ValueError(f"{path}: unsupported file type {ext!r}; expected one of "
                         f"{sorted(_HF_BUILDERS)} or a save_to_disk directory")
    kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
    return datasets.load_dataset(builder, data_files=path, split=split or "train",
                                 cache_dir=cache_dir, **kwargs)


def read_hf_pairs(dataset_or_path, src_field: Optional[str] = None, tgt_field: Optional[str] = None,
                  src_lang: Optional[str] = None, tgt_lang: Optional[str] = None,
                  split: Optional[str] = None, skips: Optional[SkipCounter] = None,
                  translation_field: str = "translation",
                  cache_dir: Optional[str] = None) -> List[ParallelPair]:
    """Pairs from a HF dataset: a ``datasets.Dataset``/``DatasetDict`` or a local file / directory.

    Two layouts:

    * flat columns: ``src_field`` and ``tgt_field`` name the text columns; ``src_lang`` and
      ``tgt_lang`` are required;
    * HF translation format (when ``src_field``/``tgt_field`` are not given): a column
      ``translation_field`` holding ``{"de": ..., "en": ...}`` per row. ``src_lang``/``tgt_lang``
      pick the keys (any code form: ``deu`` finds key ``de``); without them the dict must have
      exactly two keys, taken in order.

    Local paths (never downloaded): ``.json``/``.jsonl``/``.parquet``/``.csv``/``.tsv`` files
    via ``datasets.load_dataset`` (``split`` defaults to ``"train"``; ``cache_dir`` is passed on)
    or a ``save_to_disk`` directory. For a ``DatasetDict``, ``split`` is required unless it has
    one split. Missing columns raise ``ValueError`` listing the columns; empty or non-string
    texts are skipped and counted (``empty_text``).
    """
    import datasets

    name = os.fspath(dataset_or_path) if isinstance(dataset_or_path, (str, os.PathLike)) \
        else "dataset"
    ds = dataset_or_path
    if isinstance(ds, (str, os.PathLike)):
        ds = _load_local_hf(os.fspath(ds), split, cache_dir)
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if split is None:
            if len(ds) != 1:
                raise ValueError(f"{name}: give split, one of {sorted(ds)}")
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"{name}: no split {split!r}; splits are {sorted(ds)}")
        ds = ds[split]
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset, DatasetDict or a local path, got {type(ds)}")
    skips = skips if skips is not None else SkipCounter(str(name))
    columns = list(ds.column_names)
    out: List[ParallelPair] = []

    if src_field is not None or tgt_field is not None:
        if src_field is None or tgt_field is None:
            raise ValueError("give both src_field and tgt_field (or neither, for the "
                             f"'{translation_field}' format)")
        missing = [f for f in (src_field, tgt_field) if f not in columns]
        if missing:
            raise ValueError(f"{name}: no column(s) {missing}; columns are {columns}")
        if src_lang is None or tgt_lang is None:
            raise ValueError(f"{name}: src_lang and tgt_lang are required with text columns")
        s_lang, t_lang = normalize_lang(src_lang), normalize_lang(tgt_lang)
        for i, (s, t) in enumerate(zip(ds[src_field], ds[tgt_field])):
            pair = _make_pair(s, t, s_lang, t_lang, skips, f"{name} row {i}")
            if pair is not None:
                out.append(pair)
    else:
        if translation_field not in columns:
            raise ValueError(f"{name}: no '{translation_field}' column and no src_field/tgt_field "
                             f"given; columns are {columns}")
        wanted = [normalize_lang(x) for x in (src_lang, tgt_lang) if x is not None]
        if len(wanted) == 1:
            raise ValueError("give both src_lang and tgt_lang (or neither)")
        keys: Optional[Tuple[str, str]] = None
        langs: Optional[Tuple[str, str]] = None
        keys_all: List[str] = []
        for i, row in enumerate(ds[translation_field]):
            if not isinstance(row, dict):
                raise ValueError(f"{name} row {i}: '{translation_field}' is not a dict: {row!r}")
            if keys is None or set(row) != set(keys_all):  # resolve keys once per key set
                keys_all = list(row)
                by_code = {}
                for k in keys_all:
                    by_code.setdefault(normalize_lang(k), k)
                if wanted:
                    missing = [c for c in wanted if c not in by_code]
                    if missing:
                        raise ValueError(f"{name} row {i}: no translation in {missing}; "
                                         f"languages are {keys_all}")
                    langs = (wanted[0], wanted[1])
                else:
                    if len(by_code) != 2:
                        raise ValueError(f"{name}: translations in {keys_all}; give src_lang and "
                                         "tgt_lang to pick two")
                    langs = tuple(by_code)  # type: ignore[assignment]
                keys = (by_code[langs[0]], by_code[langs[1]])
            pair = _make_pair(row.get(keys[0]), row.get(keys[1]), langs[0], langs[1], skips,
                              f"{name} row {i}")
            if pair is not None:
                out.append(pair)
    logger.info("%s: %d pairs, skipped %s", name, len(out), skips.as_dict())
    return out


# --------------------------------------------------------------------------------------------
# Captions jsonl (flickr8k-ml schema)
# --------------------------------------------------------------------------------------------
def pairs_from_captions(jsonl_path: PathLike,
                        kinds: Sequence[str] = ("human_translation", "original"),
                        reference: Optional[Mapping[str, PathLike]] = None,
                        languages: Optional[Sequence[str]] = None,
                        skips: Optional[SkipCounter] = None) -> List[ParallelPair]:
    """Translation pairs from a captions-schema jsonl (``{"image_id", "image", "captions":
    [{"lang", "text", "kind", "source"}]}``).

    ``kinds``: caption kinds that are translations (all but ``"original"``), plus ``"original"``
    to also pair each translation with the caption it translates.

    Rules, per image:

    * translations are grouped by their ``source``: captions of one source in *different*
      languages translate the same sentence (Multi30K task 1: one de, fr and cs translation per
      image). Each language pair in a group gives one pair (src = the language seen first). A
      language with several translations in one group (e.g. flickr8kcn_zhm: five zh
      translations of the five English captions) cannot be paired across languages without
      assuming an order; such cross-language pairs are skipped and counted
      (``ambiguous_translation``).
    * the original a translation was made from is identified only (a) when exactly one caption of
      kind ``original`` has the translation group's ``source`` (flickr8k-ml stores the Multi30K
      English sentence as ``original`` with source ``multi30k_task1``), or else (b) through
      ``reference``: line-aligned files ``{lang: path}`` (e.g. Multi30K ``train.en``/``.de``/...)
      in which the translation appears and whose English line at that position is exactly one of
      the image's originals. Otherwise no pair with the original is made for that translation
      (counted as ``original_unidentified``): the image's five flickr8k captions are *not* assumed
      to be translations of it. Pairs with the original have src = translation,
      tgt = original.
    * ``languages`` keeps only captions in these languages; empty texts are skipped and counted.
    """
    jsonl_path = os.fspath(jsonl_path)
    skips = skips if skips is not None else SkipCounter(os.path.basename(jsonl_path))
    trans_kinds = {k for k in kinds if k != "original"}
    use_original = "original" in kinds
    keep = {normalize_lang(x) for x in languages} if languages is not None else None
    ref_index: Dict[str, Dict[str, List[int]]] = {}
    ref_orig: List[str] = []
    orig_lang = "en"
    if reference is not None and use_original:
        ref_paths = _aligned_paths(reference, None)
        if "en" not in ref_paths:
            raise ValueError(f"reference needs an English file, got {dict(ref_paths)}")
        ref_lines = _load_aligned(ref_paths)
        ref_orig = [t.strip() for t in ref_lines["en"]]
        for lang, lines in ref_lines.items():
            if lang == orig_lang:
                continue
            idx: Dict[str, List[int]] = {}
            for i, t in enumerate(lines):
                t = t.strip()
                if t:
                    idx.setdefault(t, []).append(i)
            ref_index[lang] = idx

    out: List[ParallelPair] = []
    for rec in read_caption_jsonl(jsonl_path):
        image = str(rec.get("image_id", rec["image"]))
        groups: "OrderedDict[str, OrderedDict[str, List[str]]]" = OrderedDict()
        originals: List[Tuple[str, str, str]] = []  # (text, lang, source)
        for c in rec["captions"]:
            if not isinstance(c, dict):
                continue
            kind = c.get("kind")
            if kind not in trans_kinds and not (use_original and kind == "original"):
                continue
            try:
                lang = normalize_lang(c.get("lang") or "")
            except ValueError as e:
                raise ValueError(f"{jsonl_path}: image {image}: {e}") from None
            if keep is not None and lang not in keep:
                continue
            text = (c.get("text") or "").strip() if isinstance(c.get("text"), str) else ""
            if not text:
                skips.skip("empty_text", f"image {image} lang {lang}")
                continue
            if kind == "original":
                originals.append((text, lang, c.get("source")))
            else:
                groups.setdefault(c.get("source"), OrderedDict()).setdefault(lang, []).append(text)

        orig_texts = {t for t, _, _ in originals}
        for source, by_lang in groups.items():
            langs = list(by_lang)
            single = [lang for lang in langs if len(by_lang[lang]) == 1]
            for i, a in enumerate(langs):
                for b in langs[i + 1:]:
                    if a in single and b in single:
                        out.append(ParallelPair(by_lang[a][0], by_lang[b][0], a, b))
                    else:
                        skips.skip("ambiguous_translation",
                                   f"image {image} source {source}: {a}/{b} not one-to-one")
            if not use_original:
                continue
            same_source = [o for o in originals if o[2] == source and source is not None]
            group_orig = same_source[0] if len(same_source) == 1 and len(single) == len(langs) \
                else None
            for lang in langs:
                for text in by_lang[lang]:
                    orig = group_orig
                    if orig is None and ref_index.get(lang):
                        cands = {ref_orig[j] for j in ref_index[lang].get(text, ())} & orig_texts
                        if len(cands) == 1:
                            t = cands.pop()
                            orig = next(o for o in originals if o[0] == t)
                    if orig is None:
                        skips.skip("original_unidentified", f"image {image} {lang} ({source})")
                    elif orig[1] != lang:
                        out.append(ParallelPair(text, orig[0], lang, orig[1]))
    logger.info("%s: %d translation pairs (%s), skipped %s", jsonl_path, len(out),
                ", ".join(f"{k}: {len(v)}" for k, v in group_by_lang_pair(out).items()),
                skips.as_dict())
    return out


# --------------------------------------------------------------------------------------------
# Dataset and collator
# --------------------------------------------------------------------------------------------
def sampling_shares(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """XLM temperature sampling: probabilities proportional to ``n_i ** alpha`` (alpha=1:
    proportional to size, alpha=0: uniform over corpora)."""
    n = np.asarray(sizes, dtype=np.float64)
    if (n <= 0).any():
        raise ValueError(f"corpus sizes must be positive, got {list(sizes)}")
    w = n ** float(alpha)
    return w / w.sum()


def _quota(total: int, probs: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total``, closest to ``total * probs`` (largest remainder)."""
    exact = total * probs
    counts = np.floor(exact).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts


class ParallelTextDataset(Dataset):
    """Translation pairs from several corpora, mixed by temperature sampling.

    Each epoch has ``epoch_size`` samples (default: all pairs of all corpora). Corpus ``i``
    fills ``round(epoch_size * p_i)`` of them with ``p_i ∝ n_i ** alpha`` (``alpha=1``:
    proportional, ``alpha=0``: equal shares; XLM/InfoXLM use 0.3-0.7). Within an epoch a corpus's
    items are taken in a fresh random order, cycled when it is up-sampled (every item once before
    any twice) and truncated when down-sampled. The positions of corpora in the epoch are shuffled
    too. All of it is a pure function of ``(seed, epoch)``; the per-sample source/target swap of
    ``(seed, epoch, index)`` (:func:`~xvl.data.captions.sample_rng`), so a resumed run sees exactly
    the samples an uninterrupted one would.

    Keys are ``(epoch, index)`` tuples (from :class:`~xvl.data.sampler.ResumableBatchSampler`) or a
    plain index (epoch 0). Items: ``{"text", "lang", "pair_text", "pair_lang", "corpus",
    "skipped"}`` (``lang``/``pair_lang`` are ids from ``lang_to_id``).
    """

    def __init__(self, pairs_by_corpus: Union[Mapping[str, Sequence[ParallelPair]], Sequence[ParallelPair]],
                 lang_to_id: Mapping[str, int], seed: int = 0, alpha: float = 0.3,
                 swap: bool = True, epoch_size: Optional[int] = None):
        if not isinstance(pairs_by_corpus, Mapping):
            pairs_by_corpus = {"parallel": list(pairs_by_corpus)}
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        corpora = OrderedDict()
        for name, pairs in pairs_by_corpus.items():
            pairs = list(pairs)
            if not pairs:
                logger.warning("parallel corpus %r is empty and is left out", name)
                continue
            corpora[name] = pairs
        if not corpora:
            raise ValueError(f"no parallel pairs: all corpora are empty ({list(pairs_by_corpus)})")
        unknown: Dict[str, set] = {}
        for name, pairs in corpora.items():
            for p in pairs:
                for lang in (p.src_lang, p.tgt_lang):
                    if lang not in lang_to_id:
                        unknown.setdefault(lang, set()).add(name)
        if unknown:
            detail = "; ".join(f"{lang} (in {sorted(names)})" for lang, names in sorted(unknown.items()))
            raise ValueError(f"parallel data has languages the model has no id for: {detail}. "
                             f"Known languages: {sorted(lang_to_id)}; add them to model.languages "
                             "or filter the data")
        self.names = list(corpora)
        self.corpora = [corpora[n] for n in self.names]
        self.sizes = [len(c) for c in self.corpora]
        self.lang_to_id = dict(lang_to_id)
        self.seed, self.alpha, self.swap = int(seed), float(alpha), bool(swap)
        self.probs = sampling_shares(self.sizes, self.alpha)
        self.epoch_size = int(epoch_size) if epoch_size is not None else sum(self.sizes)
        if self.epoch_size <= 0:
            raise ValueError(f"epoch_size must be positive, got {epoch_size}")
        self.quota = _quota(self.epoch_size, self.probs)
        self._cache: "OrderedDict[int, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()
        logger.info("parallel data: %s", ", ".join(
            f"{n}: {s} pairs, {q} per epoch" for n, s, q in zip(self.names, self.sizes, self.quota)))

    def __len__(self) -> int:
        return self.epoch_size

    def epoch_plan(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(corpus_of, item_of)``: for every index of ``epoch``, its corpus and item number."""
        if epoch in self._cache:
            return self._cache[epoch]
        rng = np.random.default_rng([self.seed, int(epoch), 0x5041])
        corpus_of = np.repeat(np.arange(len(self.sizes), dtype=np.int64), self.quota)
        rng.shuffle(corpus_of)
        item_of = np.empty(self.epoch_size, dtype=np.int64)
        positions = np.argsort(corpus_of, kind="stable")  # grouped by corpus, in index order
        start = 0
        for c, (n, q) in enumerate(zip(self.sizes, self.quota)):
            if q == 0:
                continue
            perm = rng.permutation(n)
            item_of[positions[start:start + q]] = perm[np.arange(q) % n]
            start += q
        self._cache[epoch] = (corpus_of, item_of)
        while len(self._cache) > 2:  # batches near an epoch boundary may mix two epochs
            self._cache.popitem(last=False)
        return corpus_of, item_of

    def _locate(self, epoch: int, index: int) -> Tuple[int, int]:
        if not 0 <= index < self.epoch_size:
            raise IndexError(f"index {index} out of range for {self.epoch_size} samples")
        corpus_of, item_of = self.epoch_plan(epoch)
        return int(corpus_of[index]), int(item_of[index])

    def locate(self, key) -> Tuple[str, int]:
        """``(corpus name, item index)`` of a key (``(epoch, index)`` or a plain index)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        c, item = self._locate(epoch, index)
        return self.names[c], item

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        c, item = self._locate(epoch, index)
        name, pair = self.names[c], self.corpora[c][item]
        src, tgt, s_lang, t_lang = pair.src_text, pair.tgt_text, pair.src_lang, pair.tgt_lang
        if self.swap and sample_rng(self.seed, epoch, index).random() < 0.5:
            src, tgt, s_lang, t_lang = tgt, src, t_lang, s_lang
        return {"text": src, "lang": self.lang_to_id[s_lang], "pair_text": tgt,
                "pair_lang": self.lang_to_id[t_lang], "corpus": name, "skipped": []}


class ParallelCollator:
    """Tokenizes both sides (padding to the longest, truncation at ``max_length``).

    Batch: ``input_ids``, ``attention_mask``, ``lang`` (one side), ``pair_input_ids``,
    ``pair_attention_mask``, ``pair_lang`` (the other side) and ``n_skipped`` (a scalar, as the
    captions collator).
    """

    def __init__(self, tokenizer, max_length: int):
        if int(max_length) <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def _encode(self, texts: List[str]):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def __call__(self, samples: List[dict]) -> dict:
        a = self._encode([s["text"] for s in samples])
        b = self._encode([s["pair_text"] for s in samples])
        return {
            "input_ids": a["input_ids"],
            "attention_mask": a["attention_mask"],
            "lang": torch.tensor([s["lang"] for s in samples], dtype=torch.long),
            "pair_input_ids": b["input_ids"],
            "pair_attention_mask": b["attention_mask"],
            "pair_lang": torch.tensor([s["pair_lang"] for s in samples], dtype=torch.long),
            "n_skipped": torch.tensor(sum(len(s.get("skipped", ())) for s in samples),
                                      dtype=torch.long),
        }


def load_parallel_sources(sources, root: str, skips: Optional[SkipCounter] = None) -> "OrderedDict[str, List[ParallelPair]]":
    """Corpora named ``<type>:<path>[:<pair>]`` from config sources (:class:`xvl.config.ParallelSourceConfig`).

    Relative paths resolve against ``root`` (``data.root``) unless they exist as given. Corpora are
    split by language pair, so ``n^alpha`` sampling balances language pairs, not just files.
    """
    corpora: "OrderedDict[str, List[ParallelPair]]" = OrderedDict()

    def resolve(path: str) -> str:
        return path if (os.path.isabs(path) or os.path.exists(path) or os.path.exists(path + ".en")) \
            else os.path.join(root, path)

    for spec in sources:
        path = resolve(spec.path)
        if spec.type == "aligned":
            pairs = read_aligned_files(path, languages=spec.languages, pairs=spec.pairs, skips=skips)
        elif spec.type == "tatoeba":
            pairs = [p for ps in read_tatoeba(path, languages=spec.languages, skips=skips).values() for p in ps]
        elif spec.type == "pairs":
            pairs = read_pairs_file(path, src_lang=spec.src_lang, tgt_lang=spec.tgt_lang, skips=skips)
        elif spec.type == "hf":
            pairs = read_hf_pairs(path, src_field=spec.src_field, tgt_field=spec.tgt_field,
                                  src_lang=spec.src_lang, tgt_lang=spec.tgt_lang, skips=skips)
        else:  # captions
            pairs = pairs_from_captions(path, languages=spec.languages, skips=skips)
        for name, group in group_by_lang_pair(pairs).items():
            corpora[f"{spec.type}:{spec.path}:{name}"] = group
    return corpora
