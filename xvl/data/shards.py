"""Write a dataset as webdataset tar shards (:mod:`xvl.data.shard_format`), with an index and a report.

:func:`write_shards` takes a conversion source (:mod:`xvl.data.shard_sources`: ``items()`` +
``load(item)``) or any iterable of :class:`~xvl.data.shard_format.Example`, validates every sample
and writes the usable ones::

    OUT/shard-000000.tar, shard-000001.tar, ...   the samples (``<key>.json`` + ``<key>.<ext>``)
    OUT/report.jsonl                              one line per skipped sample or dropped caption
    OUT/index.json                                written last: present = conversion complete

Output is a pure function of the input and the seed: sources are shuffled by permuting their item
list with ``random.Random(seed)`` (before any image is read), tar members carry fixed metadata
(mtime, owner, mode), records are encoded with sorted keys, and the index holds no timestamps. The
same input and seed therefore give byte-identical shards.

Validation (never silent; every case is a line in ``report.jsonl`` and a count in the index):

- ``Example.error`` (e.g. ``missing_image: <path>``): skipped with that reason.
- image bytes that do not fully decode: ``bad_image``.
- image-text: captions with empty text are dropped (``empty_caption``) and captions without a
  language (``bad_caption``); a sample left with no caption and no question: ``no_caption``; a
  sample without image bytes: ``no_image``.
- parallel: empty texts are dropped (``empty_text``); fewer than two texts left: ``too_few_texts``.

A skipped sample gets exactly one report line (its reason; the detail says what was wrong). Caption
and text drops are reported for the samples that are written.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

from xvl.atomic import atomic_write_text
from xvl.data.shard_format import FORMAT, IMAGE_EXTENSIONS, INDEX_NAME, KINDS, Example, decode_image, encode_record, sample_key

logger = logging.getLogger(__name__)

__all__ = ["write_shards", "read_index", "shard_paths", "tar_member_size", "REPORT_NAME", "TAR_MTIME"]

#: conversion report written next to the shards
REPORT_NAME = "report.jsonl"
#: modification time of every tar member (fixed: same input, same bytes)
TAR_MTIME = 0
_TAR_BLOCK = 512

# PIL format name -> member extension, for images whose file name has no known extension
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}


def tar_member_size(n: int) -> int:
    """Approximate bytes a member of ``n`` data bytes takes in a tar: a 512-byte header plus the
    data padded to 512 bytes (what :func:`write_shards` compares with ``max_bytes``)."""
    return _TAR_BLOCK + -(-n // _TAR_BLOCK) * _TAR_BLOCK


def _is_source(obj) -> bool:
    return callable(getattr(obj, "items", None)) and callable(getattr(obj, "load", None)) \
        and not isinstance(obj, dict)


def _sniff_ext(data: bytes) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _PIL_EXT.get(im.format or "")
    except Exception:  # noqa: BLE001 - undecodable bytes are reported by decode_image
        return None


def _split_error(error: str) -> Tuple[str, str]:
    """``"missing_image: /x.jpg"`` -> ``("missing_image", "/x.jpg")``."""
    reason, _, detail = str(error).partition(":")
    reason = reason.strip()
    if not reason or " " in reason:  # free text, not a reason tag
        return "error", str(error)
    return reason, detail.strip()


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _clean_image_text(ex: Example) -> Tuple[dict, bytes, str, List[Tuple[str, str]], Dict[str, int]]:
    """(record, image bytes, ext, drops, caption counts per language) or raises :class:`_Skip`."""
    record = dict(ex.record)
    drops: List[Tuple[str, str]] = []
    captions = []
    raw = record.get("captions") or []
    if not isinstance(raw, list):
        raise _Skip("bad_record", f"captions is a {type(raw).__name__}, not a list")
    for c in raw:
        if not isinstance(c, dict) or not isinstance(c.get("lang"), str) or not c["lang"].strip():
            drops.append(("bad_caption", f"caption without a language: {c!r:.80}"))
            continue
        text = c.get("text")
        if not isinstance(text, str) or not text.strip():
            drops.append(("empty_caption", f"lang {c['lang']}"))
            continue
        captions.append({**c, "text": text.strip()})
    questions = record.get("questions") or []
    if not captions and not questions:
        detail = f"{len(raw)} caption(s), none usable" + (f" ({', '.join(sorted({r for r, _ in drops}))})"
                                                         if drops else "")
        raise _Skip("no_caption", detail)
    if ex.image is None:
        raise _Skip("no_image", "image-text sample without image bytes")
    try:
        img = decode_image(ex.image)
    except ValueError as e:
        # PIL names the stream object by its memory address: not reproducible, and says nothing
        raise _Skip("bad_image", re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the image bytes", str(e))) \
            from None
    ext = (ex.image_ext or "").lower().lstrip(".")
    ext = {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)
    if ext not in IMAGE_EXTENSIONS:
        ext = _sniff_ext(ex.image)
        if ext is None:
            raise _Skip("bad_image", f"image format not storable (extension {ex.image_ext!r})")
    record["captions"] = captions
    record["width"], record["height"] = img.size
    record.setdefault("image_id", ex.source_id)
    langs = Counter(c["lang"] for c in captions)
    return record, ex.image, ext, drops, dict(langs)


def _clean_parallel(ex: Example) -> Tuple[dict, List[Tuple[str, str]], Dict[str, int]]:
    record = dict(ex.record)
    raw = record.get("texts")
    if not isinstance(raw, dict):
        raise _Skip("too_few_texts", "record has no texts {lang: text}")
    texts, drops = {}, []
    for lang, text in raw.items():
        if isinstance(text, str) and text.strip():
            texts[lang] = text.strip()
        else:
            drops.append(("empty_text", f"lang {lang}"))
    if len(texts) < 2:
        raise _Skip("too_few_texts", f"texts in {sorted(texts)} only")
    record["texts"] = texts
    return record, drops, {lang: 1 for lang in texts}


class _ShardWriter:
    """One tar at a time, written under a temporary name and renamed when complete."""

    def __init__(self, out_dir: str, prefix: str):
        self.out_dir, self.prefix = out_dir, prefix
        self.shards: List[dict] = []
        self._tar = self._fh = None

    @property
    def open(self) -> bool:
        return self._tar is not None

    def start(self) -> None:
        from webdataset import TarWriter

        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = os.path.join(self.out_dir, f".{name}.tmp")
        self._fh = open(self._tmp, "wb")
        # fixed metadata: the tar bytes depend on the samples only
        self._tar = TarWriter(self._fh, user="xvl", group="xvl", encoder=False, mtime=TAR_MTIME)
        self.shards.append({"file": name, "n_samples": 0, "n_bytes": 0, "languages": Counter(),
                            "estimate": 0})

    def write(self, key: str, members: Dict[str, bytes], langs: Dict[str, int], extra: Dict[str, int]) -> None:
        self._tar.write({"__key__": key, **members})
        cur = self.shards[-1]
        cur["n_samples"] += 1
        cur["estimate"] += sum(tar_member_size(len(v)) for v in members.values())
        cur["languages"].update(langs)
        for k, v in extra.items():
            cur[k] = cur.get(k, 0) + v

    def finish(self) -> None:
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        cur = self.shards[-1]
        final = os.path.join(self.out_dir, cur["file"])
        os.replace(self._tmp, final)
        cur["n_bytes"] = os.path.getsize(final)
        self._tar = self._fh = None

    def abort(self) -> None:
        if self._fh is not None:
            try:  # close the tar stream first, or its finaliser writes to a closed file later
                self._tar.close()
            except Exception:  # noqa: BLE001 - the file is removed anyway
                pass
            self._fh.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tar = self._fh = None


def _prepare_out_dir(out_dir: str, prefix: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"shard output {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    index = os.path.join(out_dir, INDEX_NAME)
    old = sorted(glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-*.tar")))
    if (old or os.path.exists(index)) and not overwrite:
        what = INDEX_NAME if os.path.exists(index) else f"{len(old)} {prefix}-*.tar shard(s)"
        raise FileExistsError(f"{out_dir} already holds shards ({what}); pass overwrite=True (--overwrite) "
                              "to replace them, or choose another output directory")
    # the index first: a directory without index.json is never mistaken for a complete conversion
    for path in [index] + old + [os.path.join(out_dir, REPORT_NAME)] + \
            glob.glob(os.path.join(glob.escape(out_dir), f".{glob.escape(prefix)}-*.tar.tmp")):
        if os.path.exists(path):
            os.unlink(path)


def write_shards(source_or_examples, out_dir: str, *, prefix: str = "shard", max_samples: int = 10000,
                 max_bytes: int = 1 << 30, seed: int = 0, shuffle: bool = True, overwrite: bool = False,
                 progress: bool = True, kind: Optional[str] = None, description: Optional[str] = None) -> dict:
    """Convert a source (or an iterable of Examples) to tar shards in ``out_dir``; returns the index.

    Args:
        source_or_examples: a conversion source (``kind``, ``describe()``, ``items()``,
            ``load(item)``; see :mod:`xvl.data.shard_sources`) or an iterable of
            :class:`~xvl.data.shard_format.Example` (written in its order, never shuffled).
        prefix: shard file names are ``{prefix}-{n:06d}.tar``.
        max_samples: samples per shard at most.
        max_bytes: a new shard starts when adding a sample would push the current one past this
            (approximate tar size, :func:`tar_member_size` per member); a single sample larger
            than it gets a shard of its own.
        seed, shuffle: with a source, the items are permuted with ``random.Random(seed)``.
        overwrite: replace the shards, index and report of an earlier conversion with the same
            prefix (otherwise ``FileExistsError``).
        kind, description: for a plain iterable, its kind (default: ``parallel`` when the first
            record has ``texts``, else ``image_text``) and the index's ``source`` string.

    Raises ``ValueError`` when no sample is usable (the report is still written). See the module
    docstring for the validation rules and the index layout.
    """
    if int(max_samples) < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if int(max_bytes) < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if not prefix or "/" in prefix or os.sep in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file name prefix, got {prefix!r}")
    out_dir = os.fspath(out_dir)
    source_skips: List[dict] = []
    total: Optional[int] = None
    if _is_source(source_or_examples):
        src = source_or_examples
        kind = kind or src.kind
        description = description or src.describe()
        items = list(src.items())
        shuffled = bool(shuffle)
        if shuffled:
            random.Random(seed).shuffle(items)
        total = len(items)
        examples: Iterator[Example] = (src.load(it) for it in items)
        source_skips = list(getattr(src, "source_skips", None) or [])
    else:
        total = len(source_or_examples) if hasattr(source_or_examples, "__len__") else None
        examples = iter(source_or_examples)
        shuffled = False
        if shuffle:
            logger.info("writing the examples in their given order (only sources with items() are shuffled)")
        if kind is None:  # peek at the first record
            first = next(examples, None)
            kind = "parallel" if first is not None and "texts" in first.record else "image_text"
            if first is not None:
                examples = _chain_first(first, examples)
        description = description or "examples"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    _prepare_out_dir(out_dir, prefix, overwrite)
    from tqdm.auto import tqdm

    skipped: Counter = Counter()
    report_tmp = os.path.join(out_dir, f".{REPORT_NAME}.tmp")
    writer = _ShardWriter(out_dir, prefix)
    languages: Counter = Counter()
    n_written = n_questions = 0
    report = open(report_tmp, "w", encoding="utf-8")

    def log_skip(source_id, reason, detail):
        skipped[reason] += 1
        report.write(json.dumps({"source_id": str(source_id), "reason": reason, "detail": detail},
                                ensure_ascii=False, sort_keys=True) + "\n")

    try:
        for entry in source_skips:
            log_skip(entry.get("source_id", ""), entry["reason"], entry.get("detail", ""))
        bar = tqdm(examples, total=total, disable=not progress, unit="sample", desc="make-shards")
        for ex in bar:
            if ex.error:
                log_skip(ex.source_id, *_split_error(ex.error))
                continue
            try:
                if kind == "image_text":
                    record, image, ext, drops, langs = _clean_image_text(ex)
                    extra = {"n_questions": len(record.get("questions") or [])}
                else:
                    record, drops, langs = _clean_parallel(ex)
                    image, ext, extra = None, None, {}
            except _Skip as s:
                log_skip(ex.source_id, s.reason, s.detail)
                continue
            for reason, detail in drops:
                log_skip(ex.source_id, reason, detail)
            members = {"json": encode_record(record)}
            if image is not None:
                members[ext] = image
            size = sum(tar_member_size(len(v)) for v in members.values())
            if writer.open:
                cur = writer.shards[-1]
                if cur["n_samples"] >= max_samples or cur["estimate"] + size > max_bytes:
                    writer.finish()
            if not writer.open:
                writer.start()
            writer.write(sample_key(n_written), members, langs, extra)
            n_written += 1
            languages.update(langs)
            n_questions += extra.get("n_questions", 0)
            bar.set_postfix(written=n_written, skipped=sum(skipped.values()), refresh=False)
        bar.close()
        if writer.open:
            writer.finish()
        report.close()
    except BaseException:
        # nothing half-written stays: no temporary shard, no partial report, no index
        writer.abort()
        report.close()
        os.unlink(report_tmp)
        raise
    os.replace(report_tmp, os.path.join(out_dir, REPORT_NAME))
    if n_written == 0:
        raise ValueError(f"no usable samples in {description} (skipped: {dict(sorted(skipped.items()))}); "
                         f"see {os.path.join(out_dir, REPORT_NAME)}")

    shards = []
    for s in writer.shards:
        entry = {"file": s["file"], "n_samples": s["n_samples"], "n_bytes": s["n_bytes"],
                 "languages": dict(sorted(s["languages"].items()))}
        if kind == "image_text":
            entry["n_questions"] = s.get("n_questions", 0)
        shards.append(entry)
    index = {"format": FORMAT, "kind": kind, "source": description, "seed": int(seed), "shuffled": shuffled,
             "n_samples": n_written, "n_bytes": sum(s["n_bytes"] for s in shards),
             "languages": dict(sorted(languages.items())), "shards": shards,
             "skipped": dict(sorted(skipped.items())), "report": REPORT_NAME}
    if kind == "image_text":
        index["n_questions"] = n_questions
    # last, atomically: an index.json means every shard it lists is complete
    atomic_write_text(os.path.join(out_dir, INDEX_NAME),
                      json.dumps(index, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    logger.info("%s: wrote %d samples in %d shard(s), %.1f MB%s; skipped %s", out_dir, n_written, len(shards),
                index["n_bytes"] / 1e6, f", {n_questions} questions" if kind == "image_text" else "",
                index["skipped"] or "nothing")
    return index


def _chain_first(first: Example, rest: Iterator[Example]) -> Iterator[Example]:
    yield first
    yield from rest


def read_index(dir_or_file: str) -> dict:
    """The index of a shard directory (or of an ``index.json`` path), checked.

    Raises ``FileNotFoundError`` when there is no index (not a shard directory, or a conversion that
    did not finish) or a listed shard file is missing, and ``ValueError`` for an index that is not
    JSON, has another format tag, or an unknown kind. Shard ``file`` names are relative to the
    index's directory (see :func:`shard_paths`).
    """
    path = os.fspath(dir_or_file)
    if os.path.isdir(path):
        path = os.path.join(path, INDEX_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shard index at {path} (not a shard directory, or the conversion "
                                "did not finish)")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON shard index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{path}: shard index format {got!r}, expected {FORMAT!r}")
    if index.get("kind") not in KINDS:
        raise ValueError(f"{path}: unknown dataset kind {index.get('kind')!r} (expected one of {KINDS})")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str)
                                               for s in shards):
        raise ValueError(f"{path}: \"shards\" must be a list of {{\"file\", ...}} entries")
    directory = os.path.dirname(os.path.abspath(path))
    missing = [s["file"] for s in shards if not os.path.isfile(os.path.join(directory, s["file"]))]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} listed shard file(s) missing from {directory}: "
                                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return index


def shard_paths(dir_or_file: str) -> List[str]:
    """Paths of the shards a (checked, see :func:`read_index`) shard index lists, in order."""
    path = os.fspath(dir_or_file)
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return [os.path.join(directory, s["file"]) for s in read_index(path)["shards"]]
