"""The ``xvl`` command. Thin: parse arguments, call the library, print results.

    xvl demo [--out DIR]                             generate data, train, evaluate (the default)
    xvl train CONFIG.yaml [key=value ...] [--resume] train from a recipe
    xvl eval retrieval --model DIR --data FILE.jsonl [--image-root DIR] [--out FILE.json] [--rerank K [--rerank-contrastive W]]
    xvl eval bitext --model DIR (--tatoeba DIR | --src FILE --tgt FILE) [--out FILE.json]
    xvl finetune vqa --model DIR --train FILE --answers FILE --out DIR [--val FILE] [--steps N]
                                                     fine-tune for VQA (English only by default)
    xvl eval vqa --model DIR --data FILE.jsonl [--image-root DIR] [--out FILE.json]
                                                     per-language VQA accuracy (gqa schema)
    xvl tokenizer train --out DIR FILE [FILE ...]    train a multilingual tokenizer
    xvl data demo --out DIR                          write the synthetic demo dataset
    xvl data make-shards --out DIR (--jsonl F [--vqa F] | --vqa F | --image-folder D --captions F | --aligned P | --hf P)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

logger = logging.getLogger("xvl")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "PIL", "matplotlib", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_train(args) -> int:
    from xvl import config as C
    from xvl.train.loop import train

    cfg = C.load(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    print(f"model saved to {result.model_dir}")
    if result.eval is not None:
        from xvl.evaluation.retrieval import format_retrieval_table

        print(format_retrieval_table(result.eval))
    if result.bitext is not None:
        from xvl.evaluation.bitext import format_bitext_table

        print(format_bitext_table(result.bitext))
    return 0


def cmd_eval_retrieval(args) -> int:
    import torch

    import xvl
    from xvl.evaluation.retrieval import evaluate_retrieval, format_retrieval_table, load_records

    records = load_records(args.data)  # bad input fails before the model loads
    image_root = args.image_root or os.path.dirname(os.path.abspath(args.data))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = xvl.load(args.model).to(device)
    result = evaluate_retrieval(model, records, image_root, batch_size=args.batch_size,
                                languages=args.languages,
                                include_machine_translation=args.include_machine_translation,
                                rerank=args.rerank, rerank_contrastive=args.rerank_contrastive)
    print(format_retrieval_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
        print(f"wrote {args.out}")
    return 0


def cmd_eval_bitext(args) -> int:
    import torch

    import xvl
    from xvl.evaluation.bitext import evaluate_bitext, find_tatoeba_pairs, format_bitext_table, read_parallel_files

    # bad input fails before the model loads
    if args.tatoeba:
        find_tatoeba_pairs(args.tatoeba)
    elif args.src and args.tgt:
        read_parallel_files(args.src, args.tgt)
    else:
        raise ValueError("give --tatoeba DIR, or --src FILE and --tgt FILE")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = xvl.load(args.model).to(device)
    result = evaluate_bitext(model, tatoeba_dir=args.tatoeba, src=args.src, tgt=args.tgt, scoring=args.scoring,
                             k=args.k, layer=args.layer, batch_size=args.batch_size)
    print(format_bitext_table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def cmd_finetune_vqa(args) -> int:
    from xvl.evaluation.vqa import format_vqa_table
    from xvl.train.finetune_vqa import finetune_vqa

    result = finetune_vqa(args.model, args.train, args.out, args.answers, image_root=args.image_root,
                          epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          languages=args.languages, seed=args.seed, val_file=args.val,
                          val_languages=args.val_languages, device=args.device, num_workers=args.workers)
    print(f"fine-tuned {result['steps']} steps on {result['n_train_items']} questions ({','.join(args.languages)}), "
          f"loss {result['loss_first']:.4f} -> {result['loss_last']:.4f}; model saved to {result['model_dir']}")
    if result["n_out_of_vocabulary"]:
        print(f"{result['n_out_of_vocabulary']} training question(s) had no answer in the vocabulary (left out)")
    if result["eval"] is not None:
        print(format_vqa_table(result["eval"]))
        print(f"wrote {os.path.join(args.out, 'eval_vqa.json')}")
    return 0


def cmd_eval_vqa(args) -> int:
    import torch

    import xvl
    from xvl.atomic import atomic_write_text
    from xvl.data.vqa import read_vqa_jsonl
    from xvl.evaluation.vqa import evaluate_vqa, format_vqa_table

    records = read_vqa_jsonl(args.data, languages=args.languages)  # bad input fails before the model loads
    image_root = args.image_root or os.path.dirname(os.path.abspath(args.data))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = xvl.load(args.model).to(device)
    result = evaluate_vqa(model, records, image_root, batch_size=args.batch_size, languages=args.languages,
                          progress=True)
    print(format_vqa_table(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1, ensure_ascii=False))
        print(f"wrote {args.out}")
    return 0


def cmd_tokenizer_train(args) -> int:
    from xvl.data.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    tok = train_tokenizer(args.inputs, vocab_size=args.vocab_size, model=args.model,
                          min_frequency=args.min_frequency, max_length=args.max_length,
                          split_cjk=args.split_cjk)
    tok.save_pretrained(args.out)
    print(f"trained a {args.model} tokenizer with {len(tok)} tokens in {time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_data_demo(args) -> int:
    from xvl.data.demo import generate_demo

    paths = generate_demo(args.out, n_train=args.n_train, n_val=args.n_val, image_size=args.image_size,
                          seed=args.seed)
    print(f"demo data written to {paths.root}")
    return 0


def _parse_size(text: str) -> int:
    """``1000000``, ``500MB``, ``1GB``, ``64KiB``, ``1.5GiB`` -> bytes (KB/MB/GB: powers of 1000)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?i?b?)\s*", str(text), flags=re.IGNORECASE)
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
             "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    unit = m.group(2).lower() if m else None
    if m is None or unit not in units or int(float(m.group(1)) * units[unit]) < 1:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1000000, 500MB, 1GB, 512MiB)")
    return int(float(m.group(1)) * units[unit])


