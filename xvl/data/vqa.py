"""Visual question answering data in the gqa schema: reader, answer vocabulary, soft targets,
a map-style Dataset and its collator.

Schema (one question per line; xGQA adds the same question in several languages)::

    {"qid": "201640614", "image": "images/n235859.jpg",
     "question": {"en": "Who is wearing the dress?", "de": "Wer trägt das Kleid?", ...},
     "answers": {"women": 1.0}}

``answers`` maps an answer string to its score in [0, 1] (GQA: one answer with score 1.0; VQA v2:
``min(1, #annotators / 3)``). Answers are matched to the vocabulary exactly as written (GQA's and
xGQA's answers are already normalized English strings; xGQA keeps the answers in English for every
language, so the answer head is language independent).

VQA is classification over a fixed answer vocabulary (``answers.json``: ``{answer: index}`` or a
list). A question none of whose answers is in the vocabulary is *out of vocabulary* (OOV): it has
no training target, so :class:`VQADataset` leaves it out of training and counts it; the evaluator
keeps it and counts it as wrong (the model can never predict it), reported as
``n_out_of_vocabulary``.

Everything cheap is checked when a file is read, before any training: the file parses, each line
is an object with the schema's fields, languages are known to the model (an error naming the file
and the line). Empty question texts are skipped and counted (never silent).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from xvl.data.images import SkipCounter, load_image
from xvl.data.jsonl import iter_jsonl_objects

logger = logging.getLogger(__name__)

__all__ = ["VQARecord", "read_vqa_jsonl", "check_languages", "load_answer_vocabulary", "soft_target",
           "dense_target", "VQADataset", "VQACollator"]


@dataclass
class VQARecord:
    """One question (in one or several languages) about one image."""

    qid: str
    image: str  # as written in the file (relative to the image root, or absolute)
    questions: Dict[str, str]  # lang -> non-empty question text
    answers: Dict[str, float]  # answer -> score
    path: str = ""  # where it was read from (for error messages)
    line: int = 0


def _where(path: str, line: int) -> str:
    return f"{path}, line {line}"


def check_languages(records: Sequence[VQARecord], known_languages: Sequence[str]) -> None:
    """``ValueError`` naming the file and line of the first question in a language the model has no
    id for (``model.languages``), with the full list of unknown codes."""
    known = set(known_languages)
    unknown: Dict[str, VQARecord] = {}
    for rec in records:
        for lang in rec.questions:
            if lang not in known and lang not in unknown:
                unknown[lang] = rec
    if unknown:
        lang, rec = next(iter(unknown.items()))
        raise ValueError(f"{_where(rec.path, rec.line)}: question language '{lang}' is not in the model's "
                         f"languages {sorted(known)} (unknown in this file: {sorted(unknown)}); "
                         "leave it out with --languages, or train a model that knows it")


def read_vqa_jsonl(path: str, languages: Optional[Sequence[str]] = None,
                   known_languages: Optional[Sequence[str]] = None,
                   skips: Optional[SkipCounter] = None) -> List[VQARecord]:
    """Read and validate a gqa-schema jsonl file (blank lines are ignored).

    Args:
        languages: keep only questions in these languages (a filter, not counted).
        known_languages: the model's languages; a kept question in another language is a
            ``ValueError`` naming the file and line (see :func:`check_languages`).
        skips: counts ``empty_question`` (a question text that is empty or whitespace) and
            ``no_question`` (a record left without any question in the kept languages because all
            of its texts were empty).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the
    1-based line for: invalid UTF-8 or JSON, a line that is not an object, a missing or empty
    ``"qid"`` / ``"image"``, a ``"question"`` that is not an object of strings, ``"answers"`` that
    is not an object of answer -> score in [0, inf), and a qid seen before in the file.
    """
    path = os.fspath(path)
    skips = skips if skips is not None else SkipCounter(os.path.basename(path))
    keep = set(languages) if languages is not None else None
    records: List[VQARecord] = []
    seen: Dict[str, int] = {}
    for lineno, rec in iter_jsonl_objects(path, what="VQA data file"):
        where = _where(path, lineno)
        qid = rec.get("qid")
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid:
            raise ValueError(f"{where}: record has no \"qid\"")
        if qid in seen:
            raise ValueError(f"{where}: qid {qid!r} already used on line {seen[qid]}")
        seen[qid] = lineno
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise ValueError(f"{where}: record {qid} has no \"image\" path")
        q = rec.get("question")
        if not isinstance(q, dict) or not q:
            raise ValueError(f"{where}: record {qid} needs \"question\": {{lang: text}}, got {q!r:.80}")
        a = rec.get("answers")
        if not isinstance(a, dict) or not a:
            raise ValueError(f"{where}: record {qid} needs \"answers\": {{answer: score}}, got {a!r:.80}")
        answers = {}
        for ans, score in a.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) \
                    or not math.isfinite(score) or score < 0:
                raise ValueError(f"{where}: record {qid}: answer {ans!r} has score {score!r}; "
                                 "scores must be numbers >= 0")
            answers[ans] = float(score)
        questions = {}
        for lang, text in q.items():
            if not isinstance(text, str):
                raise ValueError(f"{where}: record {qid}: question[{lang!r}] must be a string, "
                                 f"got {type(text).__name__}")
            if keep is not None and lang not in keep:
                continue
            if not text.strip():
                skips.skip("empty_question", f"{where}: qid {qid} [{lang}]")
                continue
            questions[lang] = text.strip()
        if not questions:
            if any(keep is None or lang in keep for lang in q):
                skips.skip("no_question", f"{where}: qid {qid}")
            continue
        records.append(VQARecord(qid, rec["image"], questions, answers, path, lineno))
    if known_languages is not None:
        check_languages(records, known_languages)
    logger.info("%s: %d questions, languages %s, skipped %s", path, len(records),
                sorted({lang for r in records for lang in r.questions}), skips.as_dict())
    return records


def load_answer_vocabulary(path: str) -> List[str]:
    """The answer vocabulary as a list (class ``i`` = ``answers[i]``).

    ``path`` holds either ``{answer: index}`` with the indices exactly 0..N-1 (GQA's
    ``answers.json``) or a list of distinct answer strings. ``FileNotFoundError`` / ``ValueError``
    naming the file otherwise.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"answer vocabulary not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON answer vocabulary ({e})") from None
    if isinstance(data, dict):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            raise ValueError(f"{path}: expected {{answer: index}} with integer indices")
        if sorted(data.values()) != list(range(len(data))):
            raise ValueError(f"{path}: answer indices must be exactly 0..{len(data) - 1}, each once")
        answers = [None] * len(data)
        for ans, i in data.items():
            answers[i] = ans
    elif isinstance(data, list):
        answers = data
        if not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path}: a list vocabulary must hold answer strings only")
        if len(set(answers)) != len(answers):
            raise ValueError(f"{path}: the answer list has duplicates")
    else:
        raise ValueError(f"{path}: expected {{answer: index}} or a list of answers, got {type(data).__name__}")
    if not answers:
        raise ValueError(f"{path}: the answer vocabulary is empty")
    return answers


