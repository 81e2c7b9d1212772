"""Raw-sample streams, one per (process rank, DataLoader worker) "slot": deterministic, endless and
resumable. Nothing is decoded here: a :class:`ShardStream` yields webdataset's raw sample dicts
(``{"__key__", "__url__", "json": bytes, "jpg": bytes, ...}``, decode with
:func:`~xvl.data.shard_format.decode_sample`), a :class:`ListStream` the items of a list.

Slots: ``slot = rank * num_workers + worker`` of ``n_slots = world_size * num_workers``. Each slot
builds its own stream (inside its DataLoader worker, see :func:`current_worker`) and reads only its
own part of the data; nothing is read on one process and broadcast.

Determinism: every random choice comes from ``random.Random`` seeded by a hash of the seed and
where the stream is (epoch, slot), never from global state, so a stream is a pure function of its
arguments, and ``start`` (the raw samples a slot already consumed, i.e. a checkpointed
``stream.position``) makes a new stream continue exactly where the old one stopped.

Shard specs (:func:`expand_shard_spec`): local tar paths, brace patterns
(``train-{000000..000009}.tar``, several joined with ``::``), an ``index.json`` or a directory
holding one (the shard writer's index, which also gives per-shard sample counts), and fsspec URLs
(``s3://``, ``gs://``, ``http(s)://``, ``memory://``, ``file://``...). Chained fsspec URLs
(``simplecache::s3://...``) do not fit in a spec, since ``::`` separates patterns.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import random
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_iterator

from xvl.data.shard_format import INDEX_NAME

logger = logging.getLogger(__name__)

#: ``on_skip(reason, detail)``; reasons: ``unreadable_shard``, ``truncated_shard``
OnSkip = Callable[[str, str], None]

# first bytes of compressed tars: their raw bytes say nothing about where the archive ends
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _seed(*parts) -> int:
    """A stable 64-bit seed from ints/strings (Python's hash() of str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def _is_url(s: str) -> bool:
    return "://" in s


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _log_skip(reason: str, detail: str) -> None:
    logger.warning("shard stream: skipped (%s) %s", reason, detail)


# ------------------------------------------------------------------------------ shard specs

def _spec_strings(spec) -> List[str]:
    items = [spec] if isinstance(spec, (str, os.PathLike)) else spec
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"a shard spec is a string or a list of strings, got {type(spec).__name__}")
    out = []
    for s in items:
        if not isinstance(s, (str, os.PathLike)):
            raise TypeError(f"shard spec {spec!r}: {s!r} is not a string")
        try:
            # '::' lists, ${VAR} from WDS_VAR, brace patterns
            out.extend(u for u in expand_urls(os.fspath(s)) if u)
        except AssertionError as e:  # webdataset asserts that WDS_<VAR> is set
            raise ValueError(f"shard spec {s!r}: {e}") from None
    return out


def _index_entries(index: str) -> List[Tuple[str, Optional[int]]]:
    """``(shard url or path, n_samples or None)`` of an index file, resolved next to it."""
    remote = _is_url(index)
    try:
        if remote:
            import fsspec

            with fsspec.open(index, "rt", encoding="utf-8") as f:
                data = json.load(f)
        else:
            with open(index, encoding="utf-8") as f:
                data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"shard index {index}: not UTF-8 JSON ({e})") from None
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, list):
        raise ValueError(f"shard index {index}: no 'shards' list (expected "
                         "{\"shards\": [{\"file\": ..., \"n_samples\": ...}, ...]})")
    base = posixpath.dirname(index) if remote else os.path.dirname(index)
    out = []
    for k, entry in enumerate(shards):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"shard index {index}: shards[{k}] has no 'file' name")
        n = entry.get("n_samples")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"shard index {index}: shards[{k}].n_samples must be an integer >= 0, "
                             f"got {n!r}")
        if _is_url(name):
            url = name
        else:
            url = posixpath.join(base, name) if remote else os.path.join(base, name)
        out.append((url, n))
    return out


