"""Tests for xvl.data.demo: the deterministic synthetic multilingual caption/VQA demo data."""
from __future__ import annotations

import filecmp
import itertools
import json
import os
import random

import pytest
from PIL import Image

from xvl.data.demo import (
    COLOURS,
    COUNTS,
    DEMO_LANGUAGES,
    NUM_SHARED_TEMPLATES,
    QUESTION_KINDS,
    REGIONS,
    SHAPES,
    SIZES,
    DemoPaths,
    generate_demo,
    num_templates,
    render_caption,
    render_question,
)

N_TRAIN, N_VAL, SIZE = 40, 30, 64
ATTRS = ("shape", "colour", "size", "region", "count")
VALUES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "region": REGIONS, "count": COUNTS}
EN_SHAPE_WORDS = {"circle": ("circle", "circles"), "square": ("square", "squares"),
                  "triangle": ("triangle", "triangles"), "star": ("star", "stars"),
                  "cross": ("cross", "crosses"), "diamond": ("diamond", "diamonds")}


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _all_files(root):
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted(out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoPaths:
    return generate_demo(str(tmp_path_factory.mktemp("demo")), n_train=N_TRAIN, n_val=N_VAL,
                         image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def records(demo):
    return {"train": _read_jsonl(demo.train), "val": _read_jsonl(demo.val)}


def _random_attrs(rng):
    return {k: rng.choice(VALUES[k]) for k in ATTRS}


# ------------------------------------------------------------------ determinism


def test_same_seed_is_byte_identical(demo, tmp_path):
    again = generate_demo(str(tmp_path / "again"), n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE,
                          seed=0)
    files = _all_files(demo.root)
    assert files == _all_files(again.root)
    assert len([f for f in files if f.endswith(".png")]) == N_TRAIN + N_VAL
    _, mismatch, errors = filecmp.cmpfiles(demo.root, again.root, files, shallow=False)
    assert not mismatch and not errors


def test_different_seed_differs(demo, tmp_path):
    other = generate_demo(str(tmp_path / "other"), n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE,
                          seed=1)
    for name in ("train.jsonl", "val.jsonl", "questions_train.jsonl", "questions_val.jsonl"):
        assert not filecmp.cmp(os.path.join(demo.root, name), os.path.join(other.root, name),
                               shallow=False)
    images = [f"images/val_{i:05d}.png" for i in range(N_VAL)]
    _, mismatch, _ = filecmp.cmpfiles(demo.root, other.root, images, shallow=False)
    assert len(mismatch) > N_VAL // 2


def test_language_subset_keeps_other_languages_unchanged(records, tmp_path):
    sub = generate_demo(str(tmp_path / "sub"), n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE,
                        seed=0, languages=("ja", "en"))
    for full, part in zip(records["val"], _read_jsonl(sub.val)):
        assert part["attributes"] == full["attributes"]
        assert [o["box"] for o in part["objects"]] == [o["box"] for o in full["objects"]]
        assert {c["lang"] for c in part["captions"]} == {"en", "ja"}
        assert set(part["objects"][0]["labels"]) == {"en", "ja"}
        keep = [c for c in full["captions"] if c["lang"] in ("en", "ja")]
        assert sorted(map(json.dumps, part["captions"])) == sorted(map(json.dumps, keep))


# ------------------------------------------------------------------ schema and geometry


def test_schema_captions_and_objects(demo, records):
    for split, recs in records.items():
        n = N_TRAIN if split == "train" else N_VAL
        assert len(recs) == n
        for i, rec in enumerate(recs):
            assert set(rec) == {"image_id", "image", "captions", "objects", "attributes"}
            assert rec["image_id"] == f"{split}_{i:05d}"
            assert rec["image"] == f"images/{rec['image_id']}.png"
            a = rec["attributes"]
            assert set(a) == set(ATTRS)
            assert all(a[k] in VALUES[k] for k in ATTRS)
            for lang in DEMO_LANGUAGES:
                caps = [c for c in rec["captions"] if c["lang"] == lang]
                assert len(caps) == 2
                for c in caps:
                    assert set(c) == {"lang", "text", "kind", "source"}
                    assert c["text"].strip() and c["source"] == "xvl-demo"
                shared_kind = "original" if lang == "en" else "human_translation"
                assert sorted(c["kind"] for c in caps) == sorted([shared_kind, "native"])
                assert caps[0]["text"] != caps[1]["text"]
            assert len(rec["captions"]) == 2 * len(DEMO_LANGUAGES)
            assert len(rec["objects"]) == a["count"]
            for obj in rec["objects"]:
                assert obj["label"] == a["shape"]
                assert set(obj["labels"]) == set(DEMO_LANGUAGES)
                assert obj["labels"]["en"] == a["shape"]


def test_boxes_inside_image_disjoint_and_in_region(demo, records):
    third = SIZE / 3
    for recs in records.values():
        for rec in recs:
            a = rec["attributes"]
            boxes = [o["box"] for o in rec["objects"]]
            sides = set()
            for x0, y0, x1, y1 in boxes:
                assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
                assert x1 - x0 == y1 - y0
                sides.add(x1 - x0)
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                assert {
                    "left": cx < third, "right": cx > SIZE - third, "top": cy < third,
                    "bottom": cy > SIZE - third,
                    "center": SIZE / 4 <= cx <= 3 * SIZE / 4 and SIZE / 4 <= cy <= 3 * SIZE / 4,
                }[a["region"]], (rec["image_id"], a, (cx, cy))
            assert len(sides) == 1  # one group: same size
            for b, c in itertools.combinations(boxes, 2):  # exclusive ends: disjoint boxes
                assert b[2] <= c[0] or c[2] <= b[0] or b[3] <= c[1] or c[3] <= b[1]
    small = {x1 - x0 for r in records["train"] for x0, _, x1, _ in (o["box"] for o in r["objects"])
             if r["attributes"]["size"] == "small"}
    large = {x1 - x0 for r in records["train"] for x0, _, x1, _ in (o["box"] for o in r["objects"])
             if r["attributes"]["size"] == "large"}
    assert small and large and max(small) * 1.5 < min(large)


def test_images_open_with_objects_drawn(demo, records):
    for recs in records.values():
        for rec in recs:
            with Image.open(os.path.join(demo.root, rec["image"])) as im:
                assert im.size == (SIZE, SIZE)
                im = im.convert("RGB")
                colours = set()
                for x0, y0, x1, y1 in (o["box"] for o in rec["objects"]):
                    colours.add(im.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)))  # centre is filled
                bg = im.getpixel((0, 0)) if rec["attributes"]["region"] != "center" else None
                assert len(colours) == 1 and bg not in colours
                assert min(next(iter(colours))) < 100 or rec["attributes"]["colour"] == "yellow"


