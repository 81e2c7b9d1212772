"""The streamed sources of a run, from ``data.sources`` (see :class:`xvl.config.StreamSourceConfig`).

Three kinds of source feed the same batches:

- ``shards``: webdataset shards from ``xvl data make-shards`` (image-caption or parallel text),
  read by :class:`~xvl.data.streaming.ShardStream`;
- ``hf``: a ``datasets`` image-caption dataset, read by :class:`~xvl.data.hf_source.HFStream`;
- parallel text files (``aligned``, ``pairs``, ``tatoeba``, ``captions``), small enough to hold in
  memory, read by :class:`~xvl.data.streaming.ListStream`.

Everything that can be checked before training is checked by :func:`resolve_sources`: paths
exist, indexes parse, the shards' languages are known to the model, HF columns exist. Inside the
run, bad samples are counted and skipped by the item makers below (they run in the DataLoader
workers, so they are plain picklable classes).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

from xvl.data.captions import CaptionItemBuilder, caption_record_from_json
from xvl.data.images import SkipCounter
from xvl.data.shard_format import decode_image, decode_record, image_member
from xvl.data.stream_dataset import StreamSource

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- openers (one stream per slot)

class OpenShards:
    """Opens a slot's :class:`~xvl.data.streaming.ShardStream` over resolved shard URLs."""

    def __init__(self, urls: Sequence[str], counts: Optional[Sequence[int]], shuffle_buffer: int,
                 resampled: bool, too_few_shards: str):
        self.urls, self.counts = list(urls), (list(counts) if counts is not None else None)
        self.shuffle_buffer, self.resampled, self.too_few_shards = shuffle_buffer, resampled, too_few_shards

    def __call__(self, *, seed, rank, world_size, worker, num_workers, start, on_skip):
        from xvl.data.streaming import ShardStream

        return ShardStream(self.urls, seed=seed, shuffle_buffer=self.shuffle_buffer, resampled=self.resampled,
                           rank=rank, world_size=world_size, worker=worker, num_workers=num_workers, start=start,
                           sample_counts=self.counts, on_skip=on_skip, too_few_shards=self.too_few_shards)


class OpenList:
    """Opens a slot's :class:`~xvl.data.streaming.ListStream` over in-memory items."""

    def __init__(self, items: Sequence):
        self.items = list(items)

    def __call__(self, *, seed, rank, world_size, worker, num_workers, start, on_skip):
        from xvl.data.streaming import ListStream

        return ListStream(self.items, seed=seed, rank=rank, world_size=world_size, worker=worker,
                          num_workers=num_workers, start=start)


class OpenHF:
    """Opens a slot's :class:`~xvl.data.hf_source.HFStream` (the dataset is loaded in the worker:
    Arrow files are memory-mapped, so that is cheap, and nothing large is pickled)."""

    def __init__(self, path: str, split: Optional[str], streaming: bool, columns, shuffle_buffer: int):
        self.path, self.split, self.streaming = path, split, streaming
        self.columns, self.shuffle_buffer = columns, shuffle_buffer

    def __call__(self, *, seed, rank, world_size, worker, num_workers, start, on_skip):
        from xvl.data.hf_source import HFStream, load_hf_dataset

        ds = load_hf_dataset(self.path, split=self.split, streaming=self.streaming)
        return HFStream(ds, self.columns, seed=seed, shuffle_buffer=self.shuffle_buffer, rank=rank,
                        world_size=world_size, worker=worker, num_workers=num_workers, start=start, on_skip=on_skip)


# ---------------------------------------------------------------- item makers (raw -> item)

def _decoded_image(raw: dict, where: str, skips: SkipCounter):
    """The sample's RGB image, or None after counting ``no_image`` / ``bad_image``."""
    member = image_member(raw)
    if member is None:
        skips.skip("no_image", where)
        return None
    try:
        return decode_image(member[1])
    except ValueError as e:
        skips.skip("bad_image", f"{where}: {e}")
        return None


