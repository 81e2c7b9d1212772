"""The step-based training loop (Accelerate), readable in one sitting.

Order of work: resolve and check every input (config, data files, objectives) -> tokenizer -> model
-> objectives -> optimizer -> (resume) -> steps. Each step: ``grad_accum_steps`` micro-batches ->
clip -> AdamW step with the warmup+cosine lr of that step. Logging every ``log_every`` steps to the
progress bar, ``metrics.jsonl`` and TensorBoard; retrieval eval every ``eval_every``; an atomic
checkpoint every ``ckpt_every`` and at the end; the final model directory in ``<run>/model``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from xvl.atomic import atomic_write_text
from xvl.config import XVLConfig, save_config, to_dict
from xvl.data.mixing import MixedBatchSampler, TaskCollator, TaskDataset
from xvl.data.captions import (CaptionCollator, CaptionItemBuilder, ImageCaptionDataset, PreparingCollator,
                               load_caption_records, read_caption_jsonl)
from xvl.data.images import SkipCounter
from xvl.data.loader import make_loader
from xvl.data.sampler import ResumableBatchSampler
from xvl.data.transforms import build_image_transform
from xvl.models.model import XVLModel, init_from_model_dir
from xvl.objectives.base import CompositeObjective, build_objectives, parse_objective_args
from xvl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from xvl.train.optim import build_optimizer, lr_at

logger = logging.getLogger(__name__)


def resolve_path(root: str, path: Optional[str]) -> Optional[str]:
    """``path`` as given when absolute or existing relative to cwd, else relative to ``root``."""
    if path is None:
        return None
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(root, path)


class TrainingModule(nn.Module):
    """Model + objectives as one module, so DDP syncs objective heads too and the loss is one call."""

    def __init__(self, model: XVLModel, objectives: CompositeObjective):
        super().__init__()
        self.model = model
        self.objectives = objectives

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.objectives(self.model(batch), batch)


@dataclass
class TrainResult:
    run_dir: str
    model_dir: str
    step: int
    eval: Optional[dict]  # retrieval on the val captions (None without data.val)
    bitext: Optional[dict] = None  # Tatoeba bitext accuracy (None without eval.tatoeba)


def _precision(setting: str) -> str:
    if setting == "fp32":
        return "no"
    if setting == "auto":
        # bf16 autocast on CPU is much slower than fp32 (../shared/ENV.md): only on capable GPUs
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return setting


def setup_tokenizer(cfg: XVLConfig, run_dir: str, train_texts) -> object:
    """The run's tokenizer: the run dir's (resume), a configured dir, the pretrained text model's,
    or one trained on the training captions (saved in ``<run>/tokenizer``)."""
    from xvl.data.tokenizer import load_tokenizer, train_tokenizer

    tcfg, text = cfg.model.text.tokenizer, cfg.model.text
    saved = os.path.join(run_dir, "tokenizer")
    if os.path.exists(os.path.join(saved, "tokenizer_config.json")):
        return load_tokenizer(saved, max_length=text.max_length)
    if tcfg.path or text.pretrained or cfg.train.init_from:
        tok = load_tokenizer(tcfg.path or text.pretrained or cfg.train.init_from, max_length=text.max_length)
    else:
        logger.info("training a %s tokenizer (vocab %d) on the training captions", tcfg.model, tcfg.vocab_size)
        tok = train_tokenizer(list(train_texts()), vocab_size=tcfg.vocab_size, model=tcfg.model,
                              min_frequency=tcfg.min_frequency, max_length=text.max_length,
                              split_cjk=tcfg.split_cjk)
    tok.save_pretrained(saved)
    return tok


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop metric lines a killed run logged after its last checkpoint (they are about to be redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
    atomic_write_text(path, "".join(keep))


@dataclass
class TrainingData:
    """What a run trains on: image-caption records and/or parallel-text corpora.

    Captions only: image-text training. Parallel text only: text-only training of the text tower.
    Both: a mixed run, each micro-batch drawn from one of them by ``data.task_ratios``.
    """

    records: Optional[list] = None
    corpora: Optional[dict] = None
    # streamed sources (data.sources): checked ResolvedSource entries, read by StreamingBatches
    streams: Optional[list] = None
    tokenizer_texts: int = 200_000

    @property
    def kind(self) -> str:
        if self.streams is not None:
            tasks = {s.task for s in self.streams}
            return {frozenset({"text_pair"}): "parallel", frozenset({"image_text"}): "captions"}.get(
                frozenset(tasks), "mixed")
        if self.records is not None and self.corpora is not None:
            return "mixed"
        return "captions" if self.records is not None else "parallel"

    def texts(self):
        """Every training sentence (for training a tokenizer); streamed sources: the first
        ``tokenizer_texts`` of them."""
        if self.streams is not None:
            from xvl.data.stream_sources import source_texts

            yield from source_texts(self.streams, self.tokenizer_texts)
            return
        for rec in self.records or ():
            for texts in rec.captions.values():
                yield from texts
        for pairs in (self.corpora or {}).values():
            for p in pairs:
                yield p.src_text
                yield p.tgt_text


def load_training_data(cfg: XVLConfig, train_path: Optional[str], skips: SkipCounter) -> TrainingData:
    """Read and validate the training data (errors here come before any model work)."""
    data = TrainingData()
    if cfg.data.sources:
        from xvl.data.stream_sources import resolve_sources

        data.streams = resolve_sources(cfg, cfg.model.languages, skips)
        data.tokenizer_texts = cfg.data.stream.tokenizer_texts
        logger.info("streamed sources: %s", ", ".join(f"{s.name} ({s.task}, weight {s.weight:g})" for s in data.streams))
        return data
    if train_path is not None:
        image_root = resolve_path(cfg.data.root, cfg.data.image_root)
        data.records = load_caption_records(train_path, image_root, languages=cfg.data.languages,
                                            exclude_kinds=cfg.data.exclude_kinds,
                                            known_languages=cfg.model.languages,
                                            max_records=cfg.data.max_train_records, skips=skips)
    if cfg.data.parallel.sources:
        from xvl.data.parallel import load_parallel_sources

        corpora = load_parallel_sources(cfg.data.parallel.sources, cfg.data.root, skips)
        known = set(cfg.model.languages)
        unknown = sorted({lang for pairs in corpora.values() for p in pairs
                          for lang in (p.src_lang, p.tgt_lang)} - known)
        if unknown:
            raise ValueError(f"parallel data has languages {unknown} that are not in model.languages {sorted(known)}")
        logger.info("parallel corpora: %s", {k: len(v) for k, v in corpora.items()})
        data.corpora = corpora
    return data


def vqa_vocabulary(data: TrainingData) -> Optional[List[str]]:
    """The answer vocabulary of the run's vqa sources (None without any; they must agree)."""
    vocabularies = [s.answers for s in (data.streams or []) if s.task == "vqa"]
    if not vocabularies:
        return None
    if any(v != vocabularies[0] for v in vocabularies[1:]):
        raise ValueError("the vqa sources name different answer vocabularies: use one answers file")
    return vocabularies[0]