def test_val_combos_distinct_and_ids_disjoint(records):
    combos = [tuple(r["attributes"][k] for k in ATTRS) for r in records["val"]]
    assert len(set(combos)) == len(combos)
    ids = {r["image_id"] for r in records["train"]} & {r["image_id"] for r in records["val"]}
    images = {r["image"] for r in records["train"]} & {r["image"] for r in records["val"]}
    assert not ids and not images


def test_labels_and_answers_files(demo):
    with open(demo.labels, encoding="utf-8") as f:
        labels = json.load(f)
    assert set(labels) == set(SHAPES)
    assert all(set(v) == set(DEMO_LANGUAGES) and all(v.values()) for v in labels.values())
    assert labels["circle"]["de"] == "Kreis" and labels["star"]["ru"] == "звезда"
    with open(demo.answers, encoding="utf-8") as f:
        answers = json.load(f)
    assert list(answers) == sorted(answers) and sorted(answers.values()) == list(range(len(answers)))
    expected = set(COLOURS) | set(SHAPES) | set(SIZES) | set(REGIONS) | {"1", "2", "3", "yes", "no"}
    assert set(answers) == expected


# ------------------------------------------------------------------ captions encode the attributes


def test_english_captions_name_colour_and_shape(records):
    for recs in records.values():
        for rec in recs:
            a = rec["attributes"]
            for c in rec["captions"]:
                if c["lang"] == "en":
                    words = c["text"].lower().replace(",", " ").replace(".", " ").split()
                    assert a["colour"] in words, c["text"]
                    assert any(w in words for w in EN_SHAPE_WORDS[a["shape"]]), c["text"]


