"""Image-caption data from Hugging Face ``datasets``: conversion to shards and direct streaming.

Three entry points, all yielding the shard sample format (:mod:`xvl.data.shard_format`):

* :func:`load_hf_dataset`: a ``save_to_disk`` directory, local parquet / arrow / json / jsonl /
  csv files (a file or a directory of them), or a Hub dataset name. Local paths never touch the
  network; Hub datasets are loaded without ``trust_remote_code``.
* :func:`examples_from_hf`: map-style, row order, one :class:`~xvl.data.shard_format.Example` per
  row (what ``xvl data make-shards --hf`` writes).
* :class:`HFStream`: an endless, resumable stream of raw samples ``{"__key__", "json", "<ext>"}``
  for the training loop, with the same slot semantics as the shard streams (slot = ``rank *
  num_workers + worker``).

Rows become flickr8k-ml records ``{"image_id", "captions": [{"lang", "text", ...}]}`` plus the
encoded image bytes exactly as stored (an ``Image`` column is read with ``decode=False``: nothing
is decoded here). :class:`HFColumns` names the columns; they are checked against the dataset's
features before any row is read. Unusable rows (missing image file, unknown image bytes, caption
of an unsupported type, no or unknown language) become ``Example(error="<reason>: <detail>")`` /
``on_skip(reason, detail)``: counted and skipped, never an exception in a running job.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from xvl.data.images import SkipCounter
from xvl.data.languages import normalize_lang
from xvl.data.shard_format import Example, encode_record, sample_key

logger = logging.getLogger(__name__)

#: local data file extension -> ``datasets`` packaged builder
HF_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json",
               ".csv": "csv", ".tsv": "csv"}
#: files ``save_to_disk`` writes (a ``Dataset`` / a ``DatasetDict``)
_SAVED_MARKERS = ("state.json", "dataset_dict.json")
#: rows fetched per ``IterableDataset.iter`` call (read-ahead only; samples go out one by one)
_STREAM_BATCH = 16
#: default number of shards for a ``save_to_disk`` dataset streamed via ``to_iterable_dataset``
#: (a multiple of the usual slot counts 1, 2, 4, 8, ... lets HF split by shard, not by example)
DEFAULT_STREAM_SHARDS = 64

OnSkip = Callable[[str, str], None]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _looks_local(path: str) -> bool:
    """A path the user meant as a local file (so a miss is FileNotFoundError, not a Hub lookup)."""
    return (os.path.isabs(path) or path.startswith(("./", "../", "~", ".\\"))
            or os.path.splitext(path)[1].lower() in HF_BUILDERS)


def _builder_for(files: List[str], where: str) -> Tuple[str, dict]:
    exts = sorted({os.path.splitext(f)[1].lower() for f in files})
    builders = sorted({HF_BUILDERS[e] for e in exts if e in HF_BUILDERS})
    unknown = [e for e in exts if e not in HF_BUILDERS]
    if unknown or len(builders) != 1:
        raise ValueError(f"{where}: data files must all be of one type out of "
                         f"{sorted(HF_BUILDERS)}; found extensions {exts}")
    kwargs = {"delimiter": "\t"} if exts == [".tsv"] else {}
    return builders[0], kwargs


def _select_split(ds, split: Optional[str], name: str):
    """The ``split`` of a (Iterable)DatasetDict (default ``"train"``), or a single dataset as is."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        want = split or "train"
        if want not in ds:
            raise ValueError(f"{name}: no split {want!r}; available splits: {sorted(ds)}"
                             + ("" if split else " (give split=...)"))
        return ds[want]
    have = str(ds.split) if ds.split is not None else "train"  # an unsplit dataset counts as train
    if split is not None and split != have:
        raise ValueError(f"{name}: holds a single dataset (split {have!r}), not split {split!r}; "
                         "leave split unset")
    return ds


