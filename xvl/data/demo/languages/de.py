"""German: three genders, three cases, mixed/strong/weak adjective endings."""
from __future__ import annotations

from typing import Optional, Tuple

from ._common import _Language, _pick


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


LANGUAGE = _Language(_DE_TEMPLATES, {"number": 2, "size": 1, "region": 3}, _de_caption_slots,
                     _de_question, lambda s: _DE["shape"][s][0])