def task_ratios(cfg: XVLConfig, data: TrainingData) -> Dict[str, float]:
    """Share of micro-batches per task in a mixed run (``data.task_ratios``; default 1:1)."""
    ratios = dict(cfg.data.task_ratios) or {"image_text": 1.0, "text_pair": 1.0}
    unknown = sorted(set(ratios) - {"image_text", "text_pair"})
    if unknown:
        raise ValueError(f"data.task_ratios: unknown task(s) {unknown}; tasks are image_text and text_pair")
    return ratios


def _pair_sampling(cfg: XVLConfig, objectives: CompositeObjective) -> str:
    if cfg.data.pair_sampling != "auto":
        return cfg.data.pair_sampling
    return "prefer_strict" if any(o.needs_pairs for o in objectives.parts) else "none"


def caption_item_builder(cfg: XVLConfig, model: XVLModel, objectives: CompositeObjective) -> CaptionItemBuilder:
    """How an image record becomes a training item in this run (transform, caption and pair sampling)."""
    transform = build_image_transform(model.vision.data_config(), train=True, augment=cfg.data.augment,
                                      scale=cfg.data.augment_scale)
    with_objects = any(o.needs_objects for o in objectives.parts)
    if with_objects and cfg.data.augment:
        raise ValueError("an objective reads object boxes (mrtm) but data.augment crops images at random, "
                         "which the boxes do not follow: set data.augment=false")
    return CaptionItemBuilder(transform, model.lang_to_id, caption_sampling=cfg.data.caption_sampling,
                              pair_sampling=_pair_sampling(cfg, objectives), with_objects=with_objects)