def load_hf_dataset(path, split: Optional[str] = None, streaming: bool = False,
                    data_files=None, cache_dir: Optional[str] = None,
                    num_shards: Optional[int] = None):
    """A ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) from ``path``.

    ``path`` is, in this order:

    * a ``save_to_disk`` directory (``state.json`` / ``dataset_dict.json`` inside):
      ``datasets.load_from_disk``; streaming via ``Dataset.to_iterable_dataset(num_shards)``
      (default ``min(rows, 64)`` shards, so slots can be given whole shards);
    * a local data file or a directory of them (parquet / arrow / json / jsonl / csv / tsv, one
      type): ``datasets.load_dataset(<builder>, data_files=... | data_dir=...)``. For a directory,
      ``data_files`` (relative to it) picks files, and HF's file-name conventions give the splits
      (``train-*.parquet``, ``data/validation/...``);
    * otherwise a Hub dataset name: ``datasets.load_dataset(path, split, streaming, data_files)``,
      never with remote code.

    ``split`` defaults to ``"train"`` when the result has several splits; a missing split raises
    ``ValueError`` listing the available ones. A missing local path raises ``FileNotFoundError``.
    ``cache_dir`` is where ``load_dataset`` writes its Arrow cache (HF's default when None).
    """
    import datasets

    path = os.fspath(path)
    name = path
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, m)) for m in _SAVED_MARKERS):
            if data_files is not None:
                raise ValueError(f"{path}: a save_to_disk directory takes no data_files")
            ds = _select_split(datasets.load_from_disk(path), split, name)
            if streaming:
                n = num_shards or max(1, min(len(ds), DEFAULT_STREAM_SHARDS))
                ds = ds.to_iterable_dataset(num_shards=n)
            return ds
        if data_files is not None:
            listed = [data_files] if isinstance(data_files, str) else (
                [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
                if isinstance(data_files, dict) else list(data_files))
        else:
            listed = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                      if os.path.splitext(f)[1].lower() in HF_BUILDERS]
        if not listed:
            raise FileNotFoundError(
                f"{path}: neither a save_to_disk directory ({' / '.join(_SAVED_MARKERS)}) nor a "
                f"directory of data files ({', '.join(sorted(HF_BUILDERS))})")
        builder, kwargs = _builder_for(listed, path)
        ds = datasets.load_dataset(builder, data_dir=path, data_files=data_files,
                                   streaming=streaming, cache_dir=cache_dir, **kwargs)
        return _select_split(ds, split, name)
    if os.path.isfile(path):
        if data_files is not None:
            raise ValueError(f"{path}: give a data file or data_files, not both")
        builder, kwargs = _builder_for([path], path)
        ds = datasets.load_dataset(builder, data_files=path, streaming=streaming,
                                   cache_dir=cache_dir, **kwargs)
        return _select_split(ds, split, name)
    if _looks_local(path):
        raise FileNotFoundError(f"dataset not found: {path} (no such file or directory)")
    try:
        ds = datasets.load_dataset(path, split=split, streaming=streaming, data_files=data_files,
                                   cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError) as e:
        raise FileNotFoundError(f"{path!r} is not a local file or directory, and loading it as a "
                                f"Hugging Face Hub dataset failed: {e}") from e
    return _select_split(ds, split, name)


# --------------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------------
@dataclass
class HFColumns:
    """Which columns hold what.

    * ``image``: an ``Image`` feature, a string path (relative to ``image_root``), raw bytes or a
      ``{"bytes", "path"}`` dict.
    * ``caption``: a string, a list of strings, or a list of ``{"lang", "text", ...}`` dicts (the
      flickr8k-ml ``captions`` column: ``caption="captions"``; extra keys such as ``kind`` and
      ``source`` are kept). A dict of lists ``{"text": [...], "lang": [...]}`` (a ``Sequence`` of
      a struct) works too.
    * ``lang``: a column with the captions' language (a code, or a list parallel to a list of
      captions); ``default_lang`` is used where there is none. One of them is required unless the
      captions carry ``lang`` themselves (a caption's own ``lang`` wins). Codes are normalised
      (``deu`` -> ``de``).
    * ``id``: a column with the image id (default: the row index).
    """

    image: str = "image"
    caption: str = "caption"
    lang: Optional[str] = None
    default_lang: Optional[str] = None
    image_root: Optional[str] = None
    id: Optional[str] = None

    def __post_init__(self):
        if self.default_lang is not None:
            self.default_lang = normalize_lang(self.default_lang)

    def names(self) -> List[str]:
        """The dataset columns these settings read."""
        return [c for c in (self.image, self.caption, self.lang, self.id) if c is not None]