class CaptionItemMaker:
    """A raw image-caption sample (shards or HF) -> a caption item (:class:`CaptionItemBuilder`).

    The record is parsed first and the image decoded only when a caption is usable. Skips:
    ``bad_sample`` (no / invalid JSON), ``no_usable_caption`` / ``empty_caption`` /
    ``unknown_language`` (captions), ``no_image``, ``bad_image`` (undecodable bytes).
    """

    def __init__(self, builder: CaptionItemBuilder, languages: Optional[Sequence[str]] = None,
                 exclude_kinds: Sequence[str] = (), known_languages: Optional[Sequence[str]] = None):
        self.builder = builder
        self.keep = set(languages) if languages else None
        self.exclude_kinds = tuple(exclude_kinds)
        self.known = set(known_languages) if known_languages is not None else set(builder.lang_to_id)

    def __call__(self, raw: dict, rng, skips: SkipCounter) -> Optional[dict]:
        where = f"{raw.get('__url__', '')}#{raw.get('__key__')}"
        try:
            record = decode_record(raw)
        except ValueError as e:
            skips.skip("bad_sample", f"{where}: {e}")
            return None
        rec = caption_record_from_json(record, where, self.keep, self.exclude_kinds, self.known, skips,
                                       where=where, unknown_language="skip")
        if rec is None:
            return None
        img = _decoded_image(raw, where, skips)
        if img is None:
            return None
        return self.builder.build(rec, img, rng)


def _pair_item(lang_to_id, src, tgt, s_lang, t_lang) -> dict:
    return {"text": src, "lang": lang_to_id[s_lang], "pair_text": tgt, "pair_lang": lang_to_id[t_lang],
            "skipped": []}


class AlignedGroupItemMaker:
    """A raw parallel-text shard sample (``{"texts": {lang: text}}``) -> a translation pair item.

    ``pairs="all"``: two distinct languages of the group, uniformly; ``"pivot:en"``: another
    language with the pivot. The two sides are swapped at random (``swap``). Skips:
    ``bad_sample``, ``unknown_language`` (texts in a language the model has no id for),
    ``too_few_texts`` (fewer than two usable languages).
    """

    def __init__(self, lang_to_id: Dict[str, int], pairs: str = "all", languages: Optional[Sequence[str]] = None,
                 swap: bool = True):
        if pairs != "all" and not pairs.startswith("pivot:"):
            raise ValueError(f"pairs must be 'all' or 'pivot:<lang>', got {pairs!r}")
        self.lang_to_id, self.pairs, self.swap = dict(lang_to_id), pairs, swap
        self.keep = set(languages) if languages else None

    def __call__(self, raw: dict, rng, skips: SkipCounter) -> Optional[dict]:
        where = f"{raw.get('__url__', '')}#{raw.get('__key__')}"
        try:
            texts = decode_record(raw).get("texts") or {}
        except ValueError as e:
            skips.skip("bad_sample", f"{where}: {e}")
            return None
        usable = {}
        for lang, text in sorted(texts.items()):
            text = (text or "").strip() if isinstance(text, str) else ""
            if not text or (self.keep is not None and lang not in self.keep):
                continue
            if lang not in self.lang_to_id:
                skips.skip("unknown_language", f"{where}: {lang}")
                continue
            usable[lang] = text
        langs = sorted(usable)
        if self.pairs == "all":
            if len(langs) < 2:
                skips.skip("too_few_texts", where)
                return None
            a, b = rng.sample(langs, 2)
        else:
            pivot = self.pairs.split(":", 1)[1]
            others = [x for x in langs if x != pivot]
            if pivot not in usable or not others:
                skips.skip("too_few_texts", where)
                return None
            a, b = rng.choice(others), pivot
        if self.swap and rng.random() < 0.5:
            a, b = b, a
        return _pair_item(self.lang_to_id, usable[a], usable[b], a, b)


