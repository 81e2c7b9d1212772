#!/usr/bin/env python
"""Data-loading throughput: the streamed shard pipeline of training against a plain image-folder loader.

    python scripts/bench_data.py [--jsonl ../shared/data/flickr8k-ml/train.jsonl] [--shards DIR]
        [--workers 0,1,2] [--batch-size 128] [--batches 40] [--warmup 3] [--image-size 112]
        [--max-length 32] [--tokenizer DIR] [--make-shards-into DIR] [--repeats 1] [--out FILE.json]

Two pipelines, each timed for every DataLoader worker count N of ``--workers``:

- ``shards`` (what training runs): :class:`~xvl.data.stream_dataset.StreamingBatches` over one
  :class:`~xvl.data.stream_dataset.StreamSource` (``OpenShards`` + ``CaptionItemMaker``): tar
  read, JSON + image decode, transform, caption sampling, then ``CaptionCollator`` (tokenization),
  all in the workers; ``make_loader(ds, N, batch_size=None)`` (a spawn DataLoader,
  :mod:`xvl.data.loader`) exactly as :func:`xvl.train.loop.train` builds it.
- ``baseline``: a plain map-style Dataset over the jsonl records that opens each image file with
  PIL, applies the same transform and picks a caption; a collate function tokenizes with the same
  tokenizer; ``DataLoader(batch_size=B, shuffle=True, drop_last=True, num_workers=N, spawn)``
  (through ``make_loader`` too: its only addition is the clean worker exit, which costs nothing
  per batch; a plain loader stopped after N batches aborted its busy workers).
  (The shuffle is a ``RandomSampler`` drawing as many samples as the run needs, so a small dataset
  wraps to a new permutation without an epoch boundary in the timed window.)

The transform is the training one (``build_image_transform(train=True, augment=...)``) from a
timm data config like ``XVLModel.vision.data_config()`` gives for the recipe's ViT
(``configs/flickr8k-ml.yaml``): ``input_size (3, S, S)``, bicubic, mean = std = 0.5,
``crop_pct 1.0``; random resized crop over ``--augment-scale`` unless ``--no-augment``.

Timing, per run: ``startup_s`` is the time from ``iter(loader)`` to the first batch (spawning and
importing in the workers, filling the shard shuffle buffer); the first ``--warmup`` batches
(the first one included) are not timed; then ``--batches`` batches are timed and
``samples_per_s = batches * batch_size / seconds``. Runs alternate (baseline N, shards N, for each
N, ``--repeats`` times), so background load hits both pipelines alike; with repeats the (lower) median
run is reported and every run is kept in the JSON.

Memory: per run, the main process's peak RSS (``VmHWM``, reset before the run through
``/proc/self/clear_refs`` where Linux allows it, else the process-lifetime peak) and each worker's
peak RSS (``VmHWM`` of the worker read just before the loader shuts down). Also
``resource.getrusage`` after the run: ``ru_maxrss`` of ``RUSAGE_SELF`` (the main process's
lifetime peak, so it never goes down from row to row) and of ``RUSAGE_CHILDREN``, which is the
peak of the *largest single* terminated child so far (not a sum over the workers, and again
cumulative over the script). KiB on Linux, reported in MiB.

Threads: left at their defaults. The DataLoader sets ``torch.set_num_threads(1)`` in each worker
itself; the main process keeps torch's default (it does all the work when N = 0). With N > 0 the
main process only waits on the workers' queue (which releases the GIL) and drops each batch: no
per-batch logging, copying or pinning in the timed loop.

Shards: ``--shards DIR`` reads an existing conversion (its ``index.json`` gives the counts).
Without it, ``--jsonl`` is converted with :func:`xvl.data.shards.write_shards` into
``--make-shards-into`` (default: a temporary directory, removed at the end); the conversion time,
shard count and bytes are reported next to the size of the source files. Fewer shards than
workers: slots share shards (``too_few_shards="warn"``; training would refuse), marked in the row.

The tokenizer is trained in-process on up to 20k captions of the jsonl (seconds), or loaded with
``--tokenizer DIR``.

Outputs: a markdown table on stdout (rows: pipeline x workers) and, with ``--out``, a JSON file::

    {"machine": {"cpu_count", "cpus_usable", "torch_threads", "torch_interop_threads", "torch",
                 "python", "platform", "load_avg_start", "load_avg_end"},
     "settings": {"jsonl", "image_root", "shards", "workers", "batch_size", "batches", "warmup",
                  "image_size", "max_length", "augment", "augment_scale", "shuffle_buffer",
                  "repeats", "seed", "data_config"},
     "tokenizer": {"source", "seconds", "vocab_size", "n_texts"},
     "data": {"n_records", "n_languages", "languages", "source_bytes"},
     "conversion": {"made", "dir", "seconds", "n_shards", "n_bytes", "n_samples", "skipped",
                    "bytes_per_sample"},          # "seconds" is null for --shards
     "results": [{"pipeline": "baseline" | "shards", "workers", "batch_size", "batches",
                  "samples_per_s", "seconds", "startup_s", "ratio_shards_over_baseline",
                  "peak_rss_main_mib", "peak_rss_workers_mib": [...], "ru_maxrss_self_mib",
                  "ru_maxrss_children_mib", "data_skips", "shards_shared", "runs": [...]}],
     "ratios": {"<workers>": shards samples/s / baseline samples/s}}
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from xvl.data.loader import make_loader

PIPELINES = ("baseline", "shards")
TOKENIZER_TEXTS = 20_000


# ------------------------------------------------------------------ the baseline (plain files)

class FolderCaptionDataset(Dataset):
    """Map-style baseline: one item per jsonl record, its image file opened with PIL, the
    transform applied, one caption picked (a language uniformly, then one of its captions)."""

    def __init__(self, records, transform, lang_to_id: Dict[str, int], seed: int = 0):
        self.records, self.transform, self.lang_to_id, self.seed = records, transform, lang_to_id, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        rec = self.records[index]
        with Image.open(rec.image_path) as im:
            img = im.convert("RGB")
        rng = random.Random(self.seed * 1_000_003 + index)
        lang = rng.choice(sorted(rec.captions))
        return {"image": self.transform(img), "text": rng.choice(rec.captions[lang]), "lang": self.lang_to_id[lang]}


class TokenizingCollate:
    """Baseline collate_fn: stack the images, tokenize the captions (same settings as
    :class:`~xvl.data.captions.CaptionCollator`)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, samples: List[dict]) -> dict:
        enc = self.tokenizer([s["text"] for s in samples], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {"image": torch.stack([s["image"] for s in samples]), "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "lang": torch.tensor([s["lang"] for s in samples], dtype=torch.long)}


# ------------------------------------------------------------------ building blocks

def data_config(image_size: int) -> dict:
    """A timm data config like ``XVLModel.vision.data_config()`` gives for the recipe's ViT."""
    return {"input_size": (3, image_size, image_size), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}


def get_tokenizer(args) -> tuple:
    """(tokenizer, info): loaded from ``--tokenizer`` or trained on up to 20k captions of the jsonl."""
    from xvl.data.tokenizer import iter_texts, load_tokenizer, train_tokenizer

    t0 = time.perf_counter()
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer, max_length=args.max_length)
        return tok, {"source": args.tokenizer, "seconds": time.perf_counter() - t0, "vocab_size": len(tok),
                     "n_texts": None}
    texts = list(itertools.islice(iter_texts(args.jsonl), TOKENIZER_TEXTS))
    tok = train_tokenizer(texts, vocab_size=args.vocab_size, max_length=args.max_length)
    return tok, {"source": "trained", "seconds": time.perf_counter() - t0, "vocab_size": len(tok),
                 "n_texts": len(texts)}


def get_shards(args, tmp_root: Optional[str]) -> dict:
    """The shards to read: ``--shards`` as they are, or ``--jsonl`` converted now (timed)."""
    from xvl.data.shards import read_index

    if args.shards:
        index = read_index(args.shards)
        return {"made": False, "dir": os.path.abspath(args.shards), "seconds": None,
                "n_shards": len(index["shards"]), "n_bytes": int(index["n_bytes"]),
                "n_samples": int(index["n_samples"]), "skipped": index.get("skipped", {}),
                "bytes_per_sample": index["n_bytes"] / max(1, index["n_samples"]),
                "languages": sorted(index.get("languages") or {})}
    from xvl.data.shard_sources import JsonlImageSource
    from xvl.data.shards import write_shards

    out = args.make_shards_into or os.path.join(tmp_root, "shards")
    t0 = time.perf_counter()
    index = write_shards(JsonlImageSource(args.jsonl, image_root=args.image_root), out,
                         max_samples=args.shard_size, seed=args.seed, progress=False)
    seconds = time.perf_counter() - t0
    return {"made": True, "dir": os.path.abspath(out) if args.make_shards_into else None, "seconds": seconds,
            "n_shards": len(index["shards"]), "n_bytes": int(index["n_bytes"]),
            "n_samples": int(index["n_samples"]), "skipped": index.get("skipped", {}),
            "bytes_per_sample": index["n_bytes"] / max(1, index["n_samples"]),
            "languages": sorted(index.get("languages") or {})}


def shards_loader(shard_dir: str, workers: int, builder, tokenizer, args) -> DataLoader:
    """The streamed loader exactly as training builds it (one image-text source)."""
    from xvl.data.captions import CaptionCollator
    from xvl.data.stream_dataset import StreamingBatches, StreamSource
    from xvl.data.stream_sources import CaptionItemMaker, OpenShards
    from xvl.data.streaming import expand_shard_spec, shard_sample_counts

    opener = OpenShards(expand_shard_spec(shard_dir), shard_sample_counts(shard_dir), args.shuffle_buffer,
                        resampled=False, too_few_shards="warn")
    source = StreamSource("shards", "image_text", 1.0, opener, CaptionItemMaker(builder))
    ds = StreamingBatches([source], {"image_text": CaptionCollator(tokenizer, args.max_length)}, args.batch_size,
                          seed=args.seed)
    return make_loader(ds, workers, batch_size=None)


def baseline_loader(dataset: Dataset, workers: int, tokenizer, args) -> DataLoader:
    """The plain loader: shuffled map-style dataset, tokenizing collate_fn."""
    n = (args.warmup + args.batches) * args.batch_size
    # shuffle=True, but drawing enough samples for the whole run (a new permutation after each pass)
    sampler = RandomSampler(dataset, num_samples=n, generator=torch.Generator().manual_seed(args.seed))
    return make_loader(dataset, workers, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                       collate_fn=TokenizingCollate(tokenizer, args.max_length))


# ------------------------------------------------------------------ memory and timing

def _mib_of_kib(kib: float) -> float:
    return kib / 1024.0


def ru_maxrss_mib(who) -> float:
    """``ru_maxrss`` in MiB (KiB on Linux, bytes on macOS)."""
    v = resource.getrusage(who).ru_maxrss
    return v / 2**20 if sys.platform == "darwin" else _mib_of_kib(v)


def vm_hwm_mib(pid="self") -> Optional[float]:
    """Peak RSS (``VmHWM``) of a process in MiB, or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return _mib_of_kib(float(line.split()[1]))
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def time_run(loader: DataLoader, args) -> dict:
    """Startup, warm-up and ``--batches`` timed batches of one loader, with peak memory."""
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    startup = time.perf_counter() - t0
    if first["image"].shape[0] != args.batch_size:  # a wrong pipeline would make the rate meaningless
        raise RuntimeError(f"first batch holds {first['image'].shape[0]} images, expected {args.batch_size}")
    del first
    for _ in range(args.warmup - 1):
        next(it)
    skips: Counter = Counter()
    t1 = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
        skips.update(batch.get("data_skips") or {})
    seconds = time.perf_counter() - t1
    del batch
    workers = [vm_hwm_mib(w.pid) for w in getattr(it, "_workers", [])]
    main_peak = vm_hwm_mib() if reset else None
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    del it
    return {"samples_per_s": args.batches * args.batch_size / seconds, "seconds": seconds, "startup_s": startup,
            "peak_rss_main_mib": main_peak if main_peak is not None else ru_maxrss_mib(resource.RUSAGE_SELF),
            "peak_rss_workers_mib": [w for w in workers if w is not None],
            "ru_maxrss_self_mib": ru_maxrss_mib(resource.RUSAGE_SELF),
            "ru_maxrss_children_mib": ru_maxrss_mib(resource.RUSAGE_CHILDREN),
            "data_skips": dict(skips)}


def summarize(pipeline: str, workers: int, runs: List[dict], args, n_shards: int) -> dict:
    """One result row: the (lower) median run by samples/s of a (pipeline, workers) cell, its startup
    the median startup, its memory the worst of the runs; every run kept under ``runs``."""
    mid = sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2]
    skips: Counter = Counter()
    for r in runs:
        skips.update(r["data_skips"])
    row = {"pipeline": pipeline, "workers": workers, "batch_size": args.batch_size, "batches": args.batches,
           "samples_per_s": mid["samples_per_s"],
           "seconds": mid["seconds"], "startup_s": statistics.median(r["startup_s"] for r in runs),
           "ratio_shards_over_baseline": None,
           "peak_rss_main_mib": max(r["peak_rss_main_mib"] for r in runs),
           "peak_rss_workers_mib": [max(ws) for ws in zip(*(r["peak_rss_workers_mib"] for r in runs))],
           "ru_maxrss_self_mib": max(r["ru_maxrss_self_mib"] for r in runs),
           "ru_maxrss_children_mib": max(r["ru_maxrss_children_mib"] for r in runs),
           "data_skips": dict(skips), "shards_shared": pipeline == "shards" and n_shards < max(1, workers),
           "runs": runs}
    return row


def render(results: List[dict]) -> str:
    head = "| pipeline | workers | samples/s | startup s | shards/baseline | peak RSS MiB (main / worst worker) |"
    lines = [head, "|---|---:|---:|---:|---:|---|"]
    for r in results:
        ratio = f"{r['ratio_shards_over_baseline']:.2f}" if r["ratio_shards_over_baseline"] is not None else ""
        ws = r["peak_rss_workers_mib"]
        mem = f"{r['peak_rss_main_mib']:.0f} / {max(ws):.0f}" if ws else f"{r['peak_rss_main_mib']:.0f} / -"
        name = r["pipeline"] + (" (shards shared)" if r["shards_shared"] else "")
        lines.append(f"| {name} | {r['workers']} | {r['samples_per_s']:.1f} | {r['startup_s']:.2f} | {ratio} | {mem} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main

def _workers(text: str) -> List[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes comma-separated integers, got {text!r}") from None
    if not out or any(n < 0 for n in out):
        raise argparse.ArgumentTypeError(f"--workers takes integers >= 0, got {text!r}")
    return list(dict.fromkeys(out))


def _scale(text: str) -> tuple:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--augment-scale takes LO,HI, got {text!r}") from None
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"--augment-scale needs 0 < LO <= HI <= 1, got {text!r}")
    return lo, hi


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jsonl", default=os.path.join(os.environ.get("XVL_DATA", "../shared/data"),
                                                   "flickr8k-ml", "train.jsonl"),
                   help="captions jsonl (flickr8k-ml schema): the baseline's input, and converted to shards "
                        "unless --shards is given")
    p.add_argument("--image-root", help="image paths are relative to this (default: the jsonl's directory)")
    p.add_argument("--shards", help="an existing shard directory (with index.json) to read")
    p.add_argument("--make-shards-into", help="without --shards: convert --jsonl into this (new or empty) "
                                              "directory and keep it (default: a temporary directory)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard when converting")
    p.add_argument("--workers", type=_workers, default=[0, 1, 2], help="DataLoader worker counts, e.g. 0,1,2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=40, help="timed batches per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per run (>= 1: the first one)")
    p.add_argument("--repeats", type=int, default=1, help="alternations per worker count (the median is reported)")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="eval transform (resize + crop) instead of the recipe's random resized crop")
    p.add_argument("--augment-scale", type=_scale, default=(0.8, 1.0))
    p.add_argument("--shuffle-buffer", type=int, default=1000, help="shard stream shuffle buffer (samples)")
    p.add_argument("--tokenizer", help="a tokenizer directory (default: train one on the jsonl's captions)")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the trained tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("batch_size", "batches", "warmup", "repeats", "image_size", "max_length", "shard_size",
                 "vocab_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.shuffle_buffer < 0:
        p.error(f"--shuffle-buffer must be >= 0, got {args.shuffle_buffer}")
    if args.shards and args.make_shards_into:
        p.error("--shards reads existing shards; --make-shards-into converts new ones: give one of them")
    return args


def _input_problem(args) -> Optional[str]:
    """What is missing among the inputs (checked before any work), or None."""
    from xvl.data.shard_format import INDEX_NAME

    if not os.path.isfile(args.jsonl):
        return f"captions jsonl not found: {args.jsonl} (give --jsonl FILE; the baseline reads it)"
    root = args.image_root or os.path.dirname(os.path.abspath(args.jsonl))
    if not os.path.isdir(root):
        return f"image root not found: {root} (give --image-root DIR)"
    if args.shards and not os.path.isfile(os.path.join(args.shards, INDEX_NAME)):
        return f"no shard index at {os.path.join(args.shards, INDEX_NAME)} (--shards takes a directory " \
               f"written by `xvl data make-shards`; leave it out to convert --jsonl now)"
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        return f"tokenizer directory not found: {args.tokenizer}"
    if args.make_shards_into and os.path.exists(os.path.join(args.make_shards_into, INDEX_NAME)):
        return f"{args.make_shards_into} already holds shards: read them with --shards " \
               f"{args.make_shards_into}, or pick a new directory"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = _input_problem(args)
    if problem:
        print(f"bench_data: error: {problem}", file=sys.stderr)
        return 2

    from xvl.data.captions import CaptionItemBuilder, load_caption_records
    from xvl.data.transforms import build_image_transform

    machine = {"cpu_count": os.cpu_count(),
               "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
               "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    tmp_root = tempfile.mkdtemp(prefix="xvl-bench-data-") if not (args.shards or args.make_shards_into) else None
    try:
        try:  # bad input files fail here, before anything is timed, with the file (and line) named
            records = load_caption_records(args.jsonl, image_root=args.image_root)
            tokenizer, tok_info = get_tokenizer(args)
            print(f"tokenizer: {tok_info['source']}, vocab {tok_info['vocab_size']}, {tok_info['seconds']:.1f} s",
                  file=sys.stderr)
            conversion = get_shards(args, tmp_root)
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            print(f"bench_data: error: {e}", file=sys.stderr)
            return 2
        shard_dir = conversion["dir"] or os.path.join(tmp_root, "shards")
        print(f"shards: {conversion['n_shards']} ({conversion['n_bytes'] / 1e6:.1f} MB, "
              f"{conversion['n_samples']} samples)"
              + (f", converted in {conversion['seconds']:.1f} s" if conversion["made"] else ""), file=sys.stderr)
        langs = sorted({lang for r in records for lang in r.captions} | set(conversion.pop("languages")))
        lang_to_id = {lang: i for i, lang in enumerate(langs)}
        source_bytes = os.path.getsize(args.jsonl) + sum(os.path.getsize(r.image_path) for r in records)

        dc = data_config(args.image_size)
        transform = build_image_transform(dc, train=True, augment=args.augment, scale=args.augment_scale)
        builder = CaptionItemBuilder(transform, lang_to_id, caption_sampling="uniform_language")
        baseline = FolderCaptionDataset(records, transform, lang_to_id, seed=args.seed)
        if len(baseline) < args.batch_size:
            print(f"bench_data: error: {args.jsonl} has {len(baseline)} usable records, fewer than "
                  f"--batch-size {args.batch_size}", file=sys.stderr)
            return 2

        runs: Dict[tuple, List[dict]] = {}
        for rep in range(args.repeats):
            for n in args.workers:
                for pipeline in PIPELINES:  # alternate: background load hits both alike
                    loader = (baseline_loader(baseline, n, tokenizer, args) if pipeline == "baseline"
                              else shards_loader(shard_dir, n, builder, tokenizer, args))
                    run = time_run(loader, args)
                    del loader
                    runs.setdefault((pipeline, n), []).append(run)
                    print(f"[{rep + 1}/{args.repeats}] {pipeline} workers={n}: {run['samples_per_s']:.1f} "
                          f"samples/s (startup {run['startup_s']:.2f} s)", file=sys.stderr, flush=True)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)

    results, ratios = [], {}
    for n in args.workers:
        base, shards = (summarize(p, n, runs[(p, n)], args, conversion["n_shards"]) for p in PIPELINES)
        shards["ratio_shards_over_baseline"] = ratios[str(n)] = shards["samples_per_s"] / base["samples_per_s"]
        results += [base, shards]
    report = {
        "machine": {**machine, "load_avg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": {"jsonl": os.path.abspath(args.jsonl), "image_root": args.image_root, "shards": shard_dir
                     if conversion["dir"] else None, "workers": args.workers, "batch_size": args.batch_size,
                     "batches": args.batches, "warmup": args.warmup, "image_size": args.image_size,
                     "max_length": args.max_length, "augment": args.augment,
                     "augment_scale": list(args.augment_scale), "shuffle_buffer": args.shuffle_buffer,
                     "repeats": args.repeats, "seed": args.seed,
                     "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dc.items()}},
        "tokenizer": tok_info,
        "data": {"n_records": len(records), "n_languages": len(langs), "languages": langs,
                 "source_bytes": source_bytes},
        "conversion": conversion,
        "results": results,
        "ratios": ratios,
    }
    table = render(results)
    print(table)
    c = conversion
    print(f"shards: {c['n_shards']} file(s), {c['n_bytes'] / 1e6:.1f} MB for {c['n_samples']} samples "
          f"(source files {source_bytes / 1e6:.1f} MB)"
          + (f", converted in {c['seconds']:.1f} s" if c["made"] else ""))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