def soft_target(answers: Dict[str, float], answer_to_index: Dict[str, int]) -> Tuple[Dict[int, float], int]:
    """VQA soft-score target of one question as a sparse ``{class index: score}``, and the number
    of its answers outside the vocabulary.

    Scores are clipped to [0, 1] (BCE targets; VQA v2 scores are ``min(1, n/3)`` already). An empty
    dict means the question is out of vocabulary (no training signal).
    """
    target, n_oov = {}, 0
    for ans, score in answers.items():
        i = answer_to_index.get(ans)
        if i is None:
            n_oov += 1
            continue
        target[i] = min(1.0, max(0.0, float(score)))
    return target, n_oov


def dense_target(sparse: Dict[int, float], num_answers: int) -> torch.Tensor:
    """The [num_answers] float target vector of a sparse :func:`soft_target`."""
    t = torch.zeros(num_answers)
    for i, s in sparse.items():
        t[i] = s
    return t


class VQADataset(Dataset):
    """One item per (question, language): ``{"image", "text", "lang", "target", "index", "skipped"}``.

    Args:
        records: from :func:`read_vqa_jsonl`.
        image_root: directory the records' image paths are relative to.
        transform: PIL -> tensor (e.g. :func:`xvl.data.transforms.build_image_transform` of
            ``model.vision.data_config()``; no random crops or flips by default: questions ask about
            left/right and positions).
        lang_to_id: the model's language ids (``model.lang_to_id``).
        answers: the answer vocabulary (class order).
        languages: which question languages become items (default: every language of the data;
            the zero-shot protocol trains on ``("en",)``).
        skips: counts ``missing_image`` at construction when ``check_files``, and undecodable
            images met later.

    Out-of-vocabulary questions are excluded; their number is :attr:`n_out_of_vocabulary`.
    ``items`` lists ``(record index, lang)``; an undecodable image is replaced by another item
    (chosen deterministically) and reported in the sample's ``skipped``, as in the caption data.
    """

    MAX_RETRIES = 10

    def __init__(self, records: Sequence[VQARecord], image_root: str, transform: Callable,
                 lang_to_id: Dict[str, int], answers: Sequence[str],
                 languages: Optional[Sequence[str]] = None, skips: Optional[SkipCounter] = None,
                 check_files: bool = True):
        self.records = list(records)
        self.image_root = image_root
        self.transform = transform
        self.lang_to_id = lang_to_id
        self.answers = list(answers)
        self.skips = skips if skips is not None else SkipCounter("vqa data")
        answer_to_index = {a: i for i, a in enumerate(self.answers)}
        wanted = None if languages is None else set(languages)
        self.items: List[Tuple[int, str]] = []
        self.targets: List[Dict[int, float]] = []  # one sparse target per kept record
        self._target_of: List[int] = []  # per item, its index into self.targets
        self.n_out_of_vocabulary = 0  # questions (records) with no answer in the vocabulary
        self.n_oov_answers = 0  # answer entries outside the vocabulary (of in-vocabulary questions too)
        exists: Dict[str, bool] = {}
        for r, rec in enumerate(self.records):
            langs = [lang for lang in sorted(rec.questions) if wanted is None or lang in wanted]
            if not langs:
                continue
            target, n_oov = soft_target(rec.answers, answer_to_index)
            self.n_oov_answers += n_oov
            if not target:
                self.n_out_of_vocabulary += 1
                continue
            if check_files:
                p = self.image_path(rec)
                if p not in exists:
                    exists[p] = os.path.exists(p)
                if not exists[p]:
                    self.skips.skip("missing_image", f"{p} (qid {rec.qid})")
                    continue
            for lang in langs:
                if lang not in lang_to_id:
                    raise ValueError(f"{_where(rec.path, rec.line)}: question language '{lang}' is not in "
                                     f"the model's languages {sorted(lang_to_id)}")
                self.items.append((r, lang))
                self._target_of.append(len(self.targets))
            self.targets.append(target)
        if self.n_out_of_vocabulary:
            logger.warning("VQA data: %d question(s) have no answer in the %d-answer vocabulary and are left "
                           "out of training", self.n_out_of_vocabulary, len(self.answers))

    def image_path(self, rec: VQARecord) -> str:
        return os.path.join(self.image_root, rec.image) if self.image_root else rec.image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict:
        """``key``: an item index (or ``(epoch, index)`` as from the resumable sampler)."""
        index = key[1] if isinstance(key, tuple) else key
        skipped: List[str] = []
        for attempt in range(self.MAX_RETRIES):
            i = (index + attempt * 7919) % len(self.items)
            r, lang = self.items[i]
            rec = self.records[r]
            img = load_image(self.image_path(rec), self.skips)
            if img is None:
                skipped.append("bad_image")
                continue
            return {"image": self.transform(img), "text": rec.questions[lang], "lang": self.lang_to_id[lang],
                    "target": self.targets[self._target_of[i]], "index": i, "skipped": skipped}
        raise RuntimeError(f"{self.MAX_RETRIES} consecutive unreadable images near item {index}; "
                           "is the image root right?")


class VQACollator:
    """Stacks images, tokenizes questions, densifies soft targets.

    Batch keys: ``image`` [B,3,H,W], ``input_ids`` / ``attention_mask`` [B,L], ``lang`` [B],
    ``targets`` [B, num_answers] (float soft scores), ``index`` [B] (dataset item indices),
    ``n_skipped`` (undecodable images replaced in this batch).
    """

    def __init__(self, tokenizer, max_length: int, num_answers: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_answers = num_answers

    def __call__(self, samples: List[dict]) -> dict:
        enc = self.tokenizer([s["text"] for s in samples], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "lang": torch.tensor([s["lang"] for s in samples], dtype=torch.long),
            "targets": torch.stack([dense_target(s["target"], self.num_answers) for s in samples]),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "n_skipped": torch.tensor(sum(len(s["skipped"]) for s in samples)),
        }