class VQAItemMaker:
    """A raw image sample with ``questions`` (``xvl data make-shards --vqa``) -> a VQA item: one of
    its questions (in ``languages``, with at least one answer in the vocabulary) picked at random,
    the image through ``transform`` (no random crops: questions ask about positions), the soft
    answer target. Skips: ``bad_sample``, ``no_usable_question`` (none in those languages and in
    the vocabulary), ``no_image``, ``bad_image``.
    """

    def __init__(self, transform, lang_to_id: Dict[str, int], answers: Sequence[str], languages: Sequence[str] = ("en",)):
        self.transform, self.lang_to_id = transform, dict(lang_to_id)
        self.answer_to_index = {a: i for i, a in enumerate(answers)}
        self.languages = [lang for lang in languages if lang in self.lang_to_id]
        if not self.languages:
            raise ValueError(f"question languages {list(languages)} are not in model.languages")

    def __call__(self, raw: dict, rng, skips: SkipCounter) -> Optional[dict]:
        from xvl.data.vqa import soft_target

        where = f"{raw.get('__url__', '')}#{raw.get('__key__')}"
        try:
            record = decode_record(raw)
        except ValueError as e:
            skips.skip("bad_sample", f"{where}: {e}")
            return None
        usable = []
        for q in record.get("questions") or []:
            target, _ = soft_target(q.get("answers") or {}, self.answer_to_index)
            if not target:
                continue
            for lang in self.languages:
                text = ((q.get("question") or {}).get(lang) or "").strip()
                if text:
                    usable.append((text, lang, target))
        if not usable:
            skips.skip("no_usable_question", where)
            return None
        text, lang, target = rng.choice(usable)
        img = _decoded_image(raw, where, skips)
        if img is None:
            return None
        return {"image": self.transform(img), "text": text, "lang": self.lang_to_id[lang], "target": target,
                "index": 0, "skipped": []}


class VQABatchCollator:
    """:class:`~xvl.data.vqa.VQACollator` with the question under ``vqa_*`` keys (``vqa_input_ids``,
    ``vqa_attention_mask``, ``vqa_lang``, ``vqa_targets``), so caption objectives skip VQA batches."""

    def __init__(self, tokenizer, max_length: int, num_answers: int):
        from xvl.data.vqa import VQACollator

        self.collate = VQACollator(tokenizer, max_length, num_answers)

    def __call__(self, samples: List[dict]) -> dict:
        b = self.collate(samples)
        return {"image": b["image"], "vqa_input_ids": b["input_ids"], "vqa_attention_mask": b["attention_mask"],
                "vqa_lang": b["lang"], "vqa_targets": b["targets"], "n_skipped": b["n_skipped"]}


class PairItemMaker:
    """An in-memory :class:`~xvl.data.parallel.ParallelPair` -> a translation pair item."""

    def __init__(self, lang_to_id: Dict[str, int], swap: bool = True):
        self.lang_to_id, self.swap = dict(lang_to_id), swap

    def __call__(self, pair, rng, skips: SkipCounter) -> dict:
        if self.swap and rng.random() < 0.5:
            return _pair_item(self.lang_to_id, pair.tgt_text, pair.src_text, pair.tgt_lang, pair.src_lang)
        return _pair_item(self.lang_to_id, pair.src_text, pair.tgt_text, pair.src_lang, pair.tgt_lang)


# ---------------------------------------------------------------- resolving the config

@dataclass
class ResolvedSource:
    """A checked ``data.sources`` entry: what it reads and which task it feeds."""

    name: str
    task: str
    weight: float
    config: object  # the StreamSourceConfig
    urls: List[str] = field(default_factory=list)  # shards
    counts: Optional[List[int]] = None  # shards: samples per shard (from the index)
    index: Optional[dict] = None
    pairs: Optional[list] = None  # text types: the ParallelPairs
    answers: Optional[List[str]] = None  # vqa: the answer vocabulary
    hf_columns: object = None
    path: str = ""  # the resolved path


def _resolve(root: str, path: str) -> str:
    return path if (os.path.isabs(path) or os.path.exists(path) or "://" in path) else os.path.join(root, path)


#: samples per shard when a run writes its own shards (``make_from``)
MAKE_FROM_SHARD_SAMPLES = 1000


def shard_output_path(root: str, path: str) -> str:
    """Where ``make_from`` shards live: ``path`` as given or under ``data.root`` when it exists
    there, else as given (relative to the working directory: ``data.root`` may be read-only)."""
    under_root = os.path.join(root, path)
    if not (os.path.isabs(path) or os.path.exists(path)) and os.path.exists(under_root):
        return under_root
    return path


