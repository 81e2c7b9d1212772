"""Image-caption data in the flickr8k-ml jsonl schema, as a map-style torch Dataset.

Schema (one record per image)::

    {"image_id": str, "image": "images/<id>.jpg",
     "captions": [{"lang": "de", "text": "...", "kind": "native", "source": "..."}, ...]}

Everything that can be checked cheaply is checked when the source is opened, before training:
the file exists and parses, image files exist, captions are non-empty, languages are known to the
model. Problems are skipped, counted and logged (never silent). Images that turn out undecodable
inside a running job are replaced by another sample (deterministically) and counted, so batch sizes
stay equal across processes (the gathered contrastive loss needs that).

Randomness (which caption, the crop) is a pure function of (seed, epoch, index), so a resumed run
sees exactly the samples an uninterrupted one would.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from xvl.data.images import SkipCounter, load_image
from xvl.data.jsonl import iter_jsonl_objects

logger = logging.getLogger(__name__)


#: caption kinds that belong to an image's translation set (strictly aligned with each other when
#: they share a ``source``); ``native`` captions are independent (weakly aligned)
TRANSLATION_KINDS = ("original", "human_translation")

#: ``pair_kind`` values in a batch (see :class:`ImageCaptionDataset`)
PAIR_NONE, PAIR_WEAK, PAIR_STRICT = 0, 1, 2


@dataclass
class CaptionRecord:
    image_id: str
    image_path: str
    captions: Dict[str, List[str]]  # lang -> texts
    # lang -> per-caption translation-set key (the source for original/human_translation, else None)
    groups: Optional[Dict[str, List[Optional[str]]]] = None
    # labelled boxes: [{"box": [x0, y0, x1, y1] in [0, 1] of the image, "labels": {lang: label}}]
    objects: Optional[List[dict]] = None


def read_caption_jsonl(path: str) -> List[dict]:
    """Read a captions-schema jsonl file (one JSON object per line; blank lines are ignored).

    Raises ``FileNotFoundError`` when the file does not exist and ``ValueError`` naming the file
    and the 1-based line number for a line that is not valid UTF-8 / JSON, is not a JSON object,
    or lacks an ``"image"`` string or a ``"captions"`` list.
    """
    path = os.fspath(path)
    records = []
    for lineno, rec in iter_jsonl_objects(path):
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise ValueError(f"{path}, line {lineno}: record has no \"image\" path")
        if not isinstance(rec.get("captions"), list):
            raise ValueError(f"{path}, line {lineno}: record has no \"captions\" list")
        records.append(rec)
    return records


def caption_record_from_json(r: dict, image_path: str, keep_langs: Optional[set] = None,
                             exclude_kinds: Sequence[str] = (), known: Optional[set] = None,
                             skips: Optional[SkipCounter] = None, where: str = "",
                             unknown_language: str = "error") -> Optional[CaptionRecord]:
    """One schema record (a jsonl line or a shard sample's JSON) as a :class:`CaptionRecord`.

    Captions outside ``keep_langs`` or of an excluded kind are dropped; empty ones are counted in
    ``skips`` (``empty_caption``). A caption language outside ``known`` is an error
    (``unknown_language="error"``: files checked before training) or a counted skip (``"skip"``:
    streamed data, where an error hours in would be worse). Returns None (counted as
    ``no_usable_caption``) when no caption is left.
    """
    skips = skips if skips is not None else SkipCounter("captions")
    caps: Dict[str, List[str]] = {}
    groups: Dict[str, List[Optional[str]]] = {}
    for c in r.get("captions") or []:
        lang = c.get("lang")
        if keep_langs is not None and lang not in keep_langs:
            continue
        if c.get("kind") in exclude_kinds:
            continue
        if known is not None and lang not in known:
            if unknown_language == "skip":
                skips.skip("unknown_language", f"image {r.get('image_id')} lang {lang}")
                continue
            raise ValueError(
                f"{where}: caption language '{lang}' (image {r.get('image_id')}) is not in "
                f"model.languages {sorted(known)}; add it there or filter with data.languages")
        text = (c.get("text") or "").strip()
        if not text:
            skips.skip("empty_caption", f"image {r.get('image_id')} lang {lang}")
            continue
        caps.setdefault(lang, []).append(text)
        in_set = c.get("kind") in TRANSLATION_KINDS and c.get("source") is not None
        groups.setdefault(lang, []).append(str(c["source"]) if in_set else None)
    if not caps:
        skips.skip("no_usable_caption", str(r.get("image_id")))
        return None
    return CaptionRecord(str(r.get("image_id", r.get("image"))), image_path, caps, groups,
                         r.get("objects") or None)


def load_caption_records(path: str, image_root: Optional[str] = None, languages: Optional[Sequence[str]] = None,
                         exclude_kinds: Sequence[str] = (), known_languages: Optional[Sequence[str]] = None,
                         max_records: Optional[int] = None, skips: Optional[SkipCounter] = None,
                         check_files: bool = True) -> List[CaptionRecord]:
    """Read and validate a captions jsonl.

    Args:
        image_root: directory image paths are relative to (default: the jsonl's directory).
        languages: keep only captions in these languages.
        exclude_kinds: drop captions of these kinds (e.g. ``machine_translation``).
        known_languages: languages the model has ids for; a caption in another language is an
            error here (before training), unless ``languages`` filtered it out.
        check_files: skip (and count) records whose image file is missing.
    """
    skips = skips if skips is not None else SkipCounter(os.path.basename(path))
    image_root = image_root or os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image root not found: {image_root}")
    keep_langs = set(languages) if languages else None
    known = set(known_languages) if known_languages is not None else None
    out: List[CaptionRecord] = []
    for r in read_caption_jsonl(path):
        if max_records is not None and len(out) >= max_records:
            break
        img = os.path.join(image_root, r["image"])
        rec = caption_record_from_json(r, img, keep_langs, exclude_kinds, known, skips, where=path)
        if rec is None:
            continue
        if check_files and not os.path.exists(img):
            skips.skip("missing_image", img)
            continue
        out.append(rec)
    if not out:
        raise ValueError(f"{path}: no usable records (skips: {skips.as_dict()})")
    logger.info("%s: %d images, %d captions, languages %s, skipped %s", path, len(out),
                sum(len(v) for rec in out for v in rec.captions.values()),
                sorted({lang for rec in out for lang in rec.captions}), skips.as_dict())
    return out


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG for one sample in one epoch: independent of workers, processes and resume points."""
    return random.Random((seed * 1_000_003 + epoch) * 10_000_019 + index)


class CaptionItemBuilder:
    """Turns one image record and its decoded image into a training item (shared by the map-style
    :class:`ImageCaptionDataset` and the streamed sources of :mod:`xvl.data.stream_dataset`).

    ``caption_sampling="uniform_language"`` picks a language uniformly among the image's, then a
    caption of it (balances languages with very different caption counts); ``"uniform_caption"``
    picks uniformly among all captions.

    ``pair_sampling`` adds a second caption of the same image (``pair_text``, ``pair_lang``,
    ``pair_kind``) for the cross-view objectives (CCLM's caption-translation view, RC3):

    - ``"none"``: no second caption.
    - ``"any"``: a caption in another language (language uniform, then caption); ``pair_kind`` is
      :data:`PAIR_STRICT` when both captions are in the image's translation set with the same
      ``source`` (``original`` / ``human_translation``: translations of each other), else
      :data:`PAIR_WEAK` (independently written, e.g. ``native``).
    - ``"prefer_strict"``: a translation of the caption when the image has one, else as ``"any"``.

    An image with captions in one language only gets another caption of that language
    (:data:`PAIR_WEAK`), or, with a single caption, the caption itself (:data:`PAIR_NONE`: the
    objectives ignore such rows).

    ``with_objects``: also return the record's labelled boxes with coordinates normalized to
    [0, 1] of the image (for MRTM); resize-only transforms keep them valid, random crops do not.
    """

    def __init__(self, transform: Callable, lang_to_id: Dict[str, int], caption_sampling: str = "uniform_language",
                 pair_sampling: str = "none", with_objects: bool = False):
        if pair_sampling not in ("none", "any", "prefer_strict"):
            raise ValueError(f"pair_sampling must be none, any or prefer_strict, got {pair_sampling!r}")
        if caption_sampling not in ("uniform_language", "uniform_caption"):
            raise ValueError(f"caption_sampling must be uniform_language or uniform_caption, got {caption_sampling!r}")
        self.transform = transform
        self.lang_to_id = lang_to_id
        self.caption_sampling = caption_sampling
        self.pair_sampling = pair_sampling
        self.with_objects = with_objects

    def pick_caption(self, rec: CaptionRecord, rng: random.Random):
        """(lang, position in rec.captions[lang])"""
        if self.caption_sampling == "uniform_language":
            lang = rng.choice(sorted(rec.captions))
            return lang, rng.randrange(len(rec.captions[lang]))
        flat = [(lang, j) for lang in sorted(rec.captions) for j in range(len(rec.captions[lang]))]
        return rng.choice(flat)

    def pick_pair(self, rec: CaptionRecord, lang: str, j: int, rng: random.Random):
        """(lang, position, pair kind) of the second caption."""
        groups = rec.groups or {}
        key = groups.get(lang, [None] * (j + 1))[j]

        def strict(other: str, k: int) -> bool:
            return key is not None and groups.get(other, [None] * (k + 1))[k] == key

        others = sorted(x for x in rec.captions if x != lang)
        if self.pair_sampling == "prefer_strict" and key is not None:
            cands = [(x, k) for x in others for k in range(len(rec.captions[x])) if strict(x, k)]
            if cands:
                x, k = rng.choice(cands)
                return x, k, PAIR_STRICT
        if others:
            x = rng.choice(others)
            k = rng.randrange(len(rec.captions[x]))
            return x, k, PAIR_STRICT if strict(x, k) else PAIR_WEAK
        rest = [k for k in range(len(rec.captions[lang])) if k != j]
        if rest:
            return lang, rng.choice(rest), PAIR_WEAK
        return lang, j, PAIR_NONE

    @staticmethod
    def normalized_objects(rec: CaptionRecord, width: int, height: int) -> List[dict]:
        out = []
        for o in rec.objects or []:
            x0, y0, x1, y1 = (float(v) for v in o["box"])
            out.append({"box": [x0 / width, y0 / height, x1 / width, y1 / height],
                        "labels": dict(o.get("labels") or ({"en": o["label"]} if "label" in o else {}))})
        return out

    def build(self, rec: CaptionRecord, img, rng: random.Random, skipped: Optional[List[str]] = None) -> dict:
        """The item for ``rec`` with its decoded RGB image ``img``; all randomness from ``rng``."""
        lang, j = self.pick_caption(rec, rng)
        # the crop's randomness comes from the same per-sample seed (exact resume). Only the CPU
        # generator: torch.manual_seed also seeds every accelerator backend, which costs more
        # than decoding the image (a quarter of a loader worker's time)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(rng.getrandbits(63))
            pixels = self.transform(img)
        sample = {"image": pixels, "text": rec.captions[lang][j], "lang": self.lang_to_id[lang],
                  "skipped": list(skipped or [])}
        if self.pair_sampling != "none":
            plang, k, kind = self.pick_pair(rec, lang, j, rng)
            sample.update(pair_text=rec.captions[plang][k], pair_lang=self.lang_to_id[plang], pair_kind=kind)
        if self.with_objects:
            sample["objects"] = self.normalized_objects(rec, *img.size)
        return sample


class ImageCaptionDataset(Dataset):
    """One item per image: the image tensor and one caption sampled per epoch (plus, by
    ``pair_sampling``, a second caption; by ``with_objects``, its boxes): see
    :class:`CaptionItemBuilder` for the sampling options.
    """

    MAX_RETRIES = 10

    def __init__(self, records: List[CaptionRecord], transform: Callable, lang_to_id: Dict[str, int],
                 seed: int = 0, caption_sampling: str = "uniform_language", pair_sampling: str = "none",
                 with_objects: bool = False):
        self.builder = CaptionItemBuilder(transform, lang_to_id, caption_sampling, pair_sampling, with_objects)
        self.records = records
        self.seed = seed

    @property
    def pair_sampling(self) -> str:
        return self.builder.pair_sampling

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        """``key`` is ``(epoch, index)`` (from :class:`~xvl.data.sampler.ResumableBatchSampler`) or
        a plain index (epoch 0)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped: List[str] = []
        for attempt in range(self.MAX_RETRIES):
            # on an undecodable image, fall back to another record, chosen deterministically
            i = (index + attempt * 7919) % len(self.records)
            rec = self.records[i]
            img = load_image(rec.image_path)
            if img is None:
                logger.warning("undecodable or missing image skipped: %s", rec.image_path)
                skipped.append("bad_image")
                continue
            return self.builder.build(rec, img, sample_rng(self.seed, epoch, i), skipped)
        raise RuntimeError(f"{self.MAX_RETRIES} consecutive unreadable images near index {index}; "
                           "is the image root right?")


class CaptionCollator:
    """Stacks images, tokenizes captions (and second captions), carries language ids and skip counts.

    Batch keys: ``image``, ``input_ids``, ``attention_mask``, ``lang``, ``n_skipped``; with pairs
    also ``pair_input_ids``, ``pair_attention_mask``, ``pair_lang``, ``pair_kind``; with objects
    ``objects`` (a list per row of ``{"box", "labels"}`` dicts).
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _encode(self, texts: List[str]):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def __call__(self, samples: List[dict]) -> dict:
        enc = self._encode([s["text"] for s in samples])
        batch = {
            "image": torch.stack([s["image"] for s in samples]),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "lang": torch.tensor([s["lang"] for s in samples], dtype=torch.long),
            "n_skipped": torch.tensor(sum(len(s["skipped"]) for s in samples)),
        }
        if "pair_text" in samples[0]:
            pair = self._encode([s["pair_text"] for s in samples])
            batch.update(pair_input_ids=pair["input_ids"], pair_attention_mask=pair["attention_mask"],
                         pair_lang=torch.tensor([s["pair_lang"] for s in samples], dtype=torch.long),
                         pair_kind=torch.tensor([s["pair_kind"] for s in samples], dtype=torch.long))
        if "objects" in samples[0]:
            batch["objects"] = [s["objects"] for s in samples]
        return batch


class PreparingCollator:
    """A collator followed by objective input preparers (e.g. MLM/TLM masking).

    The preparers' randomness comes from a generator seeded by ``seed`` and the batch's token ids,
    so it is independent of worker assignment and identical when a resumed run redraws the batch.
    """

    def __init__(self, collate, preparers, tokenizer, seed: int = 0):
        self.collate, self.preparers, self.tokenizer, self.seed = collate, list(preparers), tokenizer, seed

    def __call__(self, samples: List[dict]) -> dict:
        batch = self.collate(samples)
        ids = batch["input_ids"]
        weights = torch.arange(1, ids.numel() + 1, dtype=torch.float64).view_as(ids)
        content = int((ids.double() * weights).sum().item()) % (2**31)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + content)
        for prepare in self.preparers:
            prepare(batch, self.tokenizer, generator=g)
        return batch