@pytest.mark.parametrize("lang", DEMO_LANGUAGES)
def test_every_attribute_changes_the_caption(lang):
    rng = random.Random(lang)
    for _ in range(60):
        a = _random_attrs(rng)
        choice = {s: rng.randrange(3) for s in ("number", "size", "region", "order", "colour", "shape")}
        for template in range(num_templates(lang)):
            for ch in (None, choice):
                base = render_caption(lang, a, template, ch)
                for key in ATTRS:
                    for value in VALUES[key]:
                        if value != a[key]:
                            other = render_caption(lang, dict(a, **{key: value}), template, ch)
                            assert other != base, (lang, template, key, base)


@pytest.mark.parametrize("lang", DEMO_LANGUAGES)
def test_captions_are_unambiguous(lang):
    """No caption text (any template, any word variant) is shared by two attribute combinations."""
    rng = random.Random(0)
    seen = {}
    for combo in itertools.product(*(VALUES[k] for k in ATTRS)):
        a = dict(zip(ATTRS, combo))
        for template in range(num_templates(lang)):
            choice = {s: rng.randrange(3) for s in ("number", "size", "region", "order", "colour",
                                                    "shape")}
            for ch in (None, choice):
                text = render_caption(lang, a, template, ch)
                assert seen.setdefault(text, combo) == combo, text


def test_grammar_spot_checks():
    def cap(lang, template, **kw):
        a = {"shape": "circle", "colour": "red", "size": "large", "region": "left", "count": 2}
        a.update(kw)
        return render_caption(lang, a, template)

    assert cap("en", 0) == "two large red circles on the left"
    assert cap("en", 3, count=1, colour="orange") == "One orange circle is on the left. It is large."
    assert cap("de", 1) == "Links gibt es zwei große rote Kreise."
    assert cap("de", 2, count=1) == "Ein Bild mit einem großen roten Kreis links."
    assert cap("de", 3, count=1, shape="square") == (
        "Ein rotes Quadrat befindet sich links. Es ist groß.")
    assert cap("fr", 0, shape="star") == "deux grandes étoiles rouges à gauche"
    assert cap("fr", 3, count=1, shape="star", size="small") == (
        "Une étoile rouge se trouve à gauche. Elle est petite.")
    assert cap("es", 1, shape="star", colour="black") == "A la izquierda hay dos estrellas negras grandes."
    assert cap("ru", 0) == "два больших красных круга слева"
    assert cap("ru", 0, shape="star") == "две большие красные звезды слева"
    assert cap("ru", 2, count=3) == "Изображение с тремя большими красными кругами слева."
    assert cap("ru", 0, count=1, shape="star") == "одна большая красная звезда слева"
    assert cap("ja", 1) == "左側に大きな赤い丸が二つあります。"
    assert cap("zh", 1) == "左边有两个红色的大圆形。"
    # sentences never start with a digit in alphabetic languages
    for lang in ("en", "de", "fr", "es", "ru"):
        for template in range(num_templates(lang)):
            text = render_caption(lang, {"shape": "star", "colour": "blue", "size": "small",
                                         "region": "top", "count": 3}, template, {"number": 1})
            assert not (text[0].isdigit() and text.endswith(".")), text


