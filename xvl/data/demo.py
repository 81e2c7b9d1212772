"""Deterministic synthetic multilingual image-caption and VQA data: the embedded data of the demo.

The demo trains a tiny two-tower model on a couple of CPU cores in minutes, so the data is built to
be learnable: every caption describes the whole visual content, and the visual content is simple.

Scene grammar
-------------
Every image is a plain light, neutral background (never one of the object colours and never
mentioned in text) with exactly ONE group of ``count`` objects that share all their attributes::

    scene  := background + group
    group  := count x object(shape, colour, size), all placed in one region
    shape  := circle | square | triangle | star | cross | diamond
    colour := red | green | blue | yellow | purple | orange | black
    size   := small (~15% of the image side) | large (~27% of the image side), odd pixel sides
    region := left | right | top | bottom | center
    count  := 1 | 2 | 3

That gives 6 * 7 * 2 * 5 * 3 = 1260 attribute combinations. Regions are defined on object centres:
``left`` puts every centre in the left third of the image (any vertical position) and keeps the
group's centroid clearly nearer to the left edge than to the top and bottom edges; ``right``,
``top`` and ``bottom`` are the mirror images; ``center`` keeps every centre in the middle half of
the image on both axes and the centroid within the middle fifth. The centroid rules make the five
regions mutually exclusive, so a picture never fits two region words. Objects never overlap (at
least ``gap`` pixels between boxes); placement is random with restarts.

Text
----
Each image gets, per language, two captions that mention all five attributes:

* a *translation set* caption: one template index drawn per image and rendered in every language
  from the same meaning (``kind`` ``original`` for English, ``human_translation`` otherwise);
* a ``native`` caption: per language, an independently drawn template other than the one of the
  translation set, with random word variants (synonyms such as "big"/"large", digits or number
  words, other region phrases, other word order); it never equals the translation-set caption.

Each language has one lexicon table (noun forms by number and case, gender, adjective forms) and a
small render function, so agreement (German adjective endings, French/Spanish gender and number,
Russian numeral government, Japanese counters, Chinese measure words) comes from data rather than
string hacks. Questions (colour, shape, count, region, size, yes/no existence) are rendered the same
way in every language; their answers are always English words, as in xGQA.

Splits use independent ``random.Random`` streams derived from ``seed`` and the split index, so the
output is byte-identical across runs for the same arguments. The validation split has pairwise
distinct attribute combinations so that text-to-image retrieval on it is well posed.
"""
from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

__all__ = [
    "DEMO_LANGUAGES",
    "SHAPES",
    "COLOURS",
    "SIZES",
    "REGIONS",
    "COUNTS",
    "QUESTION_KINDS",
    "DemoPaths",
    "generate_demo",
    "render_caption",
    "render_question",
    "num_templates",
    "NUM_SHARED_TEMPLATES",
]

#: Languages the demo data is written in (ISO 639-1 codes).
DEMO_LANGUAGES = ("en", "de", "fr", "es", "ru", "ja", "zh")
#: Object shapes (English answer words).
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
#: Object colours (English answer words).
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
#: Object sizes (English answer words).
SIZES = ("small", "large")
#: Image regions (English answer words).
REGIONS = ("left", "right", "top", "bottom", "center")
#: Number of objects in the group.
COUNTS = (1, 2, 3)
#: Question kinds, in a fixed order.
QUESTION_KINDS = ("colour", "shape", "count", "region", "size", "exists")
#: Caption templates 0..NUM_SHARED_TEMPLATES-1 exist in every language with the same meaning
#: (the translation set); later templates are language-specific phrasings used for native captions.
NUM_SHARED_TEMPLATES = 4

_SOURCE = "xvl-demo"
_SPLITS = ("train", "val")
_QUESTIONS_PER_IMAGE = 4

_RGB = {
    "red": (215, 30, 35),
    "green": (30, 160, 50),
    "blue": (30, 70, 215),
    "yellow": (240, 200, 0),
    "purple": (130, 40, 175),
    "orange": (245, 125, 0),
    "black": (25, 25, 25),
}
_SIZE_FRACTION = {"small": 0.15, "large": 0.27}

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


# --------------------------------------------------------------------------------------------------
# helpers

