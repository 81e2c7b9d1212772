"""Zero-shot cross-lingual VQA evaluation (xGQA / IGLUE protocol).

Library behind ``xvl eval vqa --model DIR --data FILE.jsonl [--image-root DIR] [--out FILE.json]``.

The model answers by classification: the question's tokens go through the text tower, the fusion
encoder lets them attend to the image's patch tokens, and the fused [CLS] state (position 0) feeds
``model.answer_head`` (logits over ``model.cfg.vqa_answers``, set by ``xvl finetune vqa``). The
prediction is the argmax answer (:func:`answer_logits`, shared with the fine-tuning loop).

Accuracy of one question = ``min(1, score of the predicted answer in its "answers")`` (GQA: 1 for the
single gold answer, else 0; VQA v2 soft scores work unchanged). A question none of whose answers is
in the model's vocabulary (out of vocabulary, OOV) stays in the denominator and is necessarily
wrong; their number is reported.

Output (:func:`evaluate_vqa`)::

    {"per_language": {LANG: {"accuracy": acc, "n": N, "n_out_of_vocabulary": N_oov}},
     "average_non_en": acc,          # unweighted mean over the languages other than en
     "n_out_of_vocabulary": N,       # distinct questions (qids) with no answer in the vocabulary
     "n_questions": N,               # distinct questions evaluated
     "n_skipped": {reason: count}}

Images are encoded once per batch they appear in: questions are processed sorted by image, so an
image with many questions (xGQA: ~28 questions x 8 languages per image) costs a few vision passes,
not hundreds.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from xvl.data.images import SkipCounter, load_image
from xvl.data.vqa import VQARecord, check_languages
from xvl.evaluation.common import mean, pct, render_table
from xvl.evaluation.common import progress as progress_bar

logger = logging.getLogger(__name__)

__all__ = ["answer_logits", "vqa_accuracy", "iter_answer_logits", "predict_answers", "evaluate_vqa", "format_vqa_table"]

#: the language left out of ``average_non_en`` (the fine-tuning language of the zero-shot protocol)
SOURCE_LANGUAGE = "en"


def answer_logits(model, input_ids: Tensor, attention_mask: Tensor, lang: Optional[Tensor] = None,
                  image: Optional[Tensor] = None, image_tokens: Optional[Tensor] = None) -> Tensor:
    """[B, num_answers] answer logits: question tokens attend to the image's patch tokens in the
    fusion encoder; its [CLS] state goes through ``model.answer_head``.

    Give ``image`` [B,3,H,W] or precomputed ``image_tokens`` [B,N,C] (``model.vision(...)["image_tokens"]``).
    ``lang``: [B] language ids (needed by models with per-language adapters).
    """
    if model.answer_head is None:
        raise ValueError("the model has no VQA answer head: fine-tune it first with `xvl finetune vqa`")
    if image_tokens is None:
        if image is None:
            raise ValueError("answer_logits needs image or image_tokens")
        image_tokens = model.vision(image)["image_tokens"]
    text = model.text(input_ids, attention_mask, lang=lang)["text_tokens"]
    fused = model.fuse(text, attention_mask, image_tokens, context_type="image")
    return model.answer_head(fused[:, 0])


def vqa_accuracy(answers: Dict[str, float], predicted: Optional[str]) -> float:
    """``min(1, answers[predicted])``; 0 for an answer not among ``answers`` (or no prediction)."""
    if predicted is None:
        return 0.0
    return min(1.0, float(answers.get(predicted, 0.0)))


def _collect(records: Sequence[VQARecord], languages) -> List[Tuple[int, str]]:
    """``(record index, lang)`` items in the requested languages, grouped by image."""
    wanted = None
    if languages is not None:
        wanted = {languages} if isinstance(languages, str) else set(languages)
    items = [(r, lang) for r, rec in enumerate(records) for lang in sorted(rec.questions)
             if wanted is None or lang in wanted]
    # consecutive items share images: each image is encoded once per batch it appears in
    items.sort(key=lambda it: (records[it[0]].image, it[0], it[1]))
    return items


@torch.no_grad()
def iter_answer_logits(model, records: Sequence[VQARecord], items: Sequence[Tuple[int, str]], image_root: str,
                       batch_size: int, skips: SkipCounter, progress: bool = False):
    """Yield ``(item positions, [b, num_answers] logits)`` batch by batch for the ``(record index,
    lang)`` items, in order; items whose image cannot be loaded are left out (counted in ``skips``).

    Each distinct image of a batch goes through the vision tower once; its patch tokens are kept for
    the next batch too (items sorted by image, as :func:`_collect` makes them, then rarely re-encode).
    The model must be in eval mode.
    """
    device = next(model.parameters()).device
    cache: Dict[str, Optional[Tensor]] = {}  # image path -> [N, C] tokens (None: unreadable)
    bar = progress_bar(range(0, len(items), batch_size), progress, desc="vqa", unit="batch",
                       total=math.ceil(len(items) / batch_size))
    for start in bar:
        chunk = range(start, min(start + batch_size, len(items)))
        paths = {i: os.path.join(image_root, records[items[i][0]].image) if image_root
                 else records[items[i][0]].image for i in chunk}
        new = [p for p in dict.fromkeys(paths.values()) if p not in cache]
        pixels, loaded = [], []
        for p in new:
            img = load_image(p, skips)  # counts + logs missing_image / bad_image
            if img is not None:
                try:
                    pixels.append(model.preprocess(img))
                    loaded.append(p)
                    continue
                except Exception as e:  # a degenerate image must not end a long eval
                    skips.skip("bad_image", f"{p}: preprocess failed: {e!r}")
            cache[p] = None
        if pixels:
            toks = model.vision(torch.stack(pixels).to(device))["image_tokens"]
            cache.update(zip(loaded, toks))
        rows = [i for i in chunk if cache[paths[i]] is not None]
        for i in chunk:
            if cache[paths[i]] is None:
                skips.skip("question_without_image", f"qid {records[items[i][0]].qid} [{items[i][1]}]")
        # keep only this batch's images for the next batch (sorted by image: that is all it can reuse)
        cache = {p: cache[p] for p in set(paths.values())}
        if not rows:
            continue
        tok = model.tokenize([records[items[i][0]].questions[items[i][1]] for i in rows])
        lang = torch.tensor([model.lang_to_id[items[i][1]] for i in rows], dtype=torch.long, device=device)
        yield rows, answer_logits(model, tok["input_ids"].to(device), tok["attention_mask"].to(device), lang,
                                  image_tokens=torch.stack([cache[paths[i]] for i in rows]))


def predict_answers(model, records: Sequence[VQARecord], items: Sequence[Tuple[int, str]], image_root: str,
                    batch_size: int, skips: SkipCounter, progress: bool = False) -> List[Optional[str]]:
    """The argmax answer for each ``(record index, lang)`` item; None where the image could not be
    loaded (counted in ``skips``). The model must be in eval mode."""
    vocab = model.cfg.vqa_answers
    preds: List[Optional[str]] = [None] * len(items)
    for rows, logits in iter_answer_logits(model, records, items, image_root, batch_size, skips, progress):
        for i, k in zip(rows, logits.argmax(dim=-1).tolist()):
            preds[i] = vocab[k]
    return preds


def evaluate_vqa(model, records: Sequence[VQARecord], image_root: Optional[str], batch_size: int = 64,
                 languages=None, progress: bool = False, return_predictions: bool = False) -> dict:
    """Per-language VQA accuracy of a fine-tuned model (output: see the module docstring).

    Args:
        model: an :class:`~xvl.models.model.XVLModel` with a fusion encoder and an answer head.
        records: from :func:`xvl.data.vqa.read_vqa_jsonl`.
        image_root: directory the records' image paths are relative to (None / "": as written).
        batch_size: questions per forward pass.
        languages: evaluate only these languages (default: every language in the data); a
            requested language without questions is left out with a warning.
        return_predictions: also return ``"predictions": {qid: {lang: answer}}``.

    Every question language must be one of the model's languages (``ValueError`` naming the file
    and line, before any work). Questions whose image cannot be loaded are left out and counted in
    ``n_skipped`` (``missing_image`` / ``bad_image`` per image, ``question_without_image`` per
    question and language). The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(model, "answer_head", None) is None or not model.cfg.vqa_answers:
        raise ValueError("the model has no VQA answer head: fine-tune it first with `xvl finetune vqa`")
    items = _collect(records, languages)
    if not items:
        raise ValueError(f"no questions to evaluate in {len(records)} records (languages={languages})")
    check_languages([records[r] for r in dict.fromkeys(r for r, _ in items)], model.lang_to_id)
    if languages is not None:
        present = {lang for _, lang in items}
        for lang in ([languages] if isinstance(languages, str) else languages):
            if lang not in present:
                logger.warning("vqa eval: no questions in language %r", lang)

    skips = SkipCounter("vqa eval")
    was_training = model.training
    model.eval()
    try:
        preds = predict_answers(model, records, items, image_root or "", batch_size, skips, progress)
    finally:
        model.train(was_training)

    vocab = set(model.cfg.vqa_answers)
    acc: Dict[str, List[float]] = {}
    oov: Dict[str, int] = {}
    oov_qids, qids = set(), set()
    predictions: Dict[str, Dict[str, str]] = {}
    for (r, lang), pred in zip(items, preds):
        if pred is None:  # image unreadable: skipped (counted), not scored
            continue
        rec = records[r]
        qids.add(rec.qid)
        acc.setdefault(lang, []).append(vqa_accuracy(rec.answers, pred))
        is_oov = not any(a in vocab for a in rec.answers)
        oov[lang] = oov.get(lang, 0) + is_oov
        if is_oov:
            oov_qids.add(rec.qid)
        predictions.setdefault(rec.qid, {})[lang] = pred
    if not acc:
        raise ValueError(f"no question could be evaluated (root {image_root or os.getcwd()!r}); "
                         f"skipped: {skips.as_dict()}")
    per_language = {lang: {"accuracy": mean(v), "n": len(v), "n_out_of_vocabulary": oov[lang]}
                    for lang, v in sorted(acc.items())}
    non_en = [per_language[lang]["accuracy"] for lang in per_language if lang != SOURCE_LANGUAGE]
    result = {"per_language": per_language,
              "average_non_en": mean(non_en) if non_en else None,
              "n_out_of_vocabulary": len(oov_qids),
              "n_questions": len(qids),
              "n_skipped": skips.as_dict()}
    for lang, r in per_language.items():
        logger.info("vqa [%s]: %d questions, accuracy %.4f", lang, r["n"], r["accuracy"])
    if oov_qids:
        logger.warning("vqa eval: %d question(s) have no answer in the model's %d-answer vocabulary "
                       "(counted as wrong)", len(oov_qids), len(vocab))
    if skips.total:
        logger.warning("vqa eval: skipped %s", skips.as_dict())
    if return_predictions:
        result["predictions"] = predictions
    return result


def format_vqa_table(result: dict) -> str:
    """Plain-text table of an :func:`evaluate_vqa` result: one row per language (n, OOV, accuracy in
    percent), then the unweighted non-English average."""
    header = ["lang", "n", "n_oov", "accuracy"]
    per = result.get("per_language", {})
    # the fine-tuning language first, then the zero-shot ones
    order = sorted(per, key=lambda lang: (lang != SOURCE_LANGUAGE, lang))
    rows = [[lang, str(per[lang].get("n", "-")), str(per[lang].get("n_out_of_vocabulary", "-")),
             pct(per[lang].get("accuracy"))] for lang in order]
    rows.append(["avg non-en", "-", str(result.get("n_out_of_vocabulary", "-")), pct(result.get("average_non_en"))])
    return render_table(header, rows)