def _expand(spec, root: Optional[str]) -> List[Tuple[str, Optional[int], bool]]:
    """``(url, n_samples or None, listed by an index)`` for every shard of ``spec``."""
    items: List[Tuple[str, Optional[int], bool]] = []
    missing: List[str] = []
    for s in _spec_strings(spec):
        if _is_url(s):  # kept as a URL, not checked (except an index, which must be read)
            if s.endswith(".json"):
                items.extend((u, n, True) for u, n in _index_entries(s))
            else:
                items.append((s, None, False))
            continue
        path = s
        if root is not None and not os.path.isabs(s) and not os.path.exists(s):
            path = os.path.join(os.fspath(root), s)
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_NAME)
            if not os.path.isfile(index):
                raise FileNotFoundError(f"shard directory {path} (spec {spec!r}) has no {INDEX_NAME}; "
                                        "name its tar files with a brace pattern instead")
        elif path.endswith(".json"):
            index = path
            if not os.path.isfile(index):
                missing.append(index)
                continue
        else:
            if not os.path.exists(path):
                missing.append(path)
            items.append((path, None, False))
            continue
        for url, n in _index_entries(index):
            if not _is_url(url) and not os.path.isfile(url):
                missing.append(url)
            items.append((url, n, True))
    if missing:
        where = f" (relative paths also tried under root {root})" if root is not None else ""
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} shard file(s) of spec {spec!r} not found{where}: "
                                f"{', '.join(missing[:5])}{more}")
    if not items:
        raise ValueError(f"shard spec {spec!r} names no shards")
    return items


def expand_shard_spec(spec, root: Optional[str] = None) -> List[str]:
    """The shard URLs/paths of ``spec``, in spec order.

    ``spec`` is a string or a list of strings; each may be a local tar path, a brace pattern
    (``train-{000000..000009}.tar``; ``a.tar::b-{0..3}.tar`` joins several), an ``index.json``
    or a directory holding one (its shards in index order, relative to the index; a URL ending in
    ``.json`` is read as a remote index), or an fsspec URL (anything with ``://``; kept as is,
    not checked). Relative local paths that do not exist as given are looked up under ``root``.

    Raises ``FileNotFoundError`` naming the first missing local files, ``ValueError`` for an
    empty result or a malformed index.
    """
    return [url for url, _, _ in _expand(spec, root)]


def shard_sample_counts(spec, root: Optional[str] = None) -> Optional[List[int]]:
    """Per-shard sample counts aligned with :func:`expand_shard_spec` when every shard of ``spec``
    comes from an index with counts, else None (then a resumed :class:`ShardStream` replays)."""
    items = _expand(spec, root)
    if all(from_index and n is not None for _, n, from_index in items):
        return [n for _, n, _ in items]
    return None


# ------------------------------------------------------------------------------ shard reading

def _open(url: str):
    """A context manager giving a binary file: fsspec for URLs, the builtin open otherwise."""
    if _is_url(url):
        import fsspec

        return fsspec.open(url, "rb")
    return open(url, "rb")


class _TrackedReader:
    """The file object handed to tarfile. It remembers the last non-zero bytes it passed on, so a
    silent early stop can be told from the real end of the archive.

    tarfile stops *without an error* at a missing or corrupt member header (a file cut at a member
    boundary or inside a header, a damaged header block): the members after it would vanish
    silently. A well-formed tar ends with the padded data of its last member followed by zero
    blocks only, so the last non-zero byte of the whole file must be the last non-zero byte of the
    last member that was read, with at least one zero block after the padding.
    """

    def __init__(self, f, url: str):
        self._f, self.url = f, url
        self.pos = 0  # bytes passed on so far
        self.last_nz = -1  # offset of the last non-zero byte
        self.tail = b""  # up to 512 bytes ending at last_nz
        self.head = b""

    def __repr__(self) -> str:  # tarfile iterator errors name the file object
        return f"<shard {self.url}>"

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._see(data)
        return data

    def _see(self, data: bytes) -> None:
        if not data:
            return
        if len(self.head) < 8:
            self.head += data[: 8 - len(self.head)]
        kept = data.rstrip(b"\0")
        if kept:
            if len(kept) >= 512:
                self.tail = kept[-512:]
            else:
                gap = min(self.pos - self.last_nz - 1, 512)  # zero bytes since the previous non-zero one
                self.tail = (self.tail + b"\0" * gap + kept)[-512:]
            self.last_nz = self.pos + len(kept) - 1
        self.pos += len(data)

    def end_problem(self, last_data: Optional[bytes]) -> Optional[str]:
        """After tarfile stopped without an error: None if the archive really ended there, else
        what is wrong. ``last_data``: the data of the last member read (None: no member)."""
        if self.head.startswith(_COMPRESSED_MAGIC):
            return None  # the decompressor reports a cut stream itself; raw bytes tell nothing here
        while True:  # what tarfile did not read must be zero padding
            data = self._f.read(1 << 16)
            if not data:
                break
            if data.strip(b"\0"):
                return "data after an unreadable member header (corrupt header or truncated member)"
            self.pos += len(data)
        if last_data is None:
            return None if self.last_nz < 0 else "no readable member"
        kept = last_data.rstrip(b"\0")
        if not kept:  # an all-zero last member: only the final zero block can be checked
            ok = self.pos - self.last_nz - 1 >= 512
        else:
            k = min(len(kept), 512)
            if self.tail[-k:] != kept[-k:]:
                return "data after the last readable member (corrupt header or truncated member)"
            next_header = self.last_nz + 1 + (len(last_data) - len(kept)) + (-len(last_data)) % 512
            ok = self.pos >= next_header + 512
        return None if ok else "no end-of-archive block after the last member (file cut at a member boundary)"