def _pick(options: Sequence, i: int):
    """Option ``i`` of ``options``, wrapping around (lists of synonyms have different lengths)."""
    return options[i % len(options)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _with_capitals(slots: Dict[str, str]) -> Dict[str, str]:
    """Add a capitalised twin of every slot: ``{np}`` -> ``{Np}`` for sentence starts."""
    out = dict(slots)
    for k, v in slots.items():
        out[k[:1].upper() + k[1:]] = _cap(v)
    return out


# --------------------------------------------------------------------------------------------------
# English

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


# --------------------------------------------------------------------------------------------------
# German

_DE = {
    # nominative/accusative/dative singular, nominative/accusative plural, dative plural, gender
    "shape": {
        "circle": ("Kreis", "Kreise", "Kreisen", "m"),
        "square": ("Quadrat", "Quadrate", "Quadraten", "n"),
        "triangle": ("Dreieck", "Dreiecke", "Dreiecken", "n"),
        "star": ("Stern", "Sterne", "Sternen", "m"),
        "cross": ("Kreuz", "Kreuze", "Kreuzen", "n"),
        "diamond": ("Raute", "Rauten", "Rauten", "f"),
    },
    # adjective stems; endings come from the declension tables below
    "colour": {
        "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
        "purple": "violett", "orange": "orangefarben", "black": "schwarz",
    },
    "size": {"small": ("klein",), "large": ("groß",)},
    "number": ({2: "zwei", 3: "drei"}, {2: "2", 3: "3"}),
    "region": {
        "left": ("links", "auf der linken Seite", "im linken Teil des Bildes"),
        "right": ("rechts", "auf der rechten Seite", "im rechten Teil des Bildes"),
        "top": ("oben", "am oberen Rand", "im oberen Teil des Bildes"),
        "bottom": ("unten", "am unteren Rand", "im unteren Teil des Bildes"),
        "center": ("in der Mitte", "in der Bildmitte", "im Zentrum"),
    },
    # indefinite article and the mixed adjective endings after it (singular), by case and gender
    "indef": {
        "nom": {"m": "ein", "n": "ein", "f": "eine"},
        "acc": {"m": "einen", "n": "ein", "f": "eine"},
        "dat": {"m": "einem", "n": "einem", "f": "einer"},
    },
    "mixed": {
        "nom": {"m": "er", "n": "es", "f": "e"},
        "acc": {"m": "en", "n": "es", "f": "e"},
        "dat": {"m": "en", "n": "en", "f": "en"},
    },
    # strong endings in the plural (after a numeral, no article)
    "strong_pl": {"nom": "e", "acc": "e", "dat": "en"},
    # weak endings after the definite article, nominative
    "weak": {"sg": "e", "pl": "en"},
    "definite": {"m": "der", "n": "das", "f": "die", "pl": "die"},
    "pronoun": {"m": "er", "n": "es", "f": "sie", "pl": "sie"},
}

_DE_TEMPLATES = (
    "{np_nom} {region}",
    "{Region} gibt es {np_acc}.",
    "Ein Bild mit {np_dat} {region}.",
    "{Np_bare} {verb} sich {region}. {Pron} {be} {size_pred}.",
    "Zu sehen {be} {np_nom} {region}.",
)


def _de_np(a: dict, c: dict, case: str, with_size: bool = True) -> str:
    sg_form, pl_form, dat_pl, gender = _DE["shape"][a["shape"]]
    stems = [_pick(_DE["size"][a["size"]], c.get("size", 0))] if with_size else []
    stems.append(_DE["colour"][a["colour"]])
    if a["count"] == 1:
        det, ending, noun = _DE["indef"][case][gender], _DE["mixed"][case][gender], sg_form
    else:
        det = _pick(_DE["number"], c.get("number", 0))[a["count"]]
        ending = _DE["strong_pl"][case]
        noun = dat_pl if case == "dat" else pl_form
    return " ".join([det] + [s + ending for s in stems] + [noun])


def _de_definite(a: dict, with_colour: bool = True, noun: Optional[Tuple[str, str, str]] = None) -> str:
    """'der rote Kreis' / 'die roten Kreise' (nominative, weak declension).

    ``noun`` overrides the scene's shape noun with (singular, plural, gender).
    """
    if noun is None:
        sg_form, pl_form, _, gender = _DE["shape"][a["shape"]]
    else:
        sg_form, pl_form, gender = noun
    sg = a["count"] == 1
    words = [_DE["definite"][gender if sg else "pl"]]
    if with_colour:
        words.append(_DE["colour"][a["colour"]] + _DE["weak"]["sg" if sg else "pl"])
    words.append(sg_form if sg else pl_form)
    return " ".join(words)


def _de_caption_slots(a: dict, c: dict) -> dict:
    sg = a["count"] == 1
    gender = _DE["shape"][a["shape"]][3]
    return {
        "np_nom": _de_np(a, c, "nom"),
        "np_acc": _de_np(a, c, "acc"),
        "np_dat": _de_np(a, c, "dat"),
        "np_bare": _de_np(a, c, "nom", with_size=False),
        "region": _pick(_DE["region"][a["region"]], c["region"]),
        "be": "ist" if sg else "sind",
        "verb": "befindet" if sg else "befinden",
        "pron": _DE["pronoun"][gender if sg else "pl"],
        "size_pred": _pick(_DE["size"][a["size"]], c["size"]),
    }


def _de_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    if kind == "colour":
        return f"Welche Farbe {'hat' if sg else 'haben'} {_de_definite(a, with_colour=False)}?"
    if kind == "shape":
        obj = _de_definite(a, noun=("Objekt", "Objekte", "n"))
        return f"Welche Form {'hat' if sg else 'haben'} {obj}?"
    if kind == "count":
        adj = _DE["colour"][a["colour"]] + _DE["strong_pl"]["nom"]
        return f"Wie viele {adj} {_DE['shape'][a['shape']][1]} gibt es?"
    if kind == "region":
        return f"Wo {'ist' if sg else 'sind'} {_de_definite(a)}?"
    if kind == "size":
        return f"{'Ist' if sg else 'Sind'} {_de_definite(a)} groß oder klein?"
    pc, ps = probe
    np = _de_np({"shape": ps, "colour": pc, "size": "small", "count": 1}, {}, "acc", with_size=False)
    return f"Gibt es im Bild {np}?"


# --------------------------------------------------------------------------------------------------
# French

_FR = {
    # singular, plural, gender, singular with definite article (elision)
    "shape": {
        "circle": ("cercle", "cercles", "m", "le cercle"),
        "square": ("carré", "carrés", "m", "le carré"),
        "triangle": ("triangle", "triangles", "m", "le triangle"),
        "star": ("étoile", "étoiles", "f", "l'étoile"),
        "cross": ("croix", "croix", "f", "la croix"),
        "diamond": ("losange", "losanges", "m", "le losange"),
    },
    # adjective forms: masc. sg., fem. sg., masc. pl., fem. pl. (colours follow the noun)
    "colour": {
        "red": ("rouge", "rouge", "rouges", "rouges"),
        "green": ("vert", "verte", "verts", "vertes"),
        "blue": ("bleu", "bleue", "bleus", "bleues"),
        "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
        "purple": ("violet", "violette", "violets", "violettes"),
        "orange": ("orange", "orange", "orange", "orange"),  # invariable colour adjective
        "black": ("noir", "noire", "noirs", "noires"),
    },
    # size adjectives precede the noun ("deux grands cercles rouges")
    "size": {
        "small": (("petit", "petite", "petits", "petites"),),
        "large": (("grand", "grande", "grands", "grandes"), ("gros", "grosse", "gros", "grosses")),
    },
    # numeral by count: (masculine, feminine)
    "number": (
        {1: ("un", "une"), 2: ("deux", "deux"), 3: ("trois", "trois")},
        {1: ("un", "une"), 2: ("2", "2"), 3: ("3", "3")},
    ),
    "region": {
        "left": ("à gauche", "sur le côté gauche", "dans la partie gauche de l'image"),
        "right": ("à droite", "sur le côté droit", "dans la partie droite de l'image"),
        "top": ("en haut", "en haut de l'image", "dans la partie supérieure de l'image"),
        "bottom": ("en bas", "en bas de l'image", "dans la partie inférieure de l'image"),
        "center": ("au centre", "au milieu", "au centre de l'image"),
    },
    "pronoun": ("il", "elle", "ils", "elles"),
}

_FR_TEMPLATES = (
    "{np} {region}",
    "{Region}, il y a {np}.",
    "Une image avec {np} {region}.",
    "{Np_bare} {verb} {region}. {Pron} {be} {size_pred}.",
    "On voit {np} {region}.",
)


def _fr_form(gender: str, sg: bool) -> int:
    """Index into the (m.sg, f.sg, m.pl, f.pl) adjective tuples."""
    return (0 if gender == "m" else 1) + (0 if sg else 2)


def _fr_caption_slots(a: dict, c: dict) -> dict:
    sg = a["count"] == 1
    sg_form, pl_form, gender, _ = _FR["shape"][a["shape"]]
    f = _fr_form(gender, sg)
    num = _pick(_FR["number"], c["number"])[a["count"]][0 if gender == "m" else 1]
    size = _pick(_FR["size"][a["size"]], c["size"])[f]
    noun = sg_form if sg else pl_form
    colour = _FR["colour"][a["colour"]][f]
    return {
        "np": f"{num} {size} {noun} {colour}",
        "np_bare": f"{num} {noun} {colour}",
        "region": _pick(_FR["region"][a["region"]], c["region"]),
        "verb": "se trouve" if sg else "se trouvent",
        "pron": _FR["pronoun"][f],
        "be": "est" if sg else "sont",
        "size_pred": size,
    }


def _fr_definite(a: dict, with_colour: bool = True) -> str:
    sg = a["count"] == 1
    sg_form, pl_form, gender, def_sg = _FR["shape"][a["shape"]]
    words = [def_sg if sg else f"les {pl_form}"]
    if with_colour:
        words.append(_FR["colour"][a["colour"]][_fr_form(gender, sg)])
    return " ".join(words)


def _fr_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    gender = _FR["shape"][a["shape"]][2]
    f = _fr_form(gender, sg)
    if kind == "colour":
        return f"De quelle couleur {'est' if sg else 'sont'} {_fr_definite(a, with_colour=False)} ?"
    if kind == "shape":
        colour = _FR["colour"][a["colour"]][_fr_form("m", sg)]
        obj = "de l'objet" if sg else "des objets"
        return f"Quelle est la forme {obj} {colour} ?"
    if kind == "count":
        colour = _FR["colour"][a["colour"]][_fr_form(gender, False)]
        return f"Combien de {_FR['shape'][a['shape']][1]} {colour} y a-t-il ?"
    if kind == "region":
        return f"Où {'se trouve' if sg else 'se trouvent'} {_fr_definite(a)} ?"
    if kind == "size":
        big, small = _FR["size"]["large"][0][f], _FR["size"]["small"][0][f]
        verb = "est" if sg else "sont"
        return f"{_cap(_fr_definite(a))} {verb}-{_FR['pronoun'][f]} {big} ou {small} ?"
    pc, ps = probe
    sg_form, _, g, _ = _FR["shape"][ps]
    art = "un" if g == "m" else "une"
    return f"Y a-t-il {art} {sg_form} {_FR['colour'][pc][_fr_form(g, True)]} dans l'image ?"


# --------------------------------------------------------------------------------------------------
# Spanish

_ES = {
    # singular, plural, gender
    "shape": {
        "circle": ("círculo", "círculos", "m"),
        "square": ("cuadrado", "cuadrados", "m"),
        "triangle": ("triángulo", "triángulos", "m"),
        "star": ("estrella", "estrellas", "f"),
        "cross": ("cruz", "cruces", "f"),
        "diamond": ("rombo", "rombos", "m"),
    },
    # masc. sg., fem. sg., masc. pl., fem. pl.
    "colour": {
        "red": ("rojo", "roja", "rojos", "rojas"),
        "green": ("verde", "verde", "verdes", "verdes"),
        "blue": ("azul", "azul", "azules", "azules"),
        "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
        "purple": ("morado", "morada", "morados", "moradas"),
        "orange": ("naranja", "naranja", "naranjas", "naranjas"),
        "black": ("negro", "negra", "negros", "negras"),
    },
    "size": {
        "small": (("pequeño", "pequeña", "pequeños", "pequeñas"),),
        "large": (("grande", "grande", "grandes", "grandes"),),
    },
    "number": (
        {1: ("un", "una"), 2: ("dos", "dos"), 3: ("tres", "tres")},
        {1: ("un", "una"), 2: ("2", "2"), 3: ("3", "3")},
    ),
    # noun phrase word orders: "círculos rojos grandes" / "círculos grandes y rojos"
    "order": ("{noun} {colour} {size}", "{noun} {size} y {colour}"),
    "region": {
        "left": ("a la izquierda", "en el lado izquierdo", "en la parte izquierda de la imagen"),
        "right": ("a la derecha", "en el lado derecho", "en la parte derecha de la imagen"),
        "top": ("arriba", "en la parte superior", "en la parte de arriba de la imagen"),
        "bottom": ("abajo", "en la parte inferior", "en la parte de abajo de la imagen"),
        "center": ("en el centro", "en el medio", "en el centro de la imagen"),
    },
    # definite article: (singular, plural) by gender
    "definite": {"m": ("el", "los"), "f": ("la", "las")},
}

_ES_TEMPLATES = (
    "{np} {region}",
    "{Region} hay {np}.",
    "Una imagen con {np} {region}.",
    "{Np_bare} {be} {region}. {Cop} {size_pred}.",
    "Se {see} {np} {region}.",
)


def _es_caption_slots(a: dict, c: dict) -> dict:
    sg = a["count"] == 1
    sg_form, pl_form, gender = _ES["shape"][a["shape"]]
    f = _fr_form(gender, sg)
    num = _pick(_ES["number"], c["number"])[a["count"]][0 if gender == "m" else 1]
    noun = sg_form if sg else pl_form
    colour = _ES["colour"][a["colour"]][f]
    size = _pick(_ES["size"][a["size"]], c["size"])[f]
    body = _pick(_ES["order"], c["order"]).format(noun=noun, colour=colour, size=size)
    return {
        "np": f"{num} {body}",
        "np_bare": f"{num} {noun} {colour}",
        "region": _pick(_ES["region"][a["region"]], c["region"]),
        "be": "está" if sg else "están",
        "cop": "es" if sg else "son",
        "see": "ve" if sg else "ven",
        "size_pred": size,
    }


def _es_definite(a: dict, with_colour: bool = True) -> str:
    sg = a["count"] == 1
    sg_form, pl_form, gender = _ES["shape"][a["shape"]]
    words = [_ES["definite"][gender][0 if sg else 1], sg_form if sg else pl_form]
    if with_colour:
        words.append(_ES["colour"][a["colour"]][_fr_form(gender, sg)])
    return " ".join(words)


def _es_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    gender = _ES["shape"][a["shape"]][2]
    f = _fr_form(gender, sg)
    if kind == "colour":
        return f"¿De qué color {'es' if sg else 'son'} {_es_definite(a, with_colour=False)}?"
    if kind == "shape":
        colour = _ES["colour"][a["colour"]][_fr_form("m", sg)]
        obj = "el objeto" if sg else "los objetos"
        return f"¿Qué forma {'tiene' if sg else 'tienen'} {obj} {colour}?"
    if kind == "count":
        how_many = "Cuántos" if gender == "m" else "Cuántas"
        colour = _ES["colour"][a["colour"]][_fr_form(gender, False)]
        return f"¿{how_many} {_ES['shape'][a['shape']][1]} {colour} hay?"
    if kind == "region":
        return f"¿Dónde {'está' if sg else 'están'} {_es_definite(a)}?"
    if kind == "size":
        big, small = _ES["size"]["large"][0][f], _ES["size"]["small"][0][f]
        return f"¿{_cap(_es_definite(a))} {'es' if sg else 'son'} {big} o {small}?"
    pc, ps = probe
    sg_form, _, g = _ES["shape"][ps]
    art = "un" if g == "m" else "una"
    return f"¿Hay {art} {sg_form} {_ES['colour'][pc][_fr_form(g, True)]} en la imagen?"


# --------------------------------------------------------------------------------------------------
# Russian

_RU = {
    # nom.sg, gen.sg, nom.pl, gen.pl, instr.sg, instr.pl, gender (all inanimate)
    "shape": {
        "circle": ("круг", "круга", "круги", "кругов", "кругом", "кругами", "m"),
        "square": ("квадрат", "квадрата", "квадраты", "квадратов", "квадратом", "квадратами", "m"),
        "triangle": ("треугольник", "треугольника", "треугольники", "треугольников",
                     "треугольником", "треугольниками", "m"),
        "star": ("звезда", "звезды", "звёзды", "звёзд", "звездой", "звёздами", "f"),
        "cross": ("крест", "креста", "кресты", "крестов", "крестом", "крестами", "m"),
        "diamond": ("ромб", "ромба", "ромбы", "ромбов", "ромбом", "ромбами", "m"),
    },
    # adjectives: nom.m, nom.f, nom.pl, gen.pl, instr.m, instr.f, instr.pl
    "colour": {
        "red": ("красный", "красная", "красные", "красных", "красным", "красной", "красными"),
        "green": ("зелёный", "зелёная", "зелёные", "зелёных", "зелёным", "зелёной", "зелёными"),
        "blue": ("синий", "синяя", "синие", "синих", "синим", "синей", "синими"),
        "yellow": ("жёлтый", "жёлтая", "жёлтые", "жёлтых", "жёлтым", "жёлтой", "жёлтыми"),
        "purple": ("фиолетовый", "фиолетовая", "фиолетовые", "фиолетовых", "фиолетовым",
                   "фиолетовой", "фиолетовыми"),
        "orange": ("оранжевый", "оранжевая", "оранжевые", "оранжевых", "оранжевым", "оранжевой",
                   "оранжевыми"),
        "black": ("чёрный", "чёрная", "чёрные", "чёрных", "чёрным", "чёрной", "чёрными"),
    },
    "size": {
        "small": (
            ("маленький", "маленькая", "маленькие", "маленьких", "маленьким", "маленькой", "маленькими"),
            ("небольшой", "небольшая", "небольшие", "небольших", "небольшим", "небольшой", "небольшими"),
        ),
        "large": (
            ("большой", "большая", "большие", "больших", "большим", "большой", "большими"),
            ("крупный", "крупная", "крупные", "крупных", "крупным", "крупной", "крупными"),
        ),
    },
    # numerals: nominative (m, f) and instrumental (m, f); digit style keeps 1 as a word
    "number": (
        {1: ("один", "одна"), 2: ("два", "две"), 3: ("три", "три")},
        {1: ("один", "одна"), 2: ("2", "2"), 3: ("3", "3")},
    ),
    "number_ins": (
        {1: ("одним", "одной"), 2: ("двумя", "двумя"), 3: ("тремя", "тремя")},
        {1: ("одним", "одной"), 2: ("2", "2"), 3: ("3", "3")},
    ),
    "region": {
        "left": ("слева", "в левой части", "с левой стороны"),
        "right": ("справа", "в правой части", "с правой стороны"),
        "top": ("сверху", "в верхней части", "вверху"),
        "bottom": ("снизу", "в нижней части", "внизу"),
        "center": ("в центре", "посередине", "в середине"),
    },
    "pronoun": {"m": "он", "f": "она", "pl": "они"},
    # noun "фигура" (f) for shape questions: nom.sg, nom.pl
    "figure": ("фигура", "фигуры"),
}
# adjective tuple indices
_RU_NOM = {"m": 0, "f": 1, "pl": 2}
_RU_GEN_PL = 3
_RU_INS = {"m": 4, "f": 5, "pl": 6}

_RU_TEMPLATES = (
    "{np_nom} {region}",
    "{Region} {verb} {np_nom}.",
    "Изображение с {np_ins} {region}.",
    "{Np_bare} {verb} {region}. {Pron} {size_pred}.",
    "На изображении {region} {np_nom}.",
)


def _ru_np(a: dict, c: dict, case: str, with_size: bool = True) -> str:
    """Noun phrase in the nominative or instrumental with numeral government.

    Nominative: 1 -> adjective and noun in nom. sg. ("один большой красный круг"); 2-3 -> noun in
    gen. sg., adjectives in gen. pl. for masculine nouns ("два больших красных круга") and nom. pl.
    for feminine ones ("две большие красные звезды"). Instrumental: everything in instr.
    """
    noun_forms = _RU["shape"][a["shape"]]
    gender = noun_forms[6]
    n = a["count"]
    gi = 0 if gender == "m" else 1
    adjs = [_pick(_RU["size"][a["size"]], c.get("size", 0))] if with_size else []
    adjs.append(_RU["colour"][a["colour"]])
    if case == "ins":
        num = _pick(_RU["number_ins"], c.get("number", 0))[n][gi]
        ai = _RU_INS[gender if n == 1 else "pl"]
        noun = noun_forms[4 if n == 1 else 5]
    elif n == 1:
        num = _pick(_RU["number"], c.get("number", 0))[n][gi]
        ai, noun = _RU_NOM[gender], noun_forms[0]
    else:
        num = _pick(_RU["number"], c.get("number", 0))[n][gi]
        ai = _RU_GEN_PL if gender == "m" else _RU_NOM["pl"]
        noun = noun_forms[1]
    return " ".join([num] + [adj[ai] for adj in adjs] + [noun])


def _ru_caption_slots(a: dict, c: dict) -> dict:
    sg = a["count"] == 1
    gender = _RU["shape"][a["shape"]][6]
    key = gender if sg else "pl"
    return {
        "np_nom": _ru_np(a, c, "nom"),
        "np_ins": _ru_np(a, c, "ins"),
        "np_bare": _ru_np(a, c, "nom", with_size=False),
        "region": _pick(_RU["region"][a["region"]], c["region"]),
        "verb": "находится" if sg else "находятся",
        "pron": _RU["pronoun"][key],
        "size_pred": _pick(_RU["size"][a["size"]], c["size"])[_RU_NOM[key]],
    }


def _ru_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    forms = _RU["shape"][a["shape"]]
    gender = forms[6]
    key = gender if sg else "pl"
    noun = forms[0] if sg else forms[2]
    colour = _RU["colour"][a["colour"]][_RU_NOM[key]]
    if kind == "colour":
        return f"Какого цвета {noun}?"
    if kind == "shape":
        ckey = "f" if sg else "pl"  # agrees with "фигура"
        fig = _RU["figure"][0 if sg else 1]
        return f"Какой формы {_RU['colour'][a['colour']][_RU_NOM[ckey]]} {fig}?"
    if kind == "count":
        return f"Сколько на изображении {_RU['colour'][a['colour']][_RU_GEN_PL]} {forms[3]}?"
    if kind == "region":
        return f"Где {'находится' if sg else 'находятся'} {colour} {noun}?"
    if kind == "size":
        big = _RU["size"]["large"][0][_RU_NOM[key]]
        small = _RU["size"]["small"][0][_RU_NOM[key]]
        return f"{_cap(colour)} {noun} {big} или {small}?"
    pc, ps = probe
    pforms = _RU["shape"][ps]
    return f"Есть ли на изображении {_RU['colour'][pc][_RU_NOM[pforms[6]]]} {pforms[0]}?"


# --------------------------------------------------------------------------------------------------
# Japanese

_JA = {
    "shape": {
        "circle": ("丸", "円"),
        "square": ("四角", "正方形"),
        "triangle": ("三角", "三角形"),
        "star": ("星", "星形"),
        "cross": ("十字", "十字形"),
        "diamond": ("ひし形", "菱形"),
    },
    # attributive forms (い-adjectives or noun + の)
    "colour": {
        "red": ("赤い",), "green": ("緑の",), "blue": ("青い",), "yellow": ("黄色い",),
        "purple": ("紫の", "紫色の"), "orange": ("オレンジ色の", "オレンジの"), "black": ("黒い",),
    },
    "size": {"small": ("小さな", "小さい"), "large": ("大きな", "大きい")},
    "size_pred": {"small": "小さい", "large": "大きい"},
    # counters: native つ, digits + つ, digits + 個
    "number": (
        {1: "一つ", 2: "二つ", 3: "三つ"},
        {1: "1つ", 2: "2つ", 3: "3つ"},
        {1: "1個", 2: "2個", 3: "3個"},
    ),
    "region": {
        "left": ("左側", "左", "左の方"),
        "right": ("右側", "右", "右の方"),
        "top": ("上部", "上", "上の方"),
        "bottom": ("下部", "下", "下の方"),
        "center": ("中央", "真ん中", "中心"),
    },
    "all_of": {2: "どちらも", 3: "どれも"},
}

_JA_TEMPLATES = (
    "{region}の{num}の{size}{colour}{shape}",
    "{region}に{size}{colour}{shape}が{num}あります。",
    "{region}に{num}の{size}{colour}{shape}がある画像。",
    ("{colour}{shape}が{region}に{num}あります。{size_pred}{shape}です。",
     "{colour}{shape}が{region}に{num}あります。{all_of}{size_pred}です。"),
    "{num}の{size}{colour}{shape}が{region}に描かれています。",
)


def _ja_caption_slots(a: dict, c: dict) -> dict:
    return {
        "num": _pick(_JA["number"], c["number"])[a["count"]],
        "size": _pick(_JA["size"][a["size"]], c["size"]),
        "size_pred": _JA["size_pred"][a["size"]],
        "colour": _pick(_JA["colour"][a["colour"]], c["colour"]),
        "shape": _pick(_JA["shape"][a["shape"]], c["shape"]),
        "region": _pick(_JA["region"][a["region"]], c["region"]),
        "all_of": _JA["all_of"].get(a["count"], ""),
    }


def _ja_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    shape = _JA["shape"][a["shape"]][0]
    colour = _JA["colour"][a["colour"]][0]
    if kind == "colour":
        return f"{shape}は何色ですか？"
    if kind == "shape":
        return f"{colour}図形はどんな形ですか？"
    if kind == "count":
        return f"{colour}{shape}はいくつありますか？"
    if kind == "region":
        return f"{colour}{shape}はどこにありますか？"
    if kind == "size":
        return f"{colour}{shape}は大きいですか、それとも小さいですか？"
    pc, ps = probe
    return f"画像に{_JA['colour'][pc][0]}{_JA['shape'][ps][0]}はありますか？"


# --------------------------------------------------------------------------------------------------
# Chinese (simplified)

_ZH = {
    "shape": {
        "circle": ("圆形", "圆"),
        "square": ("正方形", "方块"),
        "triangle": ("三角形",),
        "star": ("星形", "五角星"),
        "cross": ("十字形", "十字"),
        "diamond": ("菱形",),
    },
    "colour": {
        "red": ("红色",), "green": ("绿色",), "blue": ("蓝色",), "yellow": ("黄色",),
        "purple": ("紫色",), "orange": ("橙色", "橘色"), "black": ("黑色",),
    },
    "size": {"small": "小", "large": "大"},
    # numeral + measure word 个 (两 rather than 二 before a measure word)
    "number": ({1: "一个", 2: "两个", 3: "三个"}, {1: "1个", 2: "2个", 3: "3个"}),
    "region": {
        "left": ("左边", "左侧", "左半部分"),
        "right": ("右边", "右侧", "右半部分"),
        "top": ("上方", "上面", "上半部分"),
        "bottom": ("下方", "下面", "下半部分"),
        "center": ("中间", "中央", "正中间"),
    },
}

_ZH_TEMPLATES = (
    "{region}的{np}",
    "{region}有{np}。",
    "这张图片的{region}有{np}。",
    "{num}{colour}的{shape}位于{region}，{pron}很{size}。",
    "画面{region}画着{np}。",
)


def _zh_caption_slots(a: dict, c: dict) -> dict:
    num = _pick(_ZH["number"], c["number"])[a["count"]]
    colour = _pick(_ZH["colour"][a["colour"]], c["colour"])
    shape = _pick(_ZH["shape"][a["shape"]], c["shape"])
    size = _ZH["size"][a["size"]]
    return {
        "np": f"{num}{colour}的{size}{shape}",
        "num": num,
        "colour": colour,
        "shape": shape,
        "size": size,
        "region": _pick(_ZH["region"][a["region"]], c["region"]),
        "pron": "它" if a["count"] == 1 else "它们都",
    }


def _zh_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    shape = _ZH["shape"][a["shape"]][0]
    colour = _ZH["colour"][a["colour"]][0]
    if kind == "colour":
        return f"{'这个' if a['count'] == 1 else '这些'}{shape}是什么颜色的？"
    if kind == "shape":
        return f"{colour}的图形是什么形状的？"
    if kind == "count":
        return f"图中有几个{colour}的{shape}？"
    if kind == "region":
        return f"{colour}的{shape}在哪里？"
    if kind == "size":
        return f"{colour}的{shape}是大的还是小的？"
    pc, ps = probe
    return f"图中有{_ZH['colour'][pc][0]}的{_ZH['shape'][ps][0]}吗？"


# --------------------------------------------------------------------------------------------------
# language registry


@dataclass(frozen=True)
class _Language:
    templates: tuple  # caption templates; str, or (one-object, several-objects) pair
    slots: Dict[str, int]  # variant slot -> number of options (index 0 = translation-set wording)
    caption_slots: Callable[[dict, dict], dict]
    question: Callable[[str, dict, Tuple[str, str]], str]
    label: Callable[[str], str]  # shape -> singular nominative base form
    spell_out_initial: bool = True  # no digits at the start of a sentence ("Three ...", not "3 ...")


_LANGUAGES: Dict[str, _Language] = {
    "en": _Language(_EN_TEMPLATES, {"number": 3, "size": 2, "region": 3}, _en_caption_slots,
                    _en_question, lambda s: _EN["shape"][s][0]),
    "de": _Language(_DE_TEMPLATES, {"number": 2, "size": 1, "region": 3}, _de_caption_slots,
                    _de_question, lambda s: _DE["shape"][s][0]),
    "fr": _Language(_FR_TEMPLATES, {"number": 2, "size": 2, "region": 3}, _fr_caption_slots,
                    _fr_question, lambda s: _FR["shape"][s][0]),
    "es": _Language(_ES_TEMPLATES, {"number": 2, "size": 1, "region": 3, "order": 2},
                    _es_caption_slots, _es_question, lambda s: _ES["shape"][s][0]),
    "ru": _Language(_RU_TEMPLATES, {"number": 2, "size": 2, "region": 3}, _ru_caption_slots,
                    _ru_question, lambda s: _RU["shape"][s][0]),
    "ja": _Language(_JA_TEMPLATES, {"number": 3, "size": 2, "region": 3, "colour": 2, "shape": 2},
                    _ja_caption_slots, _ja_question, lambda s: _JA["shape"][s][0],
                    spell_out_initial=False),
    "zh": _Language(_ZH_TEMPLATES, {"number": 2, "region": 3, "colour": 2, "shape": 2},
                    _zh_caption_slots, _zh_question, lambda s: _ZH["shape"][s][0],
                    spell_out_initial=False),
}
assert tuple(_LANGUAGES) == DEMO_LANGUAGES


def _check_language(lang: str) -> _Language:
    if lang not in _LANGUAGES:
        raise ValueError(
            f"unknown demo language {lang!r}; supported languages: {', '.join(DEMO_LANGUAGES)}"
        )
    return _LANGUAGES[lang]


def num_templates(lang: str) -> int:
    """Number of caption templates of ``lang``; the first :data:`NUM_SHARED_TEMPLATES` are shared."""
    return len(_check_language(lang).templates)


def render_caption(lang: str, attributes: dict, template: int = 0,
                   choice: Optional[Dict[str, int]] = None) -> str:
    """Render one caption of a scene.

    ``attributes``: dict with keys ``shape``, ``colour``, ``size``, ``region``, ``count``.
    ``template``: template index (``0 <= template < num_templates(lang)``); templates below
    :data:`NUM_SHARED_TEMPLATES` mean the same in every language. ``choice``: word-variant indices by
    slot (e.g. ``{"size": 1}`` for "big" instead of "large"); missing slots use variant 0, the
    wording of the translation set.
    """
    spec = _check_language(lang)
    c = {slot: 0 for slot in spec.slots}
    if choice:
        c.update(choice)
    tpl = spec.templates[template]
    if isinstance(tpl, tuple):
        tpl = tpl[0 if attributes["count"] == 1 else 1]
    text = tpl.format(**_with_capitals(spec.caption_slots(attributes, c)))
    if spec.spell_out_initial and text[:1].isdigit() and text.endswith("."):
        c["number"] = 0  # number style 0 spells numbers out in every language
        text = tpl.format(**_with_capitals(spec.caption_slots(attributes, c)))
    return text


def render_question(lang: str, kind: str, attributes: dict,
                    probe: Optional[Tuple[str, str]] = None) -> str:
    """Render a question of ``kind`` (one of :data:`QUESTION_KINDS`) about a scene in ``lang``.

    ``probe`` is the ``(colour, shape)`` asked about by an ``exists`` question ("Is there a blue
    square in the image?"); other kinds ask about the scene's own group.
    """
    spec = _check_language(lang)
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")
    if kind == "exists" and probe is None:
        raise ValueError("an 'exists' question needs probe=(colour, shape)")
    return spec.question(kind, attributes, probe or ("", ""))


def _answer_vocabulary() -> List[str]:
    return sorted(set(COLOURS) | set(SHAPES) | set(SIZES) | set(REGIONS)
                  | {str(n) for n in COUNTS} | {"yes", "no"})


# --------------------------------------------------------------------------------------------------
# images

def _unit_polygon(shape: str) -> List[Tuple[float, float]]:
    """Outline of ``shape`` in the unit square, touching all four sides."""
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "star":
        import math

        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.5  # fat inner radius: readable at 10 px
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return [((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y in pts]
    raise ValueError(shape)


_UNIT = {s: _unit_polygon(s) for s in ("triangle", "diamond", "star")}


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], rgb) -> None:
    x0, y0, x1, y1 = box  # x1, y1 exclusive
    w, h = x1 - 1 - x0, y1 - 1 - y0
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=rgb)
    elif shape == "cross":  # two bars of odd width ~1/3 of the side, centred
        side = x1 - x0
        arm = max(1, 2 * int(round((side / 3 - 1) / 2)) + 1)
        a = (side - arm) // 2
        draw.rectangle([x0 + a, y0, x0 + a + arm - 1, y1 - 1], fill=rgb)
        draw.rectangle([x0, y0 + a, x1 - 1, y0 + a + arm - 1], fill=rgb)
    else:
        draw.polygon([(x0 + u * w, y0 + v * h) for u, v in _UNIT[shape]], fill=rgb)


