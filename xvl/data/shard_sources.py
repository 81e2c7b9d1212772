"""Conversion sources for :func:`xvl.data.shards.write_shards`: datasets as lists of lazy samples.

A source lists its samples cheaply and loads one on demand, so the writer can shuffle the list
before any image is read and never holds more than one image in memory:

- ``kind``: ``"image_text"`` or ``"parallel"`` (:data:`xvl.data.shard_format.KINDS`).
- ``describe()``: a short string naming the input (stored in the shard index).
- ``items()``: lightweight item descriptors, always in the same (deterministic) order.
- ``load(item)``: the :class:`~xvl.data.shard_format.Example` of one item; reads the image bytes.
  A missing image file gives an Example with ``error="missing_image: <path>"`` (the writer
  reports it) instead of raising.
- ``source_skips``: what was dropped while reading the input files (e.g. empty VQA questions), as
  ``{"source_id", "reason", "detail"}`` dicts; the writer adds them to its report.

Everything that can be checked without reading images (files exist and parse, columns and
language codes) is checked when a source is built, so bad input fails before anything is written.
Samples that are unusable are left to the writer's validation (it counts and reports them).
"""
from __future__ import annotations

import csv
import glob
import os
import posixpath
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Union

from xvl.data.captions import read_caption_jsonl
from xvl.data.images import SkipCounter
from xvl.data.jsonl import iter_jsonl_objects
from xvl.data.languages import normalize_lang
from xvl.data.parallel import _aligned_paths, _load_aligned
from xvl.data.shard_format import IMAGE_EXTENSIONS, Example

__all__ = ["JsonlImageSource", "ImageFolderSource", "AlignedTextSource", "image_ext_of", "read_image_example"]