def task_collators(tasks, cfg: XVLConfig, tokenizer, objectives: CompositeObjective) -> Dict[str, object]:
    """Per task, the collator (tokenization) followed by the objectives' input preparers (masking)."""
    from xvl.data.parallel import ParallelCollator

    preparers = [p for p in (o.input_preparer() for o in objectives.parts) if p is not None]
    writes = [o.prepares or o.name for o in objectives.parts if o.input_preparer() is not None]
    if len(writes) != len(set(writes)):
        raise ValueError(f"objectives {[o.name for o in objectives.parts]} prepare the same masked inputs "
                         "(mlm and tlm both write mlm_*): use one of them per run")
    made = {"image_text": CaptionCollator, "text_pair": ParallelCollator}
    out = {}
    for task in tasks:
        if task == "vqa":  # no masking: the vqa objective reads the question as it is
            from xvl.data.stream_sources import VQABatchCollator

            out[task] = VQABatchCollator(tokenizer, cfg.model.text.max_length, len(cfg.model.vqa_answers))
            continue
        collate = made[task](tokenizer, cfg.model.text.max_length)
        out[task] = PreparingCollator(collate, preparers, tokenizer, seed=cfg.train.seed) if preparers else collate
    return out


def build_dataset(data: TrainingData, cfg: XVLConfig, model: XVLModel, tokenizer, objectives: CompositeObjective):
    """The map-style dataset and its collator for ``data`` (plus the objectives' input preparers)."""
    datasets = {}
    if data.records is not None:
        builder = caption_item_builder(cfg, model, objectives)
        datasets["image_text"] = ImageCaptionDataset(
            data.records, builder.transform, model.lang_to_id, seed=cfg.train.seed,
            caption_sampling=builder.caption_sampling, pair_sampling=builder.pair_sampling,
            with_objects=builder.with_objects)
    if data.corpora is not None:
        from xvl.data.parallel import ParallelTextDataset

        datasets["text_pair"] = ParallelTextDataset(data.corpora, model.lang_to_id, seed=cfg.train.seed,
                                                    alpha=cfg.data.parallel.alpha, swap=cfg.data.parallel.swap)
    collators = task_collators(list(datasets), cfg, tokenizer, objectives)
    if len(datasets) == 1:
        (dataset,), (collate,) = datasets.values(), collators.values()
    else:
        dataset, collate = TaskDataset(datasets), TaskCollator(collators)
    return dataset, collate


def build_stream(data: TrainingData, cfg: XVLConfig, model: XVLModel, tokenizer, objectives: CompositeObjective,
                 rank: int, world: int, start_batch: int, data_state: Optional[dict]):
    """The streamed batches of ``data.sources`` (an IterableDataset of collated micro-batches)."""
    from xvl.data.stream_dataset import StreamingBatches
    from xvl.data.stream_sources import stream_sources

    tasks = sorted({s.task for s in data.streams})
    builder = caption_item_builder(cfg, model, objectives) if "image_text" in tasks else None
    plain = build_image_transform(model.vision.data_config(), train=False) if "vqa" in tasks else None
    sources = stream_sources(data.streams, cfg, builder, model.lang_to_id, plain_transform=plain)
    positions, seed_batch = None, 0
    if data_state is not None:
        workers = max(1, cfg.data.num_workers)
        if data_state.get("world") == world and data_state.get("num_workers") == workers:
            positions = {int(w): p for w, p in data_state["positions"].get(str(rank), {}).items()}
            seed_batch = int(data_state.get("seed_batch", 0))
        else:
            seed_batch = start_batch
            logger.warning("resume: the data position was saved with %s processes x %s workers, this run has %d x %d; "
                           "the streams are reseeded instead (samples may repeat)", data_state.get("world"),
                           data_state.get("num_workers"), world, workers)
    elif start_batch:
        seed_batch = start_batch
        logger.warning("resume: the checkpoint has no data position; the streams are reseeded (samples may repeat)")
    return StreamingBatches(sources, task_collators(tasks, cfg, tokenizer, objectives), cfg.train.batch_size,
                            seed=cfg.train.seed, rank=rank, world_size=world, start_batch=start_batch,
                            positions=positions, seed_batch=seed_batch)