def _object_size(size: str, image_size: int) -> int:
    """Side of an object's box in pixels: the odd number nearest to the size fraction.

    Odd sides put the centre on a pixel, so diamonds, triangles and crosses come out symmetric.
    """
    return max(3, 2 * int(round((_SIZE_FRACTION[size] * image_size - 1) / 2)) + 1)


def _gap(image_size: int) -> int:
    return max(1, int(round(image_size / 32)))


_CANDIDATES: Dict[Tuple[int, int, str], List[Tuple[int, int]]] = {}


def _candidates(image_size: int, side: int, region: str) -> List[Tuple[int, int]]:
    """Top-left corners whose object centre lies in ``region``'s per-object zone."""
    key = (image_size, side, region)
    if key not in _CANDIDATES:
        S, third = image_size, image_size / 3
        out = []
        for x in range(S - side + 1):
            for y in range(S - side + 1):
                cx, cy = x + side / 2, y + side / 2
                ok = {
                    "left": cx < third,
                    "right": cx > S - third,
                    "top": cy < third,
                    "bottom": cy > S - third,
                    "center": S / 4 <= cx <= 3 * S / 4 and S / 4 <= cy <= 3 * S / 4,
                }[region]
                if ok:
                    out.append((x, y))
        _CANDIDATES[key] = out
    return _CANDIDATES[key]