def image_ext_of(path: str) -> Optional[str]:
    """The shard member extension for an image file name (lower case, ``jpeg`` -> ``jpg``), or
    None when the suffix is not a known image extension (the writer then sniffs the format)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    ext = {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)
    return ext if ext in IMAGE_EXTENSIONS else None


def read_image_example(source_id: str, record: dict, path: str) -> Example:
    """An :class:`Example` with the bytes of the image at ``path``; ``error`` set (not raised)
    when the file is missing or unreadable."""
    if not os.path.isfile(path):
        return Example(source_id, record, error=f"missing_image: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return Example(source_id, record, error=f"unreadable_image: {path} ({e})")
    return Example(source_id, record, image=data, image_ext=image_ext_of(path))


class _RecordingSkips(SkipCounter):
    """A SkipCounter that also keeps every skip as a report entry."""

    def __init__(self, name: str, source_id: str):
        super().__init__(name)
        self.source_id = source_id
        self.entries: List[dict] = []

    def skip(self, reason: str, detail: str = "") -> None:
        super().skip(reason, detail)
        self.entries.append({"source_id": self.source_id, "reason": reason, "detail": detail})


# --------------------------------------------------------------------------------------------
# jsonl + images (flickr8k-ml / demo schema), optionally with VQA questions (gqa schema)
# --------------------------------------------------------------------------------------------
class JsonlImageSource:
    """Image-text samples from a captions jsonl (one record per image), optionally with questions.

    Each record is kept whole except its ``"image"`` path (``image_id`` defaults to that path).
    With ``vqa_path`` (gqa schema: ``{"qid", "image", "question": {lang: text}, "answers"}`` per
    line), each image's questions are attached as ``record["questions"] = [{"qid", "question",
    "answers"}]``, matched on the ``"image"`` string exactly as written in both files (when a
    caption file lists an image twice, its questions go to the first record). Images that only
    the VQA file names become samples with ``"captions": []`` and their questions, after the
    caption records, in the order of their first question.

    Args:
        jsonl_path: the captions file (``FileNotFoundError`` / ``ValueError`` naming file and line
            for a missing file or a bad record).
        image_root: directory the image paths are relative to (default: the jsonl's directory).
        vqa_path: a gqa-schema questions file (validated by :func:`xvl.data.vqa.read_vqa_jsonl`;
            empty question texts are dropped and listed in :attr:`source_skips`).
    """

    kind = "image_text"

    def __init__(self, jsonl_path: Optional[str], image_root: Optional[str] = None, vqa_path: Optional[str] = None):
        if jsonl_path is None and vqa_path is None:
            raise ValueError("JsonlImageSource needs a captions jsonl, a VQA file, or both")
        self.jsonl_path = os.fspath(jsonl_path) if jsonl_path is not None else None
        self.vqa_path = os.fspath(vqa_path) if vqa_path is not None else None
        self.image_root = os.fspath(image_root) if image_root else \
            os.path.dirname(os.path.abspath(self.jsonl_path or self.vqa_path))
        self.source_skips: List[dict] = []
        # questions-only data (e.g. gqa): every image comes from the VQA file
        records = read_caption_jsonl(self.jsonl_path) if self.jsonl_path else []  # fails on a bad line
        if not os.path.isdir(self.image_root):
            raise FileNotFoundError(f"image root not found: {self.image_root}")
        # (image path as written, record without "image")
        self._samples: List[tuple] = []
        first_of: Dict[str, int] = {}
        for rec in records:
            image = rec["image"]
            record = {k: v for k, v in rec.items() if k != "image"}
            record["image_id"] = str(record.get("image_id", image))
            first_of.setdefault(image, len(self._samples))
            self._samples.append((image, record))
        if self.vqa_path is not None:
            self._attach_questions(first_of)

    def _attach_questions(self, first_of: Dict[str, int]) -> None:
        from xvl.data.vqa import read_vqa_jsonl

        skips = _RecordingSkips(os.path.basename(self.vqa_path), self.vqa_path)
        by_image: "OrderedDict[str, List[dict]]" = OrderedDict()
        for q in read_vqa_jsonl(self.vqa_path, skips=skips):
            by_image.setdefault(q.image, []).append(
                {"qid": q.qid, "question": dict(q.questions), "answers": dict(q.answers)})
        self.source_skips.extend(skips.entries)
        for image, questions in by_image.items():
            if image in first_of:
                record = self._samples[first_of[image]][1]
                record["questions"] = list(record.get("questions") or []) + questions
            else:
                self._samples.append((image, {"image_id": image, "captions": [], "questions": questions}))

    def describe(self) -> str:
        out = (f"jsonl:{self.jsonl_path} " if self.jsonl_path else "") + f"images:{self.image_root}"
        return out + (f" vqa:{self.vqa_path}" if self.vqa_path else "")

    def items(self) -> List[int]:
        """Sample numbers: caption records in file order, then VQA-only images."""
        return list(range(len(self._samples)))

    def load(self, item: int) -> Example:
        image, record = self._samples[item]
        # a copy: the writer edits records (cleaned captions, width/height)
        return read_image_example(record["image_id"], dict(record), os.path.join(self.image_root, image))


# --------------------------------------------------------------------------------------------
# image folder + captions table
# --------------------------------------------------------------------------------------------
def _norm_rel(path: str) -> str:
    return posixpath.normpath(path.replace(os.sep, "/"))


class ImageFolderSource:
    """Image-text samples from a folder of images and a captions file.

    The captions file is ``.tsv`` / ``.csv`` with a header naming an ``image`` column (file name
    relative to ``folder``), a ``text`` (or ``caption``) column, and optionally ``lang`` and
    ``source``; or ``.jsonl`` with the same fields per line. Without a ``lang`` column (or for an
    empty lang cell) ``lang`` is used; without either it is an error. Language codes are
    normalised (``de_DE`` -> ``de``). Several rows of one image make one sample with all its
    captions (kind ``native``). Images in the folder (recursively; known image extensions) without
    any caption row are listed too and reported by the writer as ``no_caption``; rows naming an
    image that does not exist are reported as ``missing_image``.
    """

    kind = "image_text"

    def __init__(self, folder: str, captions_file: str, lang: Optional[str] = None):
        self.folder = os.fspath(folder)
        self.captions_file = os.fspath(captions_file)
        self.lang = normalize_lang(lang) if lang else None
        self.source_skips: List[dict] = []
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(f"image folder not found: {self.folder}")
        if not os.path.isfile(self.captions_file):
            raise FileNotFoundError(f"captions file not found: {self.captions_file}")
        captions: Dict[str, List[dict]] = {}
        for where, row in self._rows():
            image = row["image"]
            cap = {"lang": row["lang"], "text": row["text"], "kind": "native"}
            if row.get("source"):
                cap["source"] = row["source"]
            captions.setdefault(image, []).append(cap)
        on_disk = set()
        for dirpath, _, files in os.walk(self.folder):
            for name in files:
                if image_ext_of(name) is not None:
                    on_disk.add(_norm_rel(os.path.relpath(os.path.join(dirpath, name), self.folder)))
        self._captions = captions
        self._images = sorted(on_disk | set(captions))

    def _rows(self):
        """``(where, {"image", "text", "lang", "source"?})`` for every caption row."""
        path = self.captions_file
        ext = os.path.splitext(path)[1].lower()
        if ext in (".tsv", ".csv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
                header = reader.fieldnames or []
                text_col = "text" if "text" in header else "caption" if "caption" in header else None
                if "image" not in header or text_col is None:
                    raise ValueError(f"{path}: the header needs an 'image' column and a 'text' (or 'caption') "
                                     f"column, got {header}")
                if "lang" not in header and self.lang is None:
                    raise ValueError(f"{path} has no 'lang' column: give the captions' language (--lang)")
                rows = [(f"{path}, line {reader.line_num}", row) for row in reader]
            records = [(where, {"image": r.get("image"), "text": r.get(text_col), "lang": r.get("lang"),
                                "source": r.get("source")}) for where, r in rows]
        elif ext == ".jsonl":
            records = []
            for lineno, r in iter_jsonl_objects(path, what="captions file"):
                text = r.get("text", r.get("caption"))
                records.append((f"{path}, line {lineno}", {"image": r.get("image"), "text": text,
                                                           "lang": r.get("lang"), "source": r.get("source")}))
        else:
            raise ValueError(f"{path}: captions file must be .tsv, .csv or .jsonl")
        for where, r in records:
            if not isinstance(r["image"], str) or not r["image"].strip():
                raise ValueError(f"{where}: row has no image file name")
            r["image"] = _norm_rel(r["image"].strip())
            if r["text"] is not None and not isinstance(r["text"], str):
                raise ValueError(f"{where}: caption text must be a string, got {type(r['text']).__name__}")
            r["text"] = r["text"] or ""  # empty captions are dropped (and counted) by the writer
            lang = r["lang"]
            if lang is None or (isinstance(lang, str) and not lang.strip()):
                if self.lang is None:
                    raise ValueError(f"{where}: caption has no language and no default was given (--lang)")
                r["lang"] = self.lang
            else:
                try:
                    r["lang"] = normalize_lang(str(lang).strip())
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
            if not isinstance(r.get("source"), str) or not r["source"]:
                r.pop("source", None)
            yield where, r

    def describe(self) -> str:
        return f"image-folder:{self.folder} captions:{self.captions_file}"

    def items(self) -> List[str]:
        """Image paths relative to the folder, sorted."""
        return list(self._images)

    def load(self, item: str) -> Example:
        caps = self._captions.get(item)
        record = {"image_id": item, "captions": [dict(c) for c in caps or []]}
        if not caps:  # no need to read an image that will not be written
            return Example(item, record, error=f"no_caption: {item} has no caption in {self.captions_file}")
        return read_image_example(item, record, os.path.join(self.folder, *item.split("/")))


# --------------------------------------------------------------------------------------------
# line-aligned text files
# --------------------------------------------------------------------------------------------
def _discover_languages(prefix: str) -> List[str]:
    """Languages of the ``<prefix>.<lang>`` files that exist (suffixes that are language codes)."""
    langs = []
    for path in sorted(glob.glob(glob.escape(prefix) + ".*")):
        suffix = path[len(prefix) + 1:]
        try:
            normalize_lang(suffix)
        except ValueError:
            continue
        if os.path.isfile(path):
            langs.append(suffix)
    return langs


class AlignedTextSource:
    """Parallel-text samples from line-aligned files (line ``i`` of every file: the same sentence).

    ``paths_or_prefix`` is ``{lang: path}`` or a prefix with ``languages`` (files
    ``<prefix>.<lang>``, as :func:`xvl.data.parallel.read_aligned_files`); with a prefix and no
    languages, every ``<prefix>.<code>`` file whose suffix is a language code is used. One sample
    per line: ``{"id": "<1-based line number>", "texts": {lang: text}}`` with empty texts left
    out; the writer skips lines with fewer than two texts (``too_few_texts``). Files with different
    line counts raise ``ValueError`` naming both.
    """

    kind = "parallel"

    def __init__(self, paths_or_prefix: Union[Mapping[str, str], str], languages: Optional[Sequence[str]] = None):
        if isinstance(paths_or_prefix, (str, os.PathLike)) and not languages:
            prefix = os.fspath(paths_or_prefix)
            languages = _discover_languages(prefix)
            if len(languages) < 2:
                raise FileNotFoundError(f"aligned text: found {len(languages)} file(s) named {prefix}.<lang> "
                                        f"({languages}); need at least two, or give the languages")
        self.paths = _aligned_paths(paths_or_prefix, languages)
        self.source_skips: List[dict] = []
        self._lines = _load_aligned(self.paths)  # fails on missing files and different line counts
        self._n = len(next(iter(self._lines.values())))

    def describe(self) -> str:
        return "aligned:" + ",".join(f"{lang}={p}" for lang, p in self.paths.items())

    def items(self) -> List[int]:
        """Line indices (0-based)."""
        return list(range(self._n))

    def load(self, item: int) -> Example:
        texts = {lang: lines[item].strip() for lang, lines in self._lines.items() if lines[item].strip()}
        return Example(f"line {item + 1}", {"id": str(item + 1), "texts": texts})
