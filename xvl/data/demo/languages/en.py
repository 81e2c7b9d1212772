"""English: articles, singular/plural nouns, number words or digits."""
from __future__ import annotations

from typing import List, Tuple

from ..scenes import COLOURS
from ._common import _Language, _cap, _pick


_EN = {
    # singular, plural
    "shape": {
        "circle": ("circle", "circles"),
        "square": ("square", "squares"),
        "triangle": ("triangle", "triangles"),
        "star": ("star", "stars"),
        "cross": ("cross", "crosses"),
        "diamond": ("diamond", "diamonds"),
    },
    "colour": {c: c for c in COLOURS},
    "size": {"small": ("small", "little"), "large": ("large", "big")},
    "size_pred": {"small": ("small", "small"), "large": ("large", "big")},
    "number": (
        {1: "one", 2: "two", 3: "three"},
        {1: "a", 2: "two", 3: "three"},
        {1: "one", 2: "2", 3: "3"},
    ),
    "region": {
        "left": ("on the left", "on the left side", "in the left part of the image"),
        "right": ("on the right", "on the right side", "in the right part of the image"),
        "top": ("at the top", "near the top edge", "in the upper part of the image"),
        "bottom": ("at the bottom", "near the bottom edge", "in the lower part of the image"),
        "center": ("in the center", "in the middle", "in the middle of the image"),
    },
    "quantifier": {1: "", 2: "both", 3: "all three"},
}

_EN_TEMPLATES = (
    "{np} {region}",
    "{Region} there {be} {np}.",
    "A picture of {np} {region}.",
    "{Np_bare} {be} {region}. {Pron_be} {size_pred}.",
    # (one object, several objects)
    ("A single {size} {colour} {noun} sits {region}.",
     "{Num} {colour} {noun}, {quant} {size_pred}, sit {region}."),
)


def _en_phrase(words: List[str]) -> str:
    """Join words, turning the article "a" into "an" before a vowel ("an orange star")."""
    if words[0] == "a" and words[1][:1] in "aeiou":
        words = ["an"] + words[1:]
    return " ".join(words)


def _en_caption_slots(a: dict, c: dict) -> dict:
    n = a["count"]
    sg = n == 1
    num = _pick(_EN["number"], c["number"])[n]
    size = _pick(_EN["size"][a["size"]], c["size"])
    colour = _EN["colour"][a["colour"]]
    noun = _EN["shape"][a["shape"]][0 if sg else 1]
    return {
        "np": _en_phrase([num, size, colour, noun]),
        "np_bare": _en_phrase([num, colour, noun]),
        "num": num,
        "size": size,
        "size_pred": _pick(_EN["size_pred"][a["size"]], c["size"]),
        "colour": colour,
        "noun": noun,
        "region": _pick(_EN["region"][a["region"]], c["region"]),
        "be": "is" if sg else "are",
        "pron_be": "it is" if sg else "they are",
        "quant": _EN["quantifier"][n],
    }


def _en_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    noun = _EN["shape"][a["shape"]][0 if sg else 1]
    colour = _EN["colour"][a["colour"]]
    be = "is" if sg else "are"
    if kind == "colour":
        return f"What colour {be} the {noun}?"
    if kind == "shape":
        return f"What shape {be} the {colour} {'object' if sg else 'objects'}?"
    if kind == "count":
        return f"How many {colour} {_EN['shape'][a['shape']][1]} are there?"
    if kind == "region":
        return f"Where {be} the {colour} {noun}?"
    if kind == "size":
        return f"{_cap(be)} the {colour} {noun} large or small?"
    pc, ps = probe
    return f"Is there {_en_phrase(['a', _EN['colour'][pc], _EN['shape'][ps][0]])} in the image?"


LANGUAGE = _Language(_EN_TEMPLATES, {"number": 3, "size": 2, "region": 3}, _en_caption_slots,
                     _en_question, lambda s: _EN["shape"][s][0])