def make_missing_shards(cfg, is_main: bool = True) -> None:
    """Write the shards of ``shards`` sources that name ``make_from`` and have no index yet (on the
    main process; the caller waits for it on the others)."""
    from xvl.data.shard_format import INDEX_NAME

    for src in cfg.data.sources:
        if src.type != "shards" or not src.make_from:
            continue
        out = shard_output_path(cfg.data.root, src.path)
        if os.path.exists(os.path.join(out, INDEX_NAME)):
            continue
        if not is_main:
            continue
        from xvl.data.shard_sources import JsonlImageSource
        from xvl.data.shards import write_shards

        jsonl = _resolve(cfg.data.root, src.make_from)
        if not os.path.exists(jsonl):
            raise FileNotFoundError(f"data.sources ({src.path}): make_from file not found: {jsonl}")
        image_root = _resolve(cfg.data.root, cfg.data.image_root) if cfg.data.image_root else None
        logger.info("writing shards of %s into %s (once; later runs read them)", jsonl, out)
        # small shards, so that many processes x workers each get several (a user converting a large
        # set picks sizes with `xvl data make-shards --max-samples/--max-bytes`)
        write_shards(JsonlImageSource(jsonl, image_root=image_root), out, seed=cfg.train.seed,
                     max_samples=MAKE_FROM_SHARD_SAMPLES)


def resolve_sources(cfg, known_languages: Sequence[str], skips: Optional[SkipCounter] = None) -> List[ResolvedSource]:
    """Check every ``data.sources`` entry and find what it reads (before any model work)."""
    from xvl.config import ParallelSourceConfig

    d = cfg.data
    known = set(known_languages)
    keep = set(d.languages) if d.languages else None
    out: List[ResolvedSource] = []
    for src in d.sources:
        name = src.name or f"{src.type}:{src.path}"
        path = shard_output_path(d.root, src.path) if src.make_from else _resolve(d.root, src.path)
        if src.type == "shards":
            from xvl.data.streaming import expand_shard_spec, shard_sample_counts

            urls = expand_shard_spec(path)
            counts = shard_sample_counts(path)
            index = _index_of(path)
            kind = (index or {}).get("kind", "image_text")
            task = src.task or ("text_pair" if kind == "parallel" else "image_text")
            if (task == "text_pair") != (kind == "parallel"):
                raise ValueError(f"data.sources {name}: task {task} does not fit {kind} shards")
            answers = None
            if task == "vqa":
                from xvl.data.vqa import load_answer_vocabulary

                answers = load_answer_vocabulary(_resolve(d.root, src.answers))
                if index is not None and not index.get("n_questions"):
                    raise ValueError(f"data.sources {name}: the shards hold no questions "
                                     "(write them with xvl data make-shards --vqa FILE)")
            if index is not None:
                langs = set(index.get("languages") or {})
                if task == "text_pair" and src.languages:
                    langs &= set(src.languages)
                if task == "image_text" and keep is not None:
                    langs &= keep
                if task == "vqa":
                    langs = set(src.question_languages)
                unknown = sorted(langs - known)
                if unknown:
                    raise ValueError(f"data.sources {name}: the shards have languages {unknown} that are not in "
                                     f"model.languages; add them there or filter with data.languages")
            out.append(ResolvedSource(name, task, src.weight, src, urls=urls, counts=counts, index=index,
                                      answers=answers))
        elif src.type == "hf":
            from xvl.data.hf_source import HFColumns, check_columns, load_hf_dataset

            if src.task not in (None, "image_text"):
                raise ValueError(f"data.sources {name}: hf sources feed image_text (got task {src.task})")
            cols = HFColumns(image=src.image_column, caption=src.caption_column, lang=src.lang_column,
                             default_lang=src.lang,
                             image_root=_resolve(d.root, src.image_root) if src.image_root else None)
            ds = load_hf_dataset(path, split=src.split, streaming=src.streaming)
            check_columns(ds, cols, name=f"data.sources {name}")
            if src.lang and src.lang not in known:
                raise ValueError(f"data.sources {name}: lang {src.lang} is not in model.languages")
            out.append(ResolvedSource(name, "image_text", src.weight, src, hf_columns=cols, path=path))
        else:
            from xvl.data.parallel import load_parallel_sources

            if src.task not in (None, "text_pair"):
                raise ValueError(f"data.sources {name}: {src.type} text feeds text_pair (got task {src.task})")
            pcfg = ParallelSourceConfig(type=src.type, path=src.path, languages=src.languages, pairs=src.pairs,
                                        src_lang=src.src_lang, tgt_lang=src.tgt_lang)
            corpora = load_parallel_sources([pcfg], d.root, skips)
            pairs = [p for ps in corpora.values() for p in ps]
            unknown = sorted({lang for p in pairs for lang in (p.src_lang, p.tgt_lang)} - known)
            if unknown:
                raise ValueError(f"data.sources {name}: languages {unknown} are not in model.languages")
            if not pairs:
                raise ValueError(f"data.sources {name}: no parallel pairs")
            out.append(ResolvedSource(name, "text_pair", src.weight, src, pairs=pairs))
    return out


