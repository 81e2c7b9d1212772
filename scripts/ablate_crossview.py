#!/usr/bin/env python
"""Cross-view ablation on one budget: ITC only, +TTC, full CCLM, UC2, RC3 (same model, data, steps, seed).

Every variant is one ``xvl train`` run on flickr8k-ml train + Multi30K (the model and data of
``configs/flickr8k-ml.yaml``), evaluated on flickr8k-ml val per language:

- ``itc``:  image-caption contrastive only (configs/flickr8k-ml.yaml with objectives replaced and
  its parallel-text source dropped: ITC cannot use translation batches)
- ``+ttc``: + image-second-caption and caption-translation terms in the same space
- ``cclm``: configs/cclm.yaml (+ ITM, TTM, conditional MLM on every row)
- ``uc2``:  configs/uc2.yaml (ITC, TTC, ITM, VTLM, MRTM; flickr8k-ml has no boxes: MRTM skips)
- ``rc3``:  configs/rc3.yaml (regularized contrast with weak pairs, ITM, conditional MLM)

    python scripts/ablate_crossview.py --out runs/ablate-crossview --steps 500 [--variants itc,+ttc] [key=value ...]

Writes ``<out>/<variant>/`` (the runs), ``<out>/ablation.json`` and ``<out>/ablation.md``. A
finished variant (``eval_retrieval.json`` present) is not rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ITC = {"name": "itc"}
IMAGE_ONLY = "<image-caption sources only>"  # data.sources without the parallel-text ones
VARIANTS = {
    # ITC alone has nothing to learn from translation batches: image-caption data only
    "itc": ("configs/flickr8k-ml.yaml", [ITC], [IMAGE_ONLY]),
    "+ttc": ("configs/flickr8k-ml.yaml", [ITC, {"name": "itc", "args": {"view_b": "pair_embeds"}},
                                          {"name": "ttc", "args": {"pair_rows": "strict"}}], []),
    "cclm": ("configs/cclm.yaml", None, []),
    "uc2": ("configs/uc2.yaml", None, []),
    "rc3": ("configs/rc3.yaml", None, []),
}
LANGS = ("en", "de", "fr", "cs", "zh", "nl")


def image_sources_override(config: str) -> str:
    """``data.sources=[...]`` keeping the config's image-caption sources (shards, hf) only."""
    from xvl import config as C

    cfg = C.load(config)
    keep = [{k: v for k, v in C.to_dict(s).items() if v is not None} for s in cfg.data.sources
            if s.type in ("shards", "hf")]
    return f"data.sources={json.dumps(keep)}"


def run_variant(name: str, args, extra) -> dict:
    config, objectives, variant_overrides = VARIANTS[name]
    variant_overrides = [image_sources_override(config) if o == IMAGE_ONLY else o for o in variant_overrides]
    run_dir = os.path.join(args.out, name.replace("+", "plus_"))
    result = os.path.join(run_dir, "eval_retrieval.json")
    if not os.path.exists(result):
        cmd = [sys.executable, "-m", "xvl.cli", "train", config, f"train.output_dir={run_dir}",
               f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", f"train.ckpt_every={args.steps}",
               f"train.warmup_steps={max(1, args.steps // 10)}", f"data.root={args.data_root}", *variant_overrides, *extra]
        if objectives is not None:
            cmd.append(f"objectives={json.dumps(objectives)}")
        if os.path.exists(os.path.join(run_dir, "latest")):
            cmd.append("--resume")
        os.makedirs(run_dir, exist_ok=True)
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        with open(os.path.join(run_dir, "ablation.log"), "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        with open(os.path.join(run_dir, "wall_s.txt"), "w") as f:
            f.write(f"{time.time() - t0:.1f}\n")
    with open(result) as f:
        ev = json.load(f)
    wall = None
    if os.path.exists(os.path.join(run_dir, "wall_s.txt")):
        wall = float(open(os.path.join(run_dir, "wall_s.txt")).read())
    return {"variant": name, "config": config, "steps": args.steps, "train_wall_s": wall,
            "per_language": ev["per_language"], "average": ev["average"]}


def render(entries) -> str:
    head = "| variant | " + " | ".join(LANGS) + " | avg | t2i R@1 avg | min |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in entries:
        pl = e["per_language"]
        cells = [f"{pl[lang]['mean_recall']:.3f}" if lang in pl else "-" for lang in LANGS]
        wall = f"{e['train_wall_s'] / 60:.1f}" if e["train_wall_s"] else "-"
        lines.append(f"| {e['variant']} | " + " | ".join(cells)
                     + f" | {e['average']['mean_recall']:.3f} | {e['average']['t2i']['r1']:.3f} | {wall} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablate-crossview")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--data-root", default=os.environ.get("XVL_DATA", "../shared/data"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every variant")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not os.path.exists(os.path.join(args.data_root, "flickr8k-ml", "train.jsonl")):
        p.error(f"no flickr8k-ml under --data-root {args.data_root}")
    os.makedirs(args.out, exist_ok=True)
    entries = [run_variant(n, args, args.overrides) for n in names]
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(entries, f, indent=1)
    table = render(entries)
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
