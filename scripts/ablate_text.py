#!/usr/bin/env python
"""Objective ablation for the text recipe: same data, steps, batch and seed; only ``objectives`` varies.

Each variant is one ``xvl train`` run of ``configs/text-multi30k.yaml`` (Multi30K en/de/fr/cs,
pivot pairs through English) with the objectives below, evaluated on Tatoeba (deu-eng,
fra-eng; cosine and margin scoring) and on Multi30K val (en<->de, en<->fr, en<->cs). The
variants add one objective at a time, as in the issue: contrastive only, +XTR, +TLM, +XLCo,
+token contrastive.

    python scripts/ablate_text.py --out runs/ablate-text --steps 400 [--variants c,c+xtr] [key=value ...]

Writes ``<out>/<variant>/`` (the runs), ``<out>/ablation.json`` and ``<out>/ablation.md``.
Runs are sequential; a finished variant (its ``ablation_entry.json`` present) is not rerun, so a
killed ablation picks up where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONTRASTIVE = {"name": "itc", "weight": 2.0,
               "args": {"view_a": "text_embeds", "view_b": "pair_embeds", "temperature": 0.1,
                        "local_negatives": True}}
XTR = {"name": "xtr", "weight": 1.0}
TLM = {"name": "tlm", "weight": 1.0, "args": {"restart_positions": True}}
XLCO = {"name": "xlco", "weight": 1.0, "args": {"queue_size": 4096, "momentum": 0.999, "temperature": 0.25}}
TOKEN = {"name": "token_contrastive", "weight": 1.0}

VARIANTS = {
    "contrastive": [CONTRASTIVE],
    "+xtr": [CONTRASTIVE, XTR],
    "+tlm": [CONTRASTIVE, XTR, TLM],
    "+xlco": [CONTRASTIVE, XTR, TLM, XLCO],
    "+token": [CONTRASTIVE, XTR, TLM, XLCO, TOKEN],
}
MULTI30K_PAIRS = ("de", "fr", "cs")


def _run(cmd: list[str], log_path: str) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log_path, "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def run_variant(name: str, objectives: list, args, extra: list[str]) -> dict:
    run_dir = os.path.join(args.out, name.replace("+", "plus_"))
    entry_path = os.path.join(run_dir, "ablation_entry.json")
    if os.path.exists(entry_path):
        with open(entry_path) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, "ablation.log")
    xvl = [sys.executable, "-m", "xvl.cli"]
    t0 = time.time()
    _run(xvl + ["train", args.config, f"objectives={json.dumps(objectives)}",
                f"train.output_dir={run_dir}", f"train.max_steps={args.steps}",
                f"train.eval_every={args.steps}", f"train.ckpt_every={args.steps}",
                f"data.root={args.data_root}", *extra]
         + (["--resume"] if os.path.exists(os.path.join(run_dir, "checkpoints")) else []), log)
    train_s = time.time() - t0
    model = os.path.join(run_dir, "model")
    entry = {"variant": name, "objectives": [o["name"] for o in objectives], "steps": args.steps,
             "train_wall_s": round(train_s, 1)}
    for scoring in ("cosine", "margin"):
        out = os.path.join(run_dir, f"tatoeba_{scoring}.json")
        _run(xvl + ["eval", "bitext", "--model", model, "--tatoeba",
                    os.path.join(args.data_root, "tatoeba"), "--scoring", scoring, "--out", out], log)
        with open(out) as f:
            entry[f"tatoeba_{scoring}"] = json.load(f)["per_pair"]
    entry["multi30k_val"] = {}
    for lang in MULTI30K_PAIRS:
        out = os.path.join(run_dir, f"multi30k_val_en-{lang}.json")
        src = os.path.join(args.data_root, "multi30k", "val", f"val.{lang}")
        if not os.path.exists(src):
            src = os.path.join(args.data_root, "multi30k", f"val.{lang}")
        tgt = src[: -len(lang)] + "en"
        _run(xvl + ["eval", "bitext", "--model", model, "--src", src, "--tgt", tgt, "--out", out], log)
        with open(out) as f:
            entry["multi30k_val"][f"{lang}-en"] = next(iter(json.load(f)["per_pair"].values()))
    with open(entry_path, "w") as f:
        json.dump(entry, f, indent=1)
    return entry


def render(entries: list[dict]) -> str:
    head = ("| variant | objectives | Tatoeba deu xx→en / en→xx | fra | deu (margin) | fra (margin) "
            "| M30K val de | fr | cs | train min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in entries:
        def pair(table, key):
            m = table[key]
            return f"{m['src2tgt']:.3f} / {m['tgt2src']:.3f}"
        t, tm, mv = e["tatoeba_cosine"], e["tatoeba_margin"], e["multi30k_val"]
        lines.append(
            f"| {e['variant']} | {'+'.join(e['objectives'])} | {pair(t, 'deu-eng')} | {pair(t, 'fra-eng')} "
            f"| {pair(tm, 'deu-eng')} | {pair(tm, 'fra-eng')} | {pair(mv, 'de-en')} | {pair(mv, 'fr-en')} "
            f"| {pair(mv, 'cs-en')} | {e['train_wall_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/text-multi30k.yaml")
    p.add_argument("--out", default="runs/ablate-text")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--data-root", default=os.environ.get("XVL_DATA", "../shared/data"))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for every variant")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not os.path.isdir(os.path.join(args.data_root, "multi30k")):
        p.error(f"no multi30k under --data-root {args.data_root}")
    os.makedirs(args.out, exist_ok=True)
    entries = [run_variant(n, VARIANTS[n], args, args.overrides) for n in names]
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(entries, f, indent=1)
    table = render(entries)
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
