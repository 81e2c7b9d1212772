"""The xvl webdataset shard format: what one sample holds, and how it is encoded and decoded.

A shard is a plain tar file (webdataset convention: members grouped by the part of the name before
the first dot). One sample per image (or per aligned sentence group for text-only data)::

    000000042.json   the record, UTF-8 JSON (see below)
    000000042.jpg    the image bytes exactly as validated at conversion (jpg/png/webp/...)

The record keeps the source schema, so a shard sample is the same thing as a jsonl line:

- image-text (``kind: image_text``): ``{"image_id", "captions": [{"lang", "text", "kind"?,
  "source"?}], "objects"?: [{"box": [x0, y0, x1, y1] in pixels, "labels": {lang: label}}],
  "questions"?: [{"qid", "question": {lang: text}, "answers": {answer: score}}], "width",
  "height"}`` (``questions`` carries the VQA annotations of the image, gqa schema).
- parallel text (``kind: parallel``): ``{"id", "texts": {lang: text}}`` (an aligned group: the
  same sentence in every language present).

Keys are the sample's position in the converted stream, zero-padded (``%09d``): source ids may
contain dots or slashes, which webdataset would split on; the source id stays in the record.

Next to the shards, ``index.json`` (:data:`INDEX_NAME`) lists them with their sample counts and
languages, and the conversion report (what was skipped and why). Readers decode with
:func:`decode_sample` only (JSON and PIL: no pickle, whatever member names a shard contains).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Optional, Tuple

#: name of the index file written next to the shards
INDEX_NAME = "index.json"
#: format tag in the index (bump when the sample layout changes)
FORMAT = "xvl-shards/1"
#: image member extensions a sample may carry (first found wins when decoding)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
#: dataset kinds an index declares
KINDS = ("image_text", "parallel")


@dataclass
class Example:
    """One sample on its way into shards (what a conversion source yields).

    ``record`` is JSON-serialisable in the schema above; ``image`` the encoded image bytes (None for
    text-only samples); ``image_ext`` the member extension for them (``jpg``, ``png``, ...).
    ``source_id`` names the sample in the conversion report. A source that already knows a sample
    is unusable (a missing file) sets ``error`` and the writer reports it instead of writing it.
    """

    source_id: str
    record: dict
    image: Optional[bytes] = None
    image_ext: Optional[str] = None
    error: Optional[str] = None


def sample_key(position: int) -> str:
    """The tar member stem of the sample at ``position`` of the converted stream."""
    return f"{position:09d}"


def encode_record(record: dict) -> bytes:
    """Deterministic UTF-8 JSON (sorted keys, no whitespace): same input, same bytes."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_record(raw: dict) -> dict:
    """The record of a raw webdataset sample (``{"__key__", "json": bytes, ...}``).

    Raises ``ValueError`` when the sample has no ``json`` member or it is not a UTF-8 JSON object.
    """
    data = raw.get("json")
    if data is None:
        raise ValueError(f"sample {raw.get('__key__')!r} has no .json member (members: "
                         f"{sorted(k for k in raw if not k.startswith('__'))})")
    try:
        record = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"sample {raw.get('__key__')!r}: .json member is not UTF-8 JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"sample {raw.get('__key__')!r}: .json member is not a JSON object")
    return record


def image_member(raw: dict) -> Optional[Tuple[str, bytes]]:
    """``(extension, bytes)`` of the sample's image member, or None for a text-only sample."""
    for ext in IMAGE_EXTENSIONS:
        if raw.get(ext) is not None:
            return ext, raw[ext]
    return None


def decode_image(data: bytes):
    """An RGB PIL image from encoded bytes; raises ``ValueError`` when they do not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"undecodable image ({type(e).__name__}: {e})") from None


def decode_sample(raw: dict, with_image: bool = True):
    """``(record, image)`` of a raw sample: the JSON record and an RGB PIL image (None when the
    sample has no image member or ``with_image`` is False). Raises ``ValueError`` on a bad sample
    (the reader counts and skips it)."""
    record = decode_record(raw)
    if not with_image:
        return record, None
    member = image_member(raw)
    return record, (decode_image(member[1]) if member is not None else None)