def build_sampler(dataset, data: TrainingData, cfg: XVLConfig, world: int, rank: int, start_batch: int):
    """The resumable batch sampler: one task, or a :class:`MixedBatchSampler` over both."""
    t = cfg.train
    if isinstance(dataset, TaskDataset):
        sizes = {k: len(d) for k, d in dataset.datasets.items()}
        return MixedBatchSampler(sizes, task_ratios(cfg, data), t.batch_size, world, rank, seed=t.seed,
                                 start_batch=start_batch)
    return ResumableBatchSampler(len(dataset), t.batch_size, world, rank, seed=t.seed, start_batch=start_batch)


def validate_objectives(cfg: XVLConfig) -> None:
    """Unknown objective names or args fail here, before any data or model is touched."""
    for spec in cfg.objectives:
        parse_objective_args(spec.name, spec.args)


def evaluate(model: XVLModel, cfg: XVLConfig, val_path: str, records: List[dict], progress: bool = False) -> dict:
    """Per-language retrieval of ``model`` on the (already parsed) validation records."""
    from xvl.evaluation.retrieval import evaluate_retrieval

    image_root = resolve_path(cfg.data.root, cfg.data.image_root) or os.path.dirname(os.path.abspath(val_path))
    was_training = model.training
    result = evaluate_retrieval(model, records, image_root, batch_size=cfg.eval.batch_size,
                                languages=cfg.data.languages,
                                include_machine_translation=cfg.eval.include_machine_translation,
                                progress=progress)
    model.train(was_training)
    return result


