"""Fine-tuning a model directory for VQA (zero-shot cross-lingual protocol of xGQA / IGLUE).

Library behind ``xvl finetune vqa --model DIR --train FILE --answers FILE --out DIR``.

Protocol: fine-tune on English questions only (``languages=("en",)``), then evaluate the same
model on every language (:mod:`xvl.evaluation.vqa`). The model answers by classification over the
answer vocabulary: the question tokens attend to the image patch tokens in the fusion encoder, the
fused [CLS] state feeds ``model.answer_head`` (created by ``model.set_answer_vocabulary`` when the
model has none, or one for another vocabulary; kept and trained further when it matches).

Loss (VQA standard, as UNITER / ALBEF's classifier variant): binary cross-entropy with logits
against the soft answer scores, summed over the answers and averaged over the batch
(:func:`vqa_loss`). Questions without any answer in the vocabulary have no target and are left
out (counted, reported as ``n_out_of_vocabulary``).

The loop is plain single-process PyTorch (CPU or one GPU, fp32), AdamW with the no-decay groups
and the warmup + cosine schedule of :mod:`xvl.train.optim`, gradient clipping; no Accelerate (a
GQA-sized fine-tune needs neither several processes nor resumable checkpoints). Outputs in
``out_dir``: ``model/`` (the fine-tuned model directory, written atomically), ``metrics.jsonl``
(loss and lr every ``log_every`` steps), ``finetune_vqa.json`` (the run summary) and, with a
validation file, ``eval_vqa.json`` (the :func:`~xvl.evaluation.vqa.evaluate_vqa` result).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from xvl.atomic import atomic_write_text
from xvl.data.images import SkipCounter
from xvl.data.loader import make_loader
from xvl.data.transforms import build_image_transform
from xvl.data.vqa import VQACollator, VQADataset, check_languages, load_answer_vocabulary, read_vqa_jsonl
from xvl.evaluation.vqa import answer_logits, evaluate_vqa
from xvl.train.optim import build_optimizer, lr_at

logger = logging.getLogger(__name__)

__all__ = ["vqa_loss", "finetune_vqa"]


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against soft scores, summed over the answers, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / logits.shape[0]


def _fusion_layers(model_dir: str) -> int:
    """``model.fusion.layers`` from a model directory's config, without loading the weights."""
    from xvl.models.model import CONFIG_FILE

    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir} is not an xvl model directory (no {CONFIG_FILE})")
    with open(path) as f:
        return int(((json.load(f).get("model") or {}).get("fusion") or {}).get("layers", 0))