def _captions_carry_lang(feature) -> bool:
    import datasets

    if isinstance(feature, (datasets.List, datasets.LargeList, list)):
        inner = feature[0] if isinstance(feature, list) else feature.feature
        return isinstance(inner, dict) and "lang" in inner
    return isinstance(feature, dict) and "lang" in feature


def _peek_row(ds) -> dict:
    for batch in ds.take(1).iter(batch_size=1):
        return {k: v[0] for k, v in batch.items()}
    raise ValueError("dataset is empty")


def check_columns(dataset, cols: HFColumns, name: str = "dataset") -> None:
    """Raise ``ValueError`` (listing the available columns) when a named column is missing, or
    when no language source is given (no ``lang`` column, no ``default_lang``, and captions without
    a ``lang`` field)."""
    features = dataset.features
    if features is None:  # a streaming dataset with unknown schema: look at its first row
        row = _peek_row(dataset)
        available, caption_feature = list(row), None
        first = row.get(cols.caption)
        carries = (isinstance(first, list) and bool(first) and isinstance(first[0], dict)
                   and "lang" in first[0]) or (isinstance(first, dict) and "lang" in first)
    else:
        available = list(features)
        caption_feature = features.get(cols.caption)
        carries = caption_feature is not None and _captions_carry_lang(caption_feature)
    missing = [f"{field}={c!r}" for field, c in (("image", cols.image), ("caption", cols.caption),
                                                  ("lang", cols.lang), ("id", cols.id))
               if c is not None and c not in available]
    if missing:
        raise ValueError(f"{name}: no column(s) {', '.join(missing)}; available columns: "
                         f"{available}")
    if cols.lang is None and cols.default_lang is None and not carries:
        raise ValueError(f"{name}: captions column {cols.caption!r} has no 'lang' field; give a "
                         f"lang column or a default language (available columns: {available})")


