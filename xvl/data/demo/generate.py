"""Writing the demo dataset: scenes, captions and questions of each split, as images and jsonl."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Iterable, List, Sequence

from .languages import _LANGUAGES, DEMO_LANGUAGES, _check_language
from .scenes import (
    COLOURS,
    COUNTS,
    REGIONS,
    SHAPES,
    SIZES,
    _all_combos,
    _as_attrs,
    _background,
    _object_size,
    _place,
    _render_image,
)
from .text import NUM_SHARED_TEMPLATES, QUESTION_KINDS, render_caption, render_question

_SOURCE = "xvl-demo"
_QUESTIONS_PER_IMAGE = 4

_QUESTION_TYPES = {
    "colour": {"structural": "query", "semantic": "attr"},
    "shape": {"structural": "query", "semantic": "cat"},
    "count": {"structural": "query", "semantic": "attr"},
    "region": {"structural": "query", "semantic": "rel"},
    "size": {"structural": "choose", "semantic": "attr"},
    "exists": {"structural": "verify", "semantic": "obj"},
}


@dataclass
class DemoPaths:
    """Where :func:`generate_demo` wrote its files (all paths include ``root``).

    ``train``/``val``: caption jsonl files; ``questions_train``/``questions_val``: VQA jsonl files for
    the images of each split; ``answers``: answer -> class index json; ``labels``: per-language shape
    lexicon json. Image paths inside the records are relative to ``root``.
    """

    root: str
    train: str
    val: str
    questions_train: str
    questions_val: str
    answers: str
    labels: str


def _native_caption(rng: random.Random, lang: str, attrs: dict, shared_template: int) -> str:
    """A caption with another template than the translation set's and random word variants."""
    spec = _LANGUAGES[lang]
    template = rng.choice([t for t in range(len(spec.templates)) if t != shared_template])
    choice = {slot: rng.randrange(k) for slot, k in spec.slots.items()}
    return render_caption(lang, attrs, template, choice)


def _questions(rng: random.Random, image_id: str, image: str, attrs: dict,
               langs: Sequence[str]) -> List[dict]:
    out = []
    kinds = rng.sample(QUESTION_KINDS, _QUESTIONS_PER_IMAGE)
    for j, kind in enumerate(kinds):
        probe = None
        if kind == "exists":
            if rng.random() < 0.5:
                probe, answer = (attrs["colour"], attrs["shape"]), "yes"
            else:
                which = rng.choice(("colour", "shape", "both"))
                pc = attrs["colour"] if which == "shape" else rng.choice(
                    [c for c in COLOURS if c != attrs["colour"]])
                ps = attrs["shape"] if which == "colour" else rng.choice(
                    [s for s in SHAPES if s != attrs["shape"]])
                probe, answer = (pc, ps), "no"
        else:
            answer = str(attrs[kind])
        out.append({
            "qid": f"{image_id}_q{j}",
            "image": image,
            "question": {lang: render_question(lang, kind, attrs, probe) for lang in langs},
            "answers": {answer: 1.0},
            "types": dict(_QUESTION_TYPES[kind]),
        })
    return out


def _answer_vocabulary() -> List[str]:
    return sorted(set(COLOURS) | set(SHAPES) | set(SIZES) | set(REGIONS)
                  | {str(n) for n in COUNTS} | {"yes", "no"})


def _write_jsonl(path: str, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _progress(total: int, desc: str):
    if total < 2000:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=False)