def _index_of(path: str) -> Optional[dict]:
    import json

    from xvl.data.shard_format import INDEX_NAME

    if "://" in path:
        return None
    candidate = path if path.endswith(".json") else os.path.join(path, INDEX_NAME)
    if os.path.isfile(candidate):
        with open(candidate) as f:
            return json.load(f)
    return None


def stream_sources(resolved: Sequence[ResolvedSource], cfg, builder: Optional[CaptionItemBuilder],
                   lang_to_id: Dict[str, int], plain_transform=None) -> List[StreamSource]:
    """The :class:`StreamSource` of every resolved source (openers and item makers);
    ``plain_transform`` (resize only) is the image transform of VQA items."""
    s = cfg.data.stream
    out = []
    for r in resolved:
        src = r.config
        if src.type == "shards":
            opener = OpenShards(r.urls, r.counts, s.shuffle_buffer, s.resampled, s.too_few_shards)
        elif src.type == "hf":
            opener = OpenHF(r.path, src.split, src.streaming, r.hf_columns, s.shuffle_buffer)
        else:
            opener = OpenList(r.pairs)
        if r.task == "vqa":
            make = VQAItemMaker(plain_transform, lang_to_id, r.answers, src.question_languages)
        elif r.task == "image_text":
            make = CaptionItemMaker(builder, cfg.data.languages, cfg.data.exclude_kinds, list(lang_to_id))
        elif r.pairs is not None:
            make = PairItemMaker(lang_to_id, swap=cfg.data.parallel.swap)
        else:
            make = AlignedGroupItemMaker(lang_to_id, pairs=src.pairs, languages=src.languages,
                                         swap=cfg.data.parallel.swap)
        out.append(StreamSource(r.name, r.task, r.weight, opener, make))
    return out


def source_texts(resolved: Sequence[ResolvedSource], limit: int) -> Iterator[str]:
    """Up to ``limit`` sentences from the sources, in turn (to train a tokenizer on).

    Each source gives an equal share. A source that holds more than its share is thinned evenly
    (every k-th text) where its size is known (parallel text in memory; shards by their index),
    so that a share is not just the head of the data: parallel text is grouped by language pair,
    and its head would leave whole languages out of the vocabulary. Sources of unknown size
    (HF datasets, shards without an index) give their first texts.
    """
    per_source = max(1, limit // max(1, len(resolved)))
    for r in resolved:
        total = _text_count(r)
        step = max(1, -(-total // per_source)) if total else 1
        yield from _limited((t for i, t in enumerate(_texts_of(r)) if i % step == 0), per_source)


def _text_count(r: ResolvedSource) -> Optional[int]:
    """How many texts :func:`_texts_of` yields for ``r``, where known without reading it."""
    if r.pairs is not None:
        return 2 * len(r.pairs)
    if r.config.type == "shards" and r.index is not None and r.index.get("languages"):
        return int(sum(r.index["languages"].values()))
    return None


def _limited(it, n):
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def _texts_of(r: ResolvedSource) -> Iterator[str]:
    if r.pairs is not None:
        for p in r.pairs:
            yield p.src_text
            yield p.tgt_text
        return
    if r.config.type == "hf":
        from xvl.data.hf_source import examples_from_hf

        src = r.config
        for ex in examples_from_hf(r.path, split=src.split,
                                   image_column=src.image_column, caption_column=src.caption_column,
                                   lang_column=src.lang_column, lang=src.lang, image_root=r.hf_columns.image_root):
            for c in ex.record.get("captions") or []:
                if (c.get("text") or "").strip():
                    yield c["text"]
        return
    from xvl.data.streaming import ShardStream

    # one pass over the shards in order (a single slot, no shuffle), JSON members only
    stream = ShardStream(r.urls, seed=0, shuffle_buffer=0, sample_counts=r.counts,
                         on_skip=lambda reason, detail: None)
    for raw in stream:
        if stream.epoch > 0:
            return
        try:
            rec = decode_record(raw)
        except ValueError:
            continue
        for c in rec.get("captions") or []:
            if (c.get("text") or "").strip():
                yield c["text"]
        for t in (rec.get("texts") or {}).values():
            if isinstance(t, str) and t.strip():
                yield t