def finetune_vqa(model_dir: str, train_file: str, out_dir: str, answers_file: str,
                 image_root: Optional[str] = None, epochs: float = 3, max_steps: Optional[int] = None,
                 batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                 grad_clip: float = 1.0, languages: Sequence[str] = ("en",), seed: int = 0,
                 val_file: Optional[str] = None, val_languages: Optional[Sequence[str]] = None,
                 eval_batch_size: int = 64, device: Optional[str] = None, num_workers: int = 0,
                 log_every: int = 10, progress: bool = True) -> dict:
    """Fine-tune ``model_dir`` for VQA on ``train_file`` and save it to ``out_dir/model``.

    Args:
        model_dir: a model directory with a fusion encoder (trained with ``model.fusion.layers > 0``).
        train_file: gqa-schema jsonl (:mod:`xvl.data.vqa`).
        answers_file: the answer vocabulary (``{answer: index}`` or a list).
        image_root: directory the image paths are relative to, for the train and the val file
            (default: each file's own directory).
        epochs: passes over the training questions (fractions allowed); ``max_steps`` overrides.
        batch_size, lr, weight_decay, warmup_ratio, grad_clip: AdamW, linear warmup over
            ``warmup_ratio`` of the steps then cosine to 0, gradient-norm clipping.
        languages: question languages trained on (zero-shot protocol: English only).
        val_file: evaluate on it at the end (every language, or ``val_languages``) and write
            ``out_dir/eval_vqa.json``.
        device: default ``cuda`` when available, else ``cpu``.

    Returns a dict: ``model_dir``, ``steps``, ``epochs``, ``n_train_items`` (question x language
    items), ``n_out_of_vocabulary`` (training questions left out), ``n_skipped``, ``loss_first`` /
    ``loss_last`` (mean training loss over the first / last ``log_every`` steps), ``losses`` (every
    step), ``seconds``, ``eval`` (or None) and ``model`` (the fine-tuned model, in eval mode).

    Raises before any training: ``FileNotFoundError`` for missing files, ``ValueError`` for a model
    without a fusion encoder, languages the model does not know, malformed data or vocabulary, or no
    trainable question.
    """
    from xvl.models.model import load

    # ---- check everything before any work
    if max_steps is None and not epochs > 0:
        raise ValueError(f"epochs must be > 0 (or give max_steps), got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if batch_size < 1 or eval_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size}, {eval_batch_size}")
    if not lr > 0 or not 0 <= warmup_ratio < 1:
        raise ValueError(f"need lr > 0 and 0 <= warmup_ratio < 1, got lr={lr}, warmup_ratio={warmup_ratio}")
    languages = [languages] if isinstance(languages, str) else list(languages)
    if not languages:
        raise ValueError("languages: give at least one training language")
    for what, p in (("train file", train_file), ("answer vocabulary", answers_file), ("val file", val_file)):
        if p is not None and not os.path.isfile(p):
            raise FileNotFoundError(f"{what} not found: {p}")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if _fusion_layers(model_dir) < 1:
        raise ValueError(f"{model_dir} has no fusion encoder (model.fusion.layers = 0): VQA reads the fused "
                         "[CLS] of the question attending to the image; train the model with "
                         "model.fusion.layers > 0 (e.g. `xvl train ... model.fusion.layers=2`)")
    if image_root is not None and not os.path.isdir(image_root):
        raise FileNotFoundError(f"image root not found: {image_root}")
    answers = load_answer_vocabulary(answers_file)
    skips = SkipCounter("vqa train")
    train_records = read_vqa_jsonl(train_file, languages=languages, skips=skips)
    val_records = read_vqa_jsonl(val_file, languages=val_languages) if val_file else None

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(model_dir)
    unknown = [lang for lang in languages if lang not in model.lang_to_id]
    if unknown:
        raise ValueError(f"training languages {unknown} are not in the model's languages {model.cfg.languages}")
    check_languages(train_records, model.cfg.languages)
    if val_records is not None:
        check_languages(val_records, model.cfg.languages)

    torch.manual_seed(seed)
    if model.answer_head is None or list(model.cfg.vqa_answers) != answers:
        model.set_answer_vocabulary(answers)
    model.to(dev)
    train_root = image_root or os.path.dirname(os.path.abspath(train_file))
    dataset = VQADataset(train_records, train_root, build_image_transform(model.vision.data_config()),
                         model.lang_to_id, answers, languages=languages, skips=skips)
    if len(dataset) == 0:
        raise ValueError(f"{train_file}: no trainable question in languages {languages} "
                         f"(out of vocabulary: {dataset.n_out_of_vocabulary}, skipped: {skips.as_dict()})")
    loader = make_loader(dataset, num_workers, batch_size=batch_size, shuffle=True,
                         drop_last=len(dataset) >= batch_size, generator=torch.Generator().manual_seed(seed),
                         collate_fn=VQACollator(model.tokenizer, model.cfg.text.max_length, len(answers)),
                         persistent_workers=num_workers > 0)
    total = int(max_steps) if max_steps is not None else max(1, math.ceil(epochs * len(loader)))
    warmup = int(warmup_ratio * total)
    optimizer = build_optimizer(model, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8)
    os.makedirs(out_dir, exist_ok=True)
    logger.info("vqa fine-tuning: %d items (%s), %d answers, %d steps of %d, lr %g, on %s", len(dataset),
                ",".join(languages), len(answers), total, batch_size, lr, dev)

    # ---- train
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="finetune vqa", dynamic_ncols=True)
    losses = []
    n_skipped = 0
    t0 = time.perf_counter()
    model.train()
    step = logged = 0
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as metrics:
        while step < total:
            for batch in loader:
                if step >= total:
                    break
                cur_lr = lr_at(step, lr, warmup, total)
                for g in optimizer.param_groups:
                    g["lr"] = cur_lr
                logits = answer_logits(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                                       batch["lang"].to(dev), image=batch["image"].to(dev))
                loss = vqa_loss(logits, batch["targets"].to(dev))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite VQA loss at step {step}; lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
                optimizer.step()
                losses.append(float(loss.detach()))
                n_skipped += int(batch["n_skipped"])
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{cur_lr:.2e}")
                if step % log_every == 0 or step == total:
                    window, logged = losses[logged:], step
                    rec = {"step": step, "loss": sum(window) / len(window), "lr": cur_lr,
                           "grad_norm": None if grad_norm is None else float(grad_norm)}
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    model.eval()

    # ---- save, then (optionally) evaluate
    saved = os.path.join(out_dir, "model")
    model.save_pretrained(saved)
    k = min(log_every, len(losses))
    result = {"model_dir": saved, "steps": total, "epochs": total / len(loader), "n_train_items": len(dataset),
              "n_out_of_vocabulary": dataset.n_out_of_vocabulary,
              "n_skipped": {**skips.as_dict(), "replaced_in_batches": n_skipped},
              "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "seconds": seconds,
              "languages": languages, "lr": lr, "batch_size": batch_size, "eval": None}
    logger.info("vqa fine-tuning done: %d steps in %.0fs, loss %.4f -> %.4f; model saved to %s",
                total, seconds, result["loss_first"], result["loss_last"], saved)
    if val_records is not None:
        val_root = image_root or os.path.dirname(os.path.abspath(val_file))
        result["eval"] = evaluate_vqa(model, val_records, val_root, batch_size=eval_batch_size,
                                      languages=val_languages, progress=progress)
        atomic_write_text(os.path.join(out_dir, "eval_vqa.json"),
                          json.dumps(result["eval"], indent=1, ensure_ascii=False))
    atomic_write_text(os.path.join(out_dir, "finetune_vqa.json"), json.dumps(result, indent=1, ensure_ascii=False))
    result["losses"] = losses
    result["model"] = model
    return result