def _shard_source(args):
    """The conversion source (or Example iterator) of ``data make-shards``; reads and checks the input."""
    from xvl.data import shard_sources as S

    used = {"--jsonl": args.jsonl, "--image-folder": args.image_folder, "--aligned": args.aligned, "--hf": args.hf,
            "--vqa": args.vqa}
    chosen = next((flag for flag, v in used.items() if v), None)
    if chosen is None:
        raise ValueError("give the input: --jsonl, --image-folder, --aligned, --hf or --vqa")
    allowed = {"--jsonl": {"--image-root", "--vqa"}, "--vqa": {"--image-root", "--vqa"}, "--image-folder": {"--captions", "--lang"},
               "--aligned": {"--languages"},
               "--hf": {"--image-root", "--split", "--image-column", "--caption-column", "--lang-column", "--lang"}}
    given = {"--image-root": args.image_root, "--vqa": args.vqa, "--captions": args.captions, "--lang": args.lang,
             "--languages": args.languages, "--split": args.split, "--image-column": args.image_column,
             "--caption-column": args.caption_column, "--lang-column": args.lang_column}
    wrong = sorted(flag for flag, v in given.items() if v is not None and flag not in allowed[chosen])
    if wrong:
        raise ValueError(f"{', '.join(wrong)} cannot be used with {chosen}")
    if args.jsonl or args.vqa:  # --vqa alone: questions-only data (gqa), one sample per image
        return S.JsonlImageSource(args.jsonl, image_root=args.image_root, vqa_path=args.vqa)
    if args.image_folder:
        if not args.captions:
            raise ValueError("--image-folder needs --captions FILE (.tsv, .csv or .jsonl)")
        return S.ImageFolderSource(args.image_folder, args.captions, lang=args.lang)
    if args.aligned:
        langs = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
        return S.AlignedTextSource(args.aligned, languages=langs)
    if args.lang_column and args.lang:
        raise ValueError("give --lang-column or --lang, not both")
    import itertools

    from xvl.data.hf_source import examples_from_hf

    examples = iter(examples_from_hf(args.hf, split=args.split, image_column=args.image_column or "image",
                                     caption_column=args.caption_column or "caption",
                                     lang_column=args.lang_column, lang=args.lang, image_root=args.image_root))
    first = next(examples, None)  # a bad dataset or column fails here, before anything is written
    return itertools.chain([first] if first is not None else [], examples)


