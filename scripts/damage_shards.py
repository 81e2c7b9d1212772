#!/usr/bin/env python
"""Copy a shard directory and damage it on purpose, printing what a reader must then skip.

    python scripts/damage_shards.py --shards runs/shards/flickr8k-ml-train --out /tmp/damaged \
        [--bad-images 25] [--bad-json 5] [--cut-shard 1] [--cut-at 0.5] [--seed 0]

For checking that a long run survives bad data (and counts it) on real shards, with the truth
known in advance:

- ``--bad-images N``: in the first shard, N image members get their first 16 bytes zeroed (the
  file signature is gone, so PIL cannot identify them): each is one ``bad_image`` skip;
- ``--bad-json N``: in the first shard, N other samples get their JSON member overwritten with
  spaces and a stray byte (same length, so the tar stays valid): each is one ``bad_sample`` skip;
- ``--cut-shard I --cut-at F``: shard I is truncated at fraction F of its size, as a copy
  interrupted mid-file would leave it: the reader keeps the complete samples before the cut,
  reports one ``truncated_shard`` per pass, and the samples after the cut are lost for that pass.

Tar headers are never touched (except by the cut), so only the chosen samples are affected. The
index (``index.json``) is copied as is: it still lists the original counts, which is what a
damaged copy of a good conversion looks like. Prints a JSON summary (also written to
``<out>/damage.json``): which samples were damaged and, for the cut shard, how many of its samples
the xvl reader still yields.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tarfile

from xvl.data.shard_format import IMAGE_EXTENSIONS, INDEX_NAME


def _members(path: str):
    """(stem, extension, data offset, size) of every file member, in file order."""
    with tarfile.open(path, "r:") as tar:
        for m in tar.getmembers():
            if m.isfile():
                stem, _, ext = m.name.partition(".")
                yield stem, ext, m.offset_data, m.size


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def readable_samples(path: str) -> int:
    """How many samples the xvl reader yields from one shard file (one pass, no shuffle)."""
    from xvl.data.streaming import ShardStream

    skipped = []
    stream = ShardStream([path], seed=0, shuffle_buffer=0, on_skip=lambda reason, detail: skipped.append(reason))
    n = 0
    for _ in stream:
        if stream.epoch > 0:
            break
        n += 1
    return n


def damage(shards: str, out: str, bad_images: int, bad_json: int, cut_shard: int, cut_at: float, seed: int) -> dict:
    with open(os.path.join(shards, INDEX_NAME)) as f:
        index = json.load(f)
    files = [s["file"] for s in index["shards"]]
    if cut_shard >= len(files) or (cut_shard == 0 and (bad_images or bad_json)):
        raise ValueError(f"--cut-shard must name one of shards 1..{len(files) - 1} (shard 0 takes the bad samples)")
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; pick a new directory")
    shutil.copytree(shards, out)
    rng = random.Random(seed)
    first = os.path.join(out, files[0])
    members = list(_members(first))
    images = [m for m in members if m[1] in IMAGE_EXTENSIONS]
    jsons = {m[0]: m for m in members if m[1] == "json"}
    if bad_images + bad_json > len(images):
        raise ValueError(f"shard {files[0]} has {len(images)} samples, fewer than {bad_images + bad_json} to damage")
    chosen = rng.sample(images, bad_images + bad_json)
    damaged_images = sorted(m[0] for m in chosen[:bad_images])
    damaged_json = sorted(m[0] for m in chosen[bad_images:])
    for stem, _, offset, size in chosen[:bad_images]:
        _patch(first, offset, b"\0" * min(16, size))
    for stem in damaged_json:
        _, _, offset, size = jsons[stem]
        _patch(first, offset, b"\x01" + b" " * (size - 1))
    summary = {"shards": os.path.abspath(shards), "out": os.path.abspath(out),
               "bad_images": {"shard": files[0], "samples": damaged_images},
               "bad_json": {"shard": files[0], "samples": damaged_json}}
    if cut_at > 0:
        cut = os.path.join(out, files[cut_shard])
        size = os.path.getsize(cut)
        with open(cut, "r+b") as f:
            f.truncate(int(size * cut_at))
        listed = index["shards"][cut_shard]["n_samples"]
        kept = readable_samples(cut)
        summary["cut"] = {"shard": files[cut_shard], "bytes_before": size, "bytes_after": int(size * cut_at),
                          "samples_listed": listed, "samples_readable": kept, "samples_lost": listed - kept}
    with open(os.path.join(out, "damage.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="a shard directory written by `xvl data make-shards`")
    p.add_argument("--out", required=True, help="where the damaged copy goes (must not exist)")
    p.add_argument("--bad-images", type=int, default=25)
    p.add_argument("--bad-json", type=int, default=5)
    p.add_argument("--cut-shard", type=int, default=1)
    p.add_argument("--cut-at", type=float, default=0.5, help="fraction of the shard kept (0: no cut)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.shards, INDEX_NAME)):
        p.error(f"no {INDEX_NAME} in {args.shards}")
    if args.bad_images < 0 or args.bad_json < 0 or not 0 <= args.cut_at < 1:
        p.error("--bad-images/--bad-json must be >= 0 and --cut-at in [0, 1)")
    try:
        summary = damage(args.shards, args.out, args.bad_images, args.bad_json, args.cut_shard, args.cut_at, args.seed)
    except (ValueError, FileExistsError) as e:
        p.error(str(e))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