def test_shared_templates_exist_in_every_language():
    assert all(num_templates(lang) > NUM_SHARED_TEMPLATES for lang in DEMO_LANGUAGES)


# ------------------------------------------------------------------ questions


def test_questions(demo, records):
    with open(demo.answers, encoding="utf-8") as f:
        answers = json.load(f)
    yes_no = []
    for split in ("train", "val"):
        qs = _read_jsonl(demo.questions_train if split == "train" else demo.questions_val)
        by_image = {r["image"]: r["attributes"] for r in records[split]}
        assert {q["image"] for q in qs} == set(by_image)
        assert len({q["qid"] for q in qs}) == len(qs)
        for q in qs:
            assert set(q) == {"qid", "image", "question", "answers", "types"}
            assert q["qid"].startswith(q["image"][len("images/"):-len(".png")] + "_q")
            assert set(q["question"]) == set(DEMO_LANGUAGES)
            assert all(t.strip() for t in q["question"].values())
            assert set(q["types"]) == {"structural", "semantic"}
            (answer, score), = q["answers"].items()
            assert answer in answers and score == 1.0
            a = by_image[q["image"]]
            if answer in ("yes", "no"):
                yes_no.append(answer)
                assert q["question"]["en"].startswith("Is there")
            elif answer in COLOURS:
                assert answer == a["colour"]
            elif answer in SHAPES:
                assert answer == a["shape"]
            elif answer in REGIONS:
                assert answer == a["region"]
            elif answer in SIZES:
                assert answer == a["size"]
            else:
                assert answer == str(a["count"])
        for image in by_image:
            assert 3 <= sum(q["image"] == image for q in qs) <= 5
    assert len(yes_no) >= 20
    assert 0.3 <= yes_no.count("yes") / len(yes_no) <= 0.7


def test_render_question_all_kinds():
    a = {"shape": "star", "colour": "red", "size": "large", "region": "left", "count": 2}
    for lang in DEMO_LANGUAGES:
        texts = {render_question(lang, k, a, ("blue", "square")) for k in QUESTION_KINDS}
        assert len(texts) == len(QUESTION_KINDS)
    assert render_question("en", "exists", a, ("orange", "cross")) == (
        "Is there an orange cross in the image?")
    assert render_question("de", "region", a) == "Wo sind die roten Sterne?"
    assert render_question("fr", "size", a) == "Les étoiles rouges sont-elles grandes ou petites ?"
    assert render_question("es", "count", a) == "¿Cuántas estrellas rojas hay?"
    assert render_question("ru", "count", a) == "Сколько на изображении красных звёзд?"
    with pytest.raises(ValueError):
        render_question("en", "exists", a)


# ------------------------------------------------------------------ errors


def test_unknown_language_raises(tmp_path):
    with pytest.raises(ValueError) as e:
        generate_demo(str(tmp_path / "x"), n_train=2, n_val=2, languages=("en", "xx"))
    assert "'xx'" in str(e.value) and all(lang in str(e.value) for lang in DEMO_LANGUAGES)
    with pytest.raises(ValueError):
        render_caption("pt", {"shape": "star", "colour": "red", "size": "large", "region": "left",
                              "count": 1})


def test_too_many_val_scenes_raises(tmp_path):
    with pytest.raises(ValueError, match="1260"):
        generate_demo(str(tmp_path / "x"), n_train=0, n_val=1261)


@pytest.mark.parametrize("image_size", [32, 48, 96])
def test_other_image_sizes(tmp_path, image_size):
    paths = generate_demo(str(tmp_path / "x"), n_train=0, n_val=60, image_size=image_size, seed=3)
    for rec in _read_jsonl(paths.val):
        with Image.open(os.path.join(paths.root, rec["image"])) as im:
            assert im.size == (image_size, image_size)
        for x0, y0, x1, y1 in (o["box"] for o in rec["objects"]):
            assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