def cmd_data_make_shards(args) -> int:
    from xvl.data.shards import REPORT_NAME, write_shards

    t0 = time.perf_counter()
    source = _shard_source(args)
    description = None
    if args.hf:
        description = f"hf:{args.hf}" + (f" split:{args.split}" if args.split else "")
    index = write_shards(source, args.out, prefix=args.prefix, max_samples=args.max_samples,
                         max_bytes=args.max_bytes, seed=args.seed, shuffle=args.shuffle, overwrite=args.overwrite,
                         progress=not args.no_progress, kind="image_text" if args.hf else None,
                         description=description)
    skipped = ", ".join(f"{k}: {v}" for k, v in index["skipped"].items()) or "none"
    questions = f", {index['n_questions']} questions" if index.get("n_questions") else ""
    print(f"wrote {index['n_samples']} {index['kind']} samples{questions} in {len(index['shards'])} shard(s), "
          f"{index['n_bytes'] / 1e6:.1f} MB, to {args.out} in {time.perf_counter() - t0:.1f}s")
    print(f"languages: {', '.join(f'{k}: {v}' for k, v in index['languages'].items())}")
    print(f"skipped: {skipped} (details in {os.path.join(args.out, REPORT_NAME)})")
    return 0


def cmd_demo(args) -> int:
    from xvl.demo import run_demo

    run_demo(args.out, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xvl", description="Multilingual vision-language pretraining")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate synthetic multilingual data, train, evaluate")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("overrides", nargs="*", help="dotted key=value overrides of the demo recipe")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train from a YAML recipe")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=3e-4")
    t.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint")
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("finetune", help="fine-tune a model directory for a downstream task")
    fsub = f.add_subparsers(dest="finetune_command", required=True)
    fv = fsub.add_parser("vqa", help="VQA as answer classification on the fused [CLS] (gqa schema)")
    fv.add_argument("--model", required=True, help="model directory with a fusion encoder")
    fv.add_argument("--train", required=True, help="training questions (jsonl)")
    fv.add_argument("--answers", required=True, help="answer vocabulary: {answer: index} or a list (json)")
    fv.add_argument("--out", required=True, help="output dir: model/, metrics.jsonl, finetune_vqa.json")
    fv.add_argument("--image-root", help="image paths are relative to this (default: each file's dir)")
    fv.add_argument("--val", help="evaluate on these questions at the end (writes OUT/eval_vqa.json)")
    fv.add_argument("--val-languages", nargs="+", help="evaluate only these languages of --val")
    fv.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    fv.add_argument("--epochs", type=float, default=3.0)
    fv.add_argument("--batch-size", type=int, default=32)
    fv.add_argument("--lr", type=float, default=1e-4)
    fv.add_argument("--languages", nargs="+", default=["en"],
                    help="question languages to train on (zero-shot protocol: en)")
    fv.add_argument("--seed", type=int, default=0)
    fv.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    fv.add_argument("--device")
    fv.set_defaults(func=cmd_finetune_vqa)

    e = sub.add_parser("eval", help="evaluate a model directory")
    esub = e.add_subparsers(dest="eval_command", required=True)
    r = esub.add_parser("retrieval", help="multilingual image-text retrieval (flickr8k-ml schema)")
    r.add_argument("--model", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--image-root")
    r.add_argument("--out")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--languages", nargs="*")
    r.add_argument("--include-machine-translation", action="store_true")
    r.add_argument("--rerank", type=int, default=0, metavar="K",
                   help="re-score each query's top K contrastive candidates with the matching (ITM) head; "
                        "needs a model with a fusion encoder (default 0: contrastive ranking only)")
    r.add_argument("--rerank-contrastive", type=float, default=0.0, metavar="W",
                   help="with --rerank: order the K by log P(matched) + W x the contrastive logit "
                        "(1: matching probability x contrastive softmax; default 0: matching score alone)")
    r.add_argument("--device")
    r.set_defaults(func=cmd_eval_retrieval)

    b = esub.add_parser("bitext", help="cross-lingual sentence retrieval (Tatoeba protocol)")
    b.add_argument("--model", required=True)
    b.add_argument("--tatoeba", help="directory of tatoeba.xxx-eng.{xxx,eng} files")
    b.add_argument("--src")
    b.add_argument("--tgt")
    b.add_argument("--out")
    b.add_argument("--scoring", choices=["cosine", "margin"], default="cosine",
                   help="margin: LASER's ratio margin over k nearest neighbours")
    b.add_argument("--k", type=int, default=4)
    b.add_argument("--layer", type=int, help="mean-pool this text layer instead of the final embedding")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--device")
    b.set_defaults(func=cmd_eval_bitext)

    v = esub.add_parser("vqa", help="per-language VQA accuracy of a fine-tuned model (gqa schema)")
    v.add_argument("--model", required=True)
    v.add_argument("--data", required=True)
    v.add_argument("--image-root")
    v.add_argument("--out")
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--languages", nargs="+", help="evaluate only these languages (default: all in the data)")
    v.add_argument("--device")
    v.set_defaults(func=cmd_eval_vqa)

    k = sub.add_parser("tokenizer", help="tokenizer tools")
    ksub = k.add_subparsers(dest="tokenizer_command", required=True)
    kt = ksub.add_parser("train", help="train a multilingual tokenizer from text/jsonl files")
    kt.add_argument("inputs", nargs="+", help="text files (one sentence a line), captions/VQA jsonl, or dirs")
    kt.add_argument("--out", required=True)
    kt.add_argument("--vocab-size", type=int, default=8000)
    kt.add_argument("--model", choices=["unigram", "bpe"], default="bpe")
    kt.add_argument("--min-frequency", type=int, default=2)
    kt.add_argument("--max-length", type=int, default=64)
    kt.add_argument("--no-split-cjk", dest="split_cjk", action="store_false",
                    help="do not isolate Han ideographs before subword training")
    kt.set_defaults(func=cmd_tokenizer_train)

    dd = sub.add_parser("data", help="data tools")
    dsub = dd.add_subparsers(dest="data_command", required=True)
    dm = dsub.add_parser("demo", help="write the synthetic multilingual demo dataset")
    dm.add_argument("--out", required=True)
    dm.add_argument("--n-train", type=int, default=3000)
    dm.add_argument("--n-val", type=int, default=200)
    dm.add_argument("--image-size", type=int, default=64)
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=cmd_data_demo)

    ds = dsub.add_parser("make-shards", help="convert a dataset to webdataset tar shards (+ index.json, report.jsonl)")
    ds.add_argument("--out", required=True, help="output directory for the shards")
    src = ds.add_mutually_exclusive_group()  # or --vqa alone (checked in _shard_source)
    src.add_argument("--jsonl", help="captions jsonl, one record per image (flickr8k-ml / demo schema)")
    src.add_argument("--image-folder", help="a folder of images (with --captions)")
    src.add_argument("--aligned", metavar="PREFIX", help="line-aligned text files PREFIX.<lang>")
    src.add_argument("--hf", metavar="PATH", help="a local Hugging Face dataset (save_to_disk dir or data files)")
    ds.add_argument("--image-root", help="image paths are relative to this (--jsonl default: the jsonl's dir)")
    ds.add_argument("--vqa", help="a gqa-schema questions file: with --jsonl its questions are attached to their "
                                  "images; alone, one sample per image with its questions (e.g. gqa)")
    ds.add_argument("--captions", help="with --image-folder: .tsv/.csv/.jsonl with image, text (or caption)[, lang]")
    ds.add_argument("--lang", help="language of captions without a lang column")
    ds.add_argument("--languages", help="with --aligned: comma-separated languages (default: every PREFIX.<lang>)")
    ds.add_argument("--split", help="with --hf: the split")
    ds.add_argument("--image-column", help="with --hf (default: image)")
    ds.add_argument("--caption-column", help="with --hf (default: caption)")
    ds.add_argument("--lang-column", help="with --hf: column holding each caption's language")
    ds.add_argument("--prefix", default="shard", help="shard files are PREFIX-000000.tar, ...")
    ds.add_argument("--max-samples", type=int, default=10000, help="samples per shard at most")
    ds.add_argument("--max-bytes", type=_parse_size, default=1 << 30,
                    help="approximate shard size limit: 1000000, 500MB, 1GB, 512MiB (default 1GiB)")
    ds.add_argument("--seed", type=int, default=0, help="shuffling seed")
    ds.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="keep the source order")
    ds.add_argument("--overwrite", action="store_true", help="replace earlier shards in --out")
    ds.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds.set_defaults(func=cmd_data_make_shards)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from xvl.configlib import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        # bad input: one clear line, no traceback (use -v for the traceback)
        if args.verbose:
            raise
        print(f"xvl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