def prepare_dataset(dataset, cols: HFColumns, name: str = "dataset"):
    """``dataset`` checked (:func:`check_columns`), unformatted, with its ``Image`` column cast to
    ``decode=False`` (rows then carry ``{"bytes", "path"}``: images are passed on undecoded)."""
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TypeError(f"{name}: got a DatasetDict with splits {sorted(dataset)}; pick one "
                        "(load_hf_dataset(path, split=...))")
    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        raise TypeError(f"{name}: expected a datasets.Dataset or IterableDataset, got "
                        f"{type(dataset).__name__}")
    check_columns(dataset, cols, name)
    dataset = dataset.with_format(None)
    feature = dataset.features.get(cols.image) if dataset.features is not None else None
    if isinstance(feature, datasets.Image) and feature.decode:
        dataset = dataset.cast_column(cols.image, datasets.Image(decode=False))
    return dataset


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"),
          (b"GIF89a", "gif"), (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def image_ext(data: bytes) -> Optional[str]:
    """The member extension for encoded image bytes, from their magic number (None: unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return None


class _RowError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _read_file(path: str, image_root: Optional[str]) -> bytes:
    full = os.path.join(image_root, path) if image_root and not os.path.isabs(path) else path
    try:
        with open(full, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise _RowError("missing_image", full) from None
    except OSError as e:
        raise _RowError("bad_image", f"{full}: {e}") from None


def _image_bytes(value, cols: HFColumns) -> bytes:
    if value is None:
        raise _RowError("missing_image", f"column {cols.image!r} is empty")
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return _read_file(value["path"], cols.image_root)
        raise _RowError("missing_image", f"column {cols.image!r} has neither bytes nor a path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        if not value:
            raise _RowError("missing_image", f"column {cols.image!r} is an empty path")
        return _read_file(value, cols.image_root)
    if hasattr(value, "save") and hasattr(value, "mode"):  # decoded PIL image: lossless PNG
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise _RowError("bad_image", f"column {cols.image!r} holds a {type(value).__name__}")


def _lang(code, fallback: Optional[str]) -> str:
    if code is None or code == "":
        if fallback is None:
            raise _RowError("no_lang", "caption has no language and no default_lang is set")
        return fallback
    if not isinstance(code, str):
        raise _RowError("bad_lang", f"language {code!r} is not a string")
    try:
        return normalize_lang(code)
    except ValueError as e:
        raise _RowError("bad_lang", str(e)) from None


def _captions(value, lang_value, cols: HFColumns) -> List[dict]:
    fallback = cols.default_lang
    if isinstance(lang_value, list):  # one language per caption
        langs = lang_value
    else:
        if lang_value is not None:
            fallback = _lang(lang_value, cols.default_lang)
        langs = None
    if isinstance(value, dict) and "text" in value:  # Sequence(struct): dict of lists
        texts = value["text"]
        if isinstance(texts, list):
            keys = [k for k in value if isinstance(value[k], list) and len(value[k]) == len(texts)]
            value = [{k: value[k][i] for k in keys} for i in range(len(texts))]
        else:
            value = [value]
    if isinstance(value, str) or value is None:
        value = [value]
    if not isinstance(value, list):
        raise _RowError("bad_caption", f"column {cols.caption!r} holds a {type(value).__name__}")
    if langs is not None and len(langs) != len(value):
        raise _RowError("bad_lang", f"{len(langs)} languages in {cols.lang!r} for "
                                    f"{len(value)} captions")
    out = []
    for i, c in enumerate(value):
        row_fallback = _lang(langs[i], cols.default_lang) if langs is not None else fallback
        if isinstance(c, dict):
            cap = {k: v for k, v in c.items() if v is not None or k == "text"}
            cap["lang"] = _lang(c.get("lang"), row_fallback)
            cap.setdefault("text", None)
        elif isinstance(c, str) or c is None:
            cap = {"lang": _lang(None, row_fallback), "text": c}
        else:
            raise _RowError("bad_caption", f"caption {i} in {cols.caption!r} is a "
                                           f"{type(c).__name__}")
        out.append(cap)
    return out


def _convert(row: dict, index: int, cols: HFColumns) -> Tuple[dict, bytes, str]:
    image_id = row.get(cols.id) if cols.id is not None else None
    image_id = str(index) if image_id is None else str(image_id)
    captions = _captions(row.get(cols.caption), row.get(cols.lang) if cols.lang else None, cols)
    data = _image_bytes(row.get(cols.image), cols)
    ext = image_ext(data)
    if ext is None:
        raise _RowError("bad_image", f"image {image_id}: bytes are not a known image "
                                     f"format (start: {data[:8]!r})")
    return {"image_id": image_id, "captions": captions}, data, ext


def row_to_example(row: dict, index: int, cols: HFColumns) -> Example:
    """One dataset row as an :class:`~xvl.data.shard_format.Example`.

    ``record`` is ``{"image_id", "captions": [{"lang", "text", ...}]}`` (``image_id`` from the id
    column, else ``str(index)``); ``image`` the encoded bytes as stored (a decoded PIL image is
    re-encoded as PNG), ``image_ext`` their format (from the magic number). An unusable row gives
    ``Example(error="<reason>: <detail>")`` with reason ``missing_image``, ``bad_image``,
    ``bad_caption``, ``no_lang`` or ``bad_lang``; it never raises. Empty captions are kept.
    """
    source_id = f"row {index}" + (f" ({row.get(cols.id)})" if cols.id is not None else "")
    try:
        record, data, ext = _convert(row, index, cols)
    except _RowError as e:
        return Example(source_id=source_id, record={}, error=str(e))
    return Example(source_id=source_id, record=record, image=data, image_ext=ext)


def examples_from_hf(path, split: Optional[str] = None, image_column: str = "image",
                     caption_column: str = "caption", lang_column: Optional[str] = None,
                     lang: Optional[str] = None, image_root: Optional[str] = None,
                     id_column: Optional[str] = None, data_files=None,
                     cache_dir: Optional[str] = None) -> Iterator[Example]:
    """Every row of a HF dataset (map-style, in row order) as an ``Example``; for make-shards.

    ``path`` as in :func:`load_hf_dataset` (or a ``datasets.Dataset``). ``lang`` is the default
    language where there is no ``lang_column``. String image paths resolve against
    ``image_root``, which defaults to the local data directory (or a data file's directory).
    Columns are checked at the call, before any row is read (``ValueError`` listing the available
    columns).
    """
    import datasets

    if isinstance(path, (datasets.Dataset, datasets.DatasetDict)):
        ds, name = _select_split(path, split, "dataset"), "dataset"
    else:
        name = os.fspath(path)
        ds = load_hf_dataset(name, split=split, data_files=data_files, cache_dir=cache_dir)
        if image_root is None and os.path.exists(name):  # paths relative to the data
            image_root = name if os.path.isdir(name) else os.path.dirname(os.path.abspath(name))
    cols = HFColumns(image=image_column, caption=caption_column, lang=lang_column,
                     default_lang=lang, image_root=image_root, id=id_column)
    ds = prepare_dataset(ds, cols, name)  # here, not in the generator: errors come at the call
    return (row_to_example(row, i, cols) for i, row in enumerate(ds))


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------
class HFStream:
    """An endless, deterministic, resumable stream of raw samples from a HF dataset.

    Yields ``{"__key__", "json": encode_record(record), "<ext>": image bytes}`` (decode with
    :func:`~xvl.data.shard_format.decode_sample`), like the shard streams. This slot is
    ``rank * num_workers + worker`` of ``world_size * num_workers``; the slots partition every
    epoch. ``position`` is the number of raw rows this slot has consumed (``start`` + rows read,
    skipped rows included); ``HFStream(..., start=position)`` continues exactly where a stream
    stopped. Every ``iter()`` starts again from ``start``. Unusable rows go to
    ``on_skip(reason, detail)`` (default: :attr:`skips`, a logging
    :class:`~xvl.data.images.SkipCounter`) and are not yielded.

    Map-style ``datasets.Dataset``: epoch ``e`` is a permutation of the row indices drawn from
    ``(seed, e)``, cut to a multiple of the slot count; the slot takes ``order[slot::n_slots]``.
    ``start`` maps to (epoch, offset) by arithmetic, nothing is replayed. Keys are row indices.

    Streaming ``datasets.IterableDataset``: ``ds.shuffle(seed, buffer_size=shuffle_buffer)``
    (``shuffle_buffer <= 1``: no shuffle; up to ``interleave_shards`` shards feed the buffer at
    once, HF's ``max_buffer_input_shards``) then
    ``datasets.distributed.split_dataset_by_node(rank=slot, world_size=n_slots)`` (whole shards per
    slot when the shard count is a multiple of the slot count, else every n-th row, which makes
    every slot read all rows), ``set_epoch(e)`` per epoch. Per-slot epoch sizes may differ
    between epochs (the shard order is reshuffled per epoch before shards are dealt to slots).
    Epoch sizes are unknown, so resuming replays (reads and drops, without decoding images) the
    rows of the epochs before ``start`` and of the current epoch up to it. HF's ``.skip()`` is not
    used for that: it freezes the shard order, so a resumed epoch would differ from an
    uninterrupted one. Keys are stream positions; without an id column ``image_id`` is the
    position too (not a stable id across epochs). With parquet sources and several shards per
    slot, HF's shard interleaver sleeps 5 s when an epoch ends or an iteration is dropped
    (``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN``); ``interleave_shards=1`` avoids that at
    some cost in shuffle quality.

    DataLoader workers: HF's ``IterableDataset.__iter__`` splits shards across torch workers by
    itself when called inside one. This class reads rows with ``IterableDataset.iter(batch_size)``,
    which prepares the node split but never looks at torch's worker info, so the only split is the
    explicit one by slot (pass ``worker``/``num_workers`` from ``get_worker_info()``); rows are not
    split twice.
    """

    def __init__(self, dataset, cols: HFColumns, *, seed: int = 0, shuffle_buffer: int = 1000,
                 rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
                 start: int = 0, on_skip: Optional[OnSkip] = None, interleave_shards: int = 10):
        import datasets
        from datasets.distributed import split_dataset_by_node

        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ValueError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, got "
                             f"rank={rank}, world_size={world_size}, worker={worker}, "
                             f"num_workers={num_workers}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.cols, self.seed, self.start = cols, int(seed), int(start)
        self.slot = rank * num_workers + worker
        self.n_slots = world_size * num_workers
        self.position = self.start
        self.skips = SkipCounter(f"hf stream slot {self.slot}")
        self.on_skip = on_skip if on_skip is not None else self.skips.skip
        self.dataset = prepare_dataset(dataset, cols, "HFStream")
        self.streaming = isinstance(self.dataset, datasets.IterableDataset)
        if self.streaming:
            ds = self.dataset
            by_shard = ds.num_shards % self.n_slots == 0
            # shards a slot reads: its own under the shard split, all of them under the row split
            slot_shards = ds.num_shards // self.n_slots if by_shard else ds.num_shards
            if shuffle_buffer and shuffle_buffer > 1:
                # interleaving a single shard changes nothing, but HF's interleaver sleeps 5 s
                # whenever a parquet-backed iteration ends (arrow issue 45214): leave it out then
                ds = ds.shuffle(seed=self.seed, buffer_size=int(shuffle_buffer),
                                max_buffer_input_shards=max(1, min(int(interleave_shards),
                                                                   slot_shards)))
            if not by_shard:
                logger.warning(
                    "HFStream: %d shards are not a multiple of %d slots; every slot reads all "
                    "rows and keeps 1 in %d (more shards: to_iterable_dataset(num_shards=...) or "
                    "ds.reshard())", ds.num_shards, self.n_slots, self.n_slots)
            self._stream = split_dataset_by_node(
                ds, rank=self.slot, world_size=self.n_slots)
        else:
            n = len(self.dataset)
            self.per_epoch = n // self.n_slots
            if self.per_epoch == 0:
                raise ValueError(f"HFStream: {n} rows are too few for {self.n_slots} slots "
                                 f"({world_size} processes x {num_workers} workers)")

    def epoch_length(self, epoch: int) -> int:
        """Rows this slot consumes in ``epoch`` (skipped ones included). Map-style: arithmetic;
        streaming: counted by reading the epoch's raw rows (no image decoding)."""
        if not self.streaming:
            return self.per_epoch
        return sum(1 for _ in self._epoch_rows(epoch))

    # map-style ----------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """This slot's row indices in ``epoch`` (map-style datasets)."""
        rng = np.random.default_rng([self.seed, int(epoch), 0x4846])
        order = rng.permutation(len(self.dataset))[: self.per_epoch * self.n_slots]
        return order[self.slot:: self.n_slots]

    def _iter_map(self) -> Iterator[Tuple[int, dict]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            for i in self.epoch_order(epoch)[offset:]:
                yield int(i), self.dataset[int(i)]
            epoch, offset = epoch + 1, 0

    # streaming ----------------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> Iterator[dict]:
        self._stream.set_epoch(epoch)
        # .iter(), not iter(): the latter re-splits shards across DataLoader workers (see class doc)
        for batch in self._stream.iter(batch_size=_STREAM_BATCH):
            cols = list(batch)
            for values in zip(*(batch[c] for c in cols)):
                yield dict(zip(cols, values))

    def _iter_streaming(self) -> Iterator[Tuple[int, dict]]:
        epoch, to_skip, pos = 0, self.start, self.start
        while True:
            n = 0
            for row in self._epoch_rows(epoch):
                n += 1
                if n <= to_skip:
                    continue
                yield pos, row
                pos += 1
            if n == 0:
                raise ValueError(
                    f"HFStream: slot {self.slot} of {self.n_slots} got no rows in epoch {epoch} "
                    f"(dataset has {self._stream.num_shards} shard(s) for this slot): too few rows "
                    "or shards for this many processes x workers")
            to_skip = max(0, to_skip - n)
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        self.position = self.start
        rows = self._iter_streaming() if self.streaming else self._iter_map()
        for index, row in rows:
            self.position += 1
            try:
                record, data, ext = _convert(row, index, self.cols)
            except _RowError as e:
                self.on_skip(e.reason, f"row {index}: {e.detail}")
                continue
            yield {"__key__": sample_key(index), "json": encode_record(record), ext: data}


__all__ = ["HFColumns", "HFStream", "load_hf_dataset", "examples_from_hf", "row_to_example",
           "check_columns", "prepare_dataset", "image_ext", "HF_BUILDERS"]