def _centroid_ok(centres: List[Tuple[float, float]], region: str, S: int) -> bool:
    """Group-level rule that makes regions exclusive (see the module docstring)."""
    gx = sum(c[0] for c in centres) / len(centres)
    gy = sum(c[1] for c in centres) / len(centres)
    m = S / 16
    if region == "left":
        return gx + m <= min(gy, S - gy)
    if region == "right":
        return (S - gx) + m <= min(gy, S - gy)
    if region == "top":
        return gy + m <= min(gx, S - gx)
    if region == "bottom":
        return (S - gy) + m <= min(gx, S - gx)
    return abs(gx - S / 2) <= S / 10 and abs(gy - S / 2) <= S / 10


def _place(rng: random.Random, image_size: int, side: int, count: int, region: str) -> List[List[int]]:
    """Random non-overlapping boxes ``[x0, y0, x1, y1]`` (x1/y1 exclusive) for one group."""
    cands = _candidates(image_size, side, region)
    min_dist = side + _gap(image_size)
    for _ in range(10000):
        pool, placed = cands, []
        for _k in range(count):
            if not pool:
                break
            x, y = pool[rng.randrange(len(pool))]
            placed.append((x, y))
            pool = [(u, v) for (u, v) in pool if abs(u - x) >= min_dist or abs(v - y) >= min_dist]
        if len(placed) == count and _centroid_ok(
                [(x + side / 2, y + side / 2) for x, y in placed], region, image_size):
            return [[x, y, x + side, y + side] for x, y in placed]
    raise RuntimeError(f"could not place {count} objects of {side}px in region {region!r}")


def _background(rng: random.Random) -> Tuple[int, int, int]:
    """A light, low-saturation colour: never confusable with a saturated object colour."""
    base = rng.randint(195, 245)
    return tuple(min(255, max(0, base + rng.randint(-10, 10))) for _ in range(3))


def _render_image(attrs: dict, boxes: List[List[int]], bg, image_size: int) -> Image.Image:
    img = Image.new("RGB", (image_size, image_size), bg)
    draw = ImageDraw.Draw(img)
    for box in boxes:
        _draw_object(draw, attrs["shape"], box, _RGB[attrs["colour"]])
    return img


# --------------------------------------------------------------------------------------------------
# generation

def _all_combos() -> List[Tuple[str, str, str, str, int]]:
    return list(itertools.product(SHAPES, COLOURS, SIZES, REGIONS, COUNTS))


def _as_attrs(combo) -> dict:
    shape, colour, size, region, count = combo
    return {"shape": shape, "colour": colour, "size": size, "region": region, "count": count}


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