def _shuffled(samples: Iterable, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer: fill ``size`` items, then emit a random one per incoming item; at the end
    of the input emit the rest in random order. ``size`` 0 or 1: no shuffling."""
    if size <= 1:
        yield from samples
        return
    buf = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        k = rng.randrange(size)
        out, buf[k] = buf[k], s
        yield out
    rng.shuffle(buf)
    yield from buf


class ShardStream:
    """An endless, deterministic, resumable stream of raw samples from tar shards for one slot.

    Yields webdataset's raw sample dicts (``__key__``, ``__url__`` and one ``bytes`` value per
    member extension); nothing is decoded. ``position`` is the number of raw samples this slot has
    consumed (``start`` + samples yielded); ``ShardStream(..., start=position)`` continues exactly
    where this stream stopped. Every ``iter()`` starts again from ``start``.

    Finite mode (``resampled=False``), epoch after epoch without end: epoch ``e`` orders the shards
    by a permutation seeded by ``(seed, e)``, the same on every slot, and this slot reads
    ``order[slot::n_slots]``, each shard in file order, through a shuffle buffer of
    ``shuffle_buffer`` samples seeded by ``(seed, e, slot)`` (0 or 1: no shuffling) that is drained
    at the end of the epoch, so epochs never mix and the slots together read every sample exactly
    once per epoch. ``epoch`` is the epoch being read. Fewer shards than slots is an error
    (``too_few_shards="error"``) or, with ``"warn"``, slot ``s`` reads ``order[s % len(urls)]``
    (slots share shards: samples repeat within an epoch).

    Resuming (finite mode): with ``sample_counts`` (per shard, aligned with ``urls``, e.g. from
    :func:`shard_sample_counts`) whole epochs before ``start`` are skipped by arithmetic; the rest
    of the current epoch (all epochs without counts) is replayed: read and run through the shuffle
    buffer without being yielded. The arithmetic trusts the counts: a shard that yields a different
    number of samples (damaged after the index was written) shifts the epoch boundaries of a
    resumed stream; the stream warns when it sees such a shard, and resuming without counts stays
    exact.

    Resampled mode (``resampled=True``): shards are drawn with replacement by an rng seeded by
    ``(seed, slot, start)``, through the shuffle buffer; no epochs (``epoch`` stays 0), any number
    of shards. A resumed stream is reseeded, not replayed: cheap, but it does not continue the old
    sequence, and resampled streams repeat samples by nature anyway.

    Damaged data never stops the stream. ``on_skip(reason, detail)`` (default: a logged warning)
    gets ``"unreadable_shard"`` for a shard that cannot be opened or gives no member at all, and
    ``"truncated_shard"`` for one that breaks after some members (cut file, corrupt member header,
    duplicate member names, read error): the complete samples before the damage are yielded
    (the sample being read when the damage was found only if it has every member the sample
    before it had), then the stream goes on with the next shard. The same damaged file always
    gives the same samples, so positions stay valid; reports for samples that a resumed stream
    replays are not repeated (debug log only). When every shard has been tried since the last
    sample and none gave one (all unreadable or empty), ``RuntimeError``. Compressed tars are not
    end-checked (tarfile may stop silently at a corrupt header in them); network errors make a
    shard's samples depend on the moment it was read.
    """

    def __init__(self, urls: Sequence[str], *, seed: int = 0, shuffle_buffer: int = 1000,
                 resampled: bool = False, rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, start: int = 0, sample_counts: Optional[Sequence[int]] = None,
                 on_skip: Optional[OnSkip] = None, too_few_shards: str = "error"):
        if isinstance(urls, (str, os.PathLike)):
            raise TypeError("ShardStream takes a list of shard URLs; expand a spec string with "
                            "expand_shard_spec(spec) first")
        self.urls = [os.fspath(u) for u in urls]
        if not self.urls:
            raise ValueError("ShardStream: no shard URLs")
        if not (world_size >= 1 and 0 <= rank < world_size and num_workers >= 1 and 0 <= worker < num_workers):
            raise ValueError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, got rank={rank}, "
                             f"world_size={world_size}, worker={worker}, num_workers={num_workers}")
        if start < 0 or shuffle_buffer < 0:
            raise ValueError(f"start and shuffle_buffer must be >= 0, got {start}, {shuffle_buffer}")
        if too_few_shards not in ("error", "warn"):
            raise ValueError(f"too_few_shards must be 'error' or 'warn', got {too_few_shards!r}")
        if sample_counts is not None:
            sample_counts = [int(n) for n in sample_counts]
            if len(sample_counts) != len(self.urls) or any(n < 0 for n in sample_counts):
                raise ValueError(f"sample_counts must hold one count >= 0 per shard: {len(sample_counts)} "
                                 f"counts for {len(self.urls)} shards")
            if sum(sample_counts) == 0:
                raise ValueError("sample_counts are all 0: the shards hold no samples")
        self.seed, self.shuffle_buffer, self.resampled = int(seed), int(shuffle_buffer), bool(resampled)
        self.start, self.sample_counts = int(start), sample_counts
        self.slot = rank * num_workers + worker
        self.n_slots = world_size * num_workers
        self.on_skip = on_skip if on_skip is not None else _log_skip
        self.position = self.start
        self.epoch = 0
        self._to_replay = 0
        self._unproductive: set = set()  # shard indices read since the last sample, all empty
        self._count_warned: set = set()
        if not self.resampled and len(self.urls) < self.n_slots:
            msg = (f"{len(self.urls)} shards < {world_size} processes x {num_workers} workers = {self.n_slots} "
                   "slots: each slot needs its own shards every epoch. Re-shard into more, smaller shards "
                   "or use fewer DataLoader workers")
            if too_few_shards == "error":
                raise ValueError(msg + " (too_few_shards='warn' lets slots share shards, which repeats "
                                 "samples within an epoch)")
            logger.warning("%s; too_few_shards='warn': slots share shards, samples repeat within an epoch", msg)

    def epoch_shards(self, epoch: int) -> List[int]:
        """Indices into ``urls`` of the shards this slot reads in (finite-mode) ``epoch``, in order."""
        order = list(range(len(self.urls)))
        random.Random(_seed("shards", self.seed, int(epoch))).shuffle(order)
        if len(order) >= self.n_slots:
            return order[self.slot:: self.n_slots]
        return [order[self.slot % len(order)]]

    def _locate(self, start: int) -> Tuple[int, int]:
        """``(epoch, samples of it to replay)`` for ``start`` consumed samples (finite mode)."""
        if self.sample_counts is None:
            return 0, start
        epoch = 0
        while True:
            size = sum(self.sample_counts[i] for i in self.epoch_shards(epoch))
            if start < size:
                return epoch, start
            start -= size
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        self.position = self.start
        self._unproductive = set()
        self._to_replay = 0
        samples = self._resampled_samples() if self.resampled else self._finite_samples()
        for sample in samples:
            if self._to_replay:
                self._to_replay -= 1
                continue
            self.position += 1
            yield sample

    def _finite_samples(self) -> Iterator[dict]:
        epoch, self._to_replay = self._locate(self.start)
        while True:
            self.epoch = epoch
            rng = random.Random(_seed("buffer", self.seed, epoch, self.slot))
            yield from _shuffled(self._read_shards(self.epoch_shards(epoch)), self.shuffle_buffer, rng)
            epoch += 1

    def _resampled_samples(self) -> Iterator[dict]:
        draw = random.Random(_seed("resample", self.seed, self.slot, self.start))
        rng = random.Random(_seed("resample-buffer", self.seed, self.slot, self.start))

        def draws() -> Iterator[int]:
            while True:
                yield draw.randrange(len(self.urls))

        yield from _shuffled(self._read_shards(draws()), self.shuffle_buffer, rng)

    def _read_shards(self, indices: Iterable[int]) -> Iterator[dict]:
        for i in indices:
            n = 0
            for sample in self._read_shard(self.urls[i]):
                n += 1
                yield sample
            if n:
                self._unproductive.clear()
            else:
                self._unproductive.add(i)
                if len(self._unproductive) == len(self.urls):
                    more = f" and {len(self.urls) - 3} more" if len(self.urls) > 3 else ""
                    shown = ", ".join(self.urls[:3]) + more
                    raise RuntimeError(f"shard stream: every shard was tried and none gave a sample (all "
                                       f"unreadable or empty): {shown}; see the skip reports above")
            counts = self.sample_counts
            if counts is not None and n != counts[i] and i not in self._count_warned:
                self._count_warned.add(i)
                logger.warning("shard %s gave %d samples but sample_counts says %d: a stream resumed with "
                               "these counts will not continue exactly (fix the index, or resume without "
                               "sample_counts)", self.urls[i], n, counts[i])

    def _report(self, reason: str, detail: str) -> None:
        if self._to_replay:  # the run that consumed these samples reported it already
            logger.debug("shard stream (replaying): %s %s", reason, detail)
        else:
            self.on_skip(reason, detail)

    def _read_shard(self, url: str) -> Iterator[dict]:
        """The complete samples of one shard, in file order; damage is reported, never raised."""
        try:
            ctx = _open(url)
            f = ctx.__enter__()
        except Exception as e:  # missing file, permissions, network, bad URL
            self._report("unreadable_shard", f"{url}: {_describe(e)}")
            return
        try:
            reader = _TrackedReader(f, url)
            state = {"members": 0, "last": None, "damage": None}

            def members() -> Iterator[dict]:
                try:
                    for m in tar_file_iterator(reader):
                        state["members"] += 1
                        state["last"] = m["data"]
                        m["__url__"] = url
                        yield m
                except Exception as e:  # cut data, truncated header, read error
                    state["damage"] = _describe(e)
                    return
                state["damage"] = reader.end_problem(state["last"])

            previous = None  # member extensions of the previous sample
            try:
                for sample in group_by_keys(members()):
                    exts = frozenset(k for k in sample if not k.startswith("__"))
                    if state["damage"] is not None and (previous is None or not exts >= previous):
                        break  # the sample being read when the damage was found is incomplete
                    previous = exts
                    yield sample
            except Exception as e:  # group_by_keys: a member name twice in one sample
                state["damage"] = state["damage"] or _describe(e)
            if state["damage"] is not None:
                reason = "truncated_shard" if state["members"] else "unreadable_shard"
                self._report(reason, f"{url}: {state['damage']}")
        finally:
            ctx.__exit__(None, None, None)


class ListStream:
    """The slot semantics of :class:`ShardStream` for an in-memory list (parallel-text pairs, small
    sets): endless, deterministic, resumable by arithmetic (nothing is replayed).

    Epoch ``e`` is a permutation of ``range(len(items))`` seeded by ``(seed, e)``, cut to a multiple
    of ``n_slots`` so every slot gets ``len(items) // n_slots`` items (the rest sit out that epoch);
    this slot takes ``order[slot::n_slots]``. ``position`` = ``start`` + items yielded; ``epoch`` is
    the epoch being read. Every ``iter()`` starts again from ``start``.
    """

    def __init__(self, items: Sequence, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1, start: int = 0):
        if not (world_size >= 1 and 0 <= rank < world_size and num_workers >= 1 and 0 <= worker < num_workers):
            raise ValueError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, got rank={rank}, "
                             f"world_size={world_size}, worker={worker}, num_workers={num_workers}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.items = items if isinstance(items, Sequence) else list(items)
        self.seed, self.start = int(seed), int(start)
        self.slot = rank * num_workers + worker
        self.n_slots = world_size * num_workers
        self.per_slot = len(self.items) // self.n_slots
        if self.per_slot == 0:
            raise ValueError(f"ListStream: {len(self.items)} items are too few for {world_size} processes x "
                             f"{num_workers} workers = {self.n_slots} slots")
        self.position = self.start
        self.epoch = 0

    def epoch_indices(self, epoch: int) -> List[int]:
        """Indices into ``items`` this slot reads in ``epoch``, in order."""
        order = list(range(len(self.items)))
        random.Random(_seed("list", self.seed, int(epoch))).shuffle(order)
        return order[: self.per_slot * self.n_slots][self.slot:: self.n_slots]

    def __iter__(self) -> Iterator:
        self.position = self.start
        epoch, offset = divmod(self.start, self.per_slot)
        while True:
            self.epoch = epoch
            for i in self.epoch_indices(epoch)[offset:]:
                self.position += 1
                yield self.items[i]
            epoch, offset = epoch + 1, 0


def current_worker() -> Tuple[int, int]:
    """``(worker id, num_workers)`` of the calling DataLoader worker; ``(0, 1)`` in the main process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


__all__ = ["expand_shard_spec", "shard_sample_counts", "ShardStream", "ListStream", "current_worker", "OnSkip"]