def train(cfg: XVLConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) training as configured; returns where the model went and the last eval."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, send_to_device

    t = cfg.train
    # ---- check inputs before any work
    train_path = resolve_path(cfg.data.root, cfg.data.train)
    val_path = resolve_path(cfg.data.root, cfg.data.val)
    for what, p in (("data.train", train_path), ("data.val", val_path)):
        if p is not None and not os.path.exists(p):
            raise FileNotFoundError(f"{what}: file not found: {p} (data.root={cfg.data.root})")
    if t.init_from and not os.path.exists(os.path.join(t.init_from, "model.safetensors")):
        raise FileNotFoundError(f"train.init_from: no xvl model directory at {t.init_from}")
    validate_objectives(cfg)
    # parse the val file now: a malformed one must fail before training, not at the first eval
    val_records = read_caption_jsonl(val_path) if val_path is not None else None
    tatoeba_dir = resolve_path(cfg.data.root, cfg.eval.tatoeba)
    if tatoeba_dir is not None:
        from xvl.evaluation.bitext import find_tatoeba_pairs

        find_tatoeba_pairs(tatoeba_dir)
    run_dir = t.output_dir
    if not resume and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue it, "
                              "or choose another train.output_dir")

    # objective buffers (XLCo's queue) are kept identical on every rank by the objectives themselves:
    # no need to broadcast them every step
    ddp = DistributedDataParallelKwargs(find_unused_parameters=t.find_unused_parameters, broadcast_buffers=False)
    # cpu=True on GPU-less machines: Accelerate forms a gloo process group under torchrun only then
    accelerator = Accelerator(mixed_precision=_precision(t.precision), kwargs_handlers=[ddp],
                              cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(f"launched as {launched} processes but Accelerate formed a group of "
                           f"{accelerator.num_processes}: each would train alone into the same run dir")
    main = accelerator.is_main_process
    torch.manual_seed(t.seed)
    if main:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))

    # ---- data
    skips = SkipCounter("train data")
    if cfg.data.sources:  # shards to write from a jsonl first (main process; the others wait)
        from xvl.data.stream_sources import make_missing_shards

        if main:
            make_missing_shards(cfg)
        accelerator.wait_for_everyone()
    data = load_training_data(cfg, train_path, skips)

    # ---- tokenizer, model, objectives, optimizer (rank 0 trains the tokenizer, others load it)
    if main:
        tokenizer = setup_tokenizer(cfg, run_dir, data.texts)
    accelerator.wait_for_everyone()
    if not main:
        tokenizer = setup_tokenizer(cfg, run_dir, data.texts)
    torch.manual_seed(t.seed)  # identical init on every rank and across resume
    model = XVLModel(cfg.model, tokenizer)
    if data.kind == "parallel":  # text-only training: the image tower is not used, keep it fixed
        for p in list(model.vision.parameters()) + list(model.image_proj.parameters()):
            p.requires_grad_(False)
    if t.init_from and not (resume and latest_checkpoint(run_dir) is not None):
        copied = init_from_model_dir(model, t.init_from, t.init_parts)
        logger.info("initialised %s from %s", copied, t.init_from)
    vqa_answers = vqa_vocabulary(data)
    if vqa_answers is not None:
        if not any(spec.name == "vqa" for spec in cfg.objectives):
            raise ValueError("data.sources has a vqa source but no vqa objective reads it: add {name: vqa}")
        if list(model.cfg.vqa_answers) != vqa_answers:
            model.set_answer_vocabulary(vqa_answers)
        cfg.model.vqa_answers = list(vqa_answers)
    objectives = build_objectives(cfg.objectives, model=model)
    module = TrainingModule(model, objectives)
    optimizer = build_optimizer(module, t.lr, t.weight_decay, t.betas, t.eps)

    start_step, samples_seen, data_state = 0, 0, None
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
        else:
            state, tstate = load_checkpoint(ckpt, optimizer)
            module.load_state_dict(state, strict=True)
            start_step, samples_seen = tstate["step"], tstate["samples_seen"]
            data_state = tstate.get("data_state")
            for k, v in tstate.get("skipped", {}).items():
                skips.counts[k] += v
            if main:
                logger.info("resumed from %s at step %d", ckpt, start_step)
                _truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), start_step)

    module, optimizer = accelerator.prepare(module, optimizer)
    unwrapped: TrainingModule = accelerator.unwrap_model(module)

    world, rank = accelerator.num_processes, accelerator.process_index
    if data.streams is not None:
        # each process streams its own part of every source (never through accelerator.prepare, which
        # would read on rank 0 and broadcast); workers decode and tokenize
        dataset = build_stream(data, cfg, model, tokenizer, objectives, rank, world,
                               start_batch=start_step * t.grad_accum_steps, data_state=data_state)
        loader = make_loader(dataset, cfg.data.num_workers, batch_size=None)
    else:
        dataset, collate = build_dataset(data, cfg, model, tokenizer, objectives)
        sampler = build_sampler(dataset, data, cfg, world, rank, start_batch=start_step * t.grad_accum_steps)
        # one loader for the whole run: workers start once, not every epoch
        loader = make_loader(dataset, cfg.data.num_workers, batch_sampler=sampler, collate_fn=collate)
    batches = iter(loader)
    # streamed data: the newest raw-sample positions per worker, from the batches actually consumed
    stream_positions: Dict[int, Dict[str, int]] = dict(getattr(dataset, "positions", None) or {})

    # ---- logging
    writer = None
    metrics_file = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(run_dir, "tb"))
        metrics_file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
    pbar = None
    if main and t.progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=t.max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(record: dict) -> None:
        if not main:
            return
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "step":
                writer.add_scalar(k, v, record["step"])

    def checkpoint(step: int) -> None:
        accelerator.wait_for_everyone()
        state = {"step": step, "samples_seen": samples_seen, "skipped": skips.as_dict(), "config": to_dict(cfg)}
        if data.streams is not None:
            state["data_state"] = gathered_data_state()
        if main:
            save_checkpoint(run_dir, step, unwrapped.state_dict(), optimizer, state, keep=t.keep_checkpoints)
        accelerator.wait_for_everyone()

    def gathered_data_state() -> dict:
        """Every process's stream positions (the checkpoint's data position)."""
        mine = {str(w): p for w, p in stream_positions.items()}
        if world > 1:
            from accelerate.utils import gather_object

            per_rank = gather_object([mine])
        else:
            per_rank = [mine]
        return {"world": world, "num_workers": max(1, cfg.data.num_workers), "seed_batch": dataset.seed_batch,
                "positions": {str(r): p for r, p in enumerate(per_rank)}}

    last_eval: Dict[str, Optional[dict]] = {"retrieval": None, "bitext": None}

    def run_eval(step: int) -> Dict[str, Optional[dict]]:
        """Retrieval on the val captions and/or bitext on the Tatoeba dir, on the main process."""
        result: Dict[str, Optional[dict]] = {"retrieval": None, "bitext": None}
        if main and val_records is not None:
            ret = evaluate(unwrapped.model, cfg, val_path, val_records)
            rec = {"step": step, "val/mean_recall": ret["average"]["mean_recall"]}
            for lang, m in ret["per_language"].items():
                rec[f"val/{lang}/mean_recall"] = m["mean_recall"]
                rec[f"val/{lang}/t2i_r1"] = m["t2i"]["r1"]
            log(rec)
            result["retrieval"] = ret
        if main and tatoeba_dir is not None:
            from xvl.evaluation.bitext import evaluate_bitext

            bit = evaluate_bitext(unwrapped.model, tatoeba_dir=tatoeba_dir, scoring=cfg.eval.bitext_scoring,
                                  batch_size=cfg.eval.batch_size, progress=False)
            unwrapped.model.train()
            rec = {"step": step, "val/bitext_mean": bit["average"]["mean"]}
            for pair, m in bit["per_pair"].items():
                rec[f"val/bitext/{pair}/src2tgt"], rec[f"val/bitext/{pair}/tgt2src"] = m["src2tgt"], m["tgt2src"]
            log(rec)
            result["bitext"] = bit
        accelerator.wait_for_everyone()
        return result

    # ---- the loop
    module.train()
    # per-key sums and counts: in a mixed run an objective only reports on the batches it applies to
    sums: Dict[str, float] = defaultdict(float)
    counts: Dict[str, int] = defaultdict(int)
    t_window, samples_window = time.perf_counter(), 0
    global_batch = t.batch_size * t.grad_accum_steps * world
    step = start_step
    while step < t.max_steps:
        lr = lr_at(step, t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(t.grad_accum_steps):
            batch = next(batches)
            n_bad = int(batch.pop("n_skipped"))
            if n_bad:
                skips.counts["bad_image"] += n_bad
            for reason, n in batch.pop("data_skips", {}).items():
                skips.counts[reason] += n
            if "data_state" in batch:
                ds_state = batch.pop("data_state")
                stream_positions[int(ds_state["worker"])] = ds_state["positions"]
            batch = send_to_device(batch, accelerator.device)
            # dropout etc. draw from a generator seeded by (seed, step, micro, rank): exact resume
            torch.manual_seed(((t.seed * 1_000_003 + step) * 64 + micro) * 4096 + rank)
            sync = micro == t.grad_accum_steps - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(module)
            with ctx:
                with accelerator.autocast():
                    out = module(batch)
                accelerator.backward(out["loss"] / t.grad_accum_steps)
            for k, v in out.items():
                if torch.is_tensor(v) and v.ndim == 0:
                    sums[k] += float(v.detach())
                    counts[k] += 1
        if t.grad_clip > 0:
            sums["grad_norm"] += float(accelerator.clip_grad_norm_(module.parameters(), t.grad_clip))
            counts["grad_norm"] += 1
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.objectives.after_step(unwrapped.model)
        step += 1
        samples_seen += global_batch
        samples_window += global_batch

        if step % t.log_every == 0 or step == t.max_steps:
            dt = time.perf_counter() - t_window
            rec = {"step": step, "lr": lr, "samples_per_s": samples_window / dt, "samples_seen": samples_seen,
                   "skipped": skips.total}
            means = torch.tensor([v / counts[k] for k, v in sums.items()], dtype=torch.float64,
                                 device=accelerator.device)
            if world > 1:  # every rank saw its own shard: log the mean over processes
                means = accelerator.reduce(means, reduction="mean")
            rec.update(dict(zip(sums.keys(), means.tolist())))
            log(rec)
            if pbar is not None:
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}", refresh=False)
            sums.clear()
            counts.clear()
            t_window, samples_window = time.perf_counter(), 0
        if pbar is not None:
            pbar.update(1)
        if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
            last_eval = run_eval(step)
        if t.ckpt_every and step % t.ckpt_every == 0 and step < t.max_steps:
            checkpoint(step)

    if pbar is not None:
        pbar.close()
    if start_step < t.max_steps or latest_checkpoint(run_dir) is None:
        checkpoint(step)
    model_dir = os.path.join(run_dir, "model")
    if main:
        unwrapped.model.save_pretrained(model_dir)
    last_eval = run_eval(step)
    if main:
        for kind, result in last_eval.items():
            if result is not None:
                with open(os.path.join(run_dir, f"eval_{kind}.json"), "w") as f:
                    json.dump(result, f, indent=1, ensure_ascii=False)
        if skips.total:
            logger.warning("training data skips: %s", skips.as_dict())
        writer.close()
        metrics_file.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # else the launcher may abort the finished run
    return TrainResult(run_dir, model_dir, step, last_eval["retrieval"], last_eval["bitext"])