def generate_demo(out_dir: str, n_train: int = 3000, n_val: int = 200, image_size: int = 64,
                  seed: int = 0, languages: Sequence[str] = DEMO_LANGUAGES) -> DemoPaths:
    """Write the synthetic multilingual demo dataset to ``out_dir`` and return its paths.

    Files: ``images/{split}_{i:05d}.png``, ``train.jsonl``/``val.jsonl`` (captions, schema of the
    flickr8k-ml data plus ``objects`` and ``attributes``), ``questions_train.jsonl``/
    ``questions_val.jsonl`` (xGQA schema, answers in English), ``answers.json`` (answer -> class
    index over every possible answer) and ``labels.json`` (shape -> language -> base form).

    Object boxes are ``[x0, y0, x1, y1]`` pixel coordinates with ``x1``/``y1`` exclusive. Each image
    has two captions per language (a translation-set caption, then a ``native`` one) and four
    questions. Validation scenes have pairwise distinct attribute combinations, hence
    ``n_val <= 1260``. Output is byte-identical for identical arguments.

    Raises ValueError for an unknown language, ``n_val > 1260``, negative sizes or
    ``image_size < 32``.
    """
    langs = []
    for lang in languages:
        _check_language(lang)
        if lang not in langs:
            langs.append(lang)
    if not langs:
        raise ValueError(f"no languages given; supported languages: {', '.join(DEMO_LANGUAGES)}")
    combos = _all_combos()
    if n_val > len(combos):
        raise ValueError(
            f"n_val={n_val} exceeds the {len(combos)} distinct attribute combinations; the "
            "validation split needs pairwise distinct scenes")
    if n_train < 0 or n_val < 0:
        raise ValueError("n_train and n_val must be >= 0")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")

    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    paths = DemoPaths(
        root=out_dir,
        train=os.path.join(out_dir, "train.jsonl"),
        val=os.path.join(out_dir, "val.jsonl"),
        questions_train=os.path.join(out_dir, "questions_train.jsonl"),
        questions_val=os.path.join(out_dir, "questions_val.jsonl"),
        answers=os.path.join(out_dir, "answers.json"),
        labels=os.path.join(out_dir, "labels.json"),
    )
    labels = {s: {lang: _LANGUAGES[lang].label(s) for lang in langs} for s in SHAPES}
    bar = _progress(n_train + n_val, "demo data")

    for split_index, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        base = seed * 1000 + 10 * split_index
        scene_rng = random.Random(base)
        template_rng = random.Random(base + 1)
        question_rng = random.Random(base + 2)
        # one native-caption stream per language: dropping a language leaves the others unchanged
        native_rngs = {lang: random.Random(base + 100 + 10 * DEMO_LANGUAGES.index(lang))
                       for lang in langs}
        if split == "val":
            chosen = [combos[i] for i in scene_rng.sample(range(len(combos)), n)]
        else:
            chosen = [scene_rng.choice(combos) for _ in range(n)]

        records, questions = [], []
        for i, combo in enumerate(chosen):
            attrs = _as_attrs(combo)
            image_id = f"{split}_{i:05d}"
            rel = f"images/{image_id}.png"
            side = _object_size(attrs["size"], image_size)
            boxes = _place(scene_rng, image_size, side, attrs["count"], attrs["region"])
            bg = _background(scene_rng)
            _render_image(attrs, boxes, bg, image_size).save(os.path.join(out_dir, rel), format="PNG")

            template = template_rng.randrange(NUM_SHARED_TEMPLATES)
            captions = []
            for lang in langs:
                shared = render_caption(lang, attrs, template)
                captions.append({"lang": lang, "text": shared,
                                 "kind": "original" if lang == "en" else "human_translation",
                                 "source": _SOURCE})
                captions.append({"lang": lang,
                                 "text": _native_caption(native_rngs[lang], lang, attrs, template),
                                 "kind": "native", "source": _SOURCE})
            records.append({
                "image_id": image_id,
                "image": rel,
                "captions": captions,
                "objects": [{"box": box, "label": attrs["shape"], "labels": labels[attrs["shape"]]}
                            for box in boxes],
                "attributes": attrs,
            })
            questions.extend(_questions(question_rng, image_id, rel, attrs, langs))
            if bar is not None:
                bar.update(1)

        _write_jsonl(paths.train if split == "train" else paths.val, records)
        _write_jsonl(paths.questions_train if split == "train" else paths.questions_val, questions)

    if bar is not None:
        bar.close()
    with open(paths.answers, "w", encoding="utf-8") as f:
        json.dump({a: i for i, a in enumerate(_answer_vocabulary())}, f, indent=1)
        f.write("\n")
    with open(paths.labels, "w", encoding="utf-8") as f:
        json.dump(labels, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return paths
