"""Spanish: gender and number agreement, two noun-phrase word orders."""
from __future__ import annotations

from typing import Tuple

from ._common import _Language, _cap, _form_index, _pick


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
    f = _form_index(gender, sg)
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
        words.append(_ES["colour"][a["colour"]][_form_index(gender, sg)])
    return " ".join(words)


def _es_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    gender = _ES["shape"][a["shape"]][2]
    f = _form_index(gender, sg)
    if kind == "colour":
        return f"¿De qué color {'es' if sg else 'son'} {_es_definite(a, with_colour=False)}?"
    if kind == "shape":
        colour = _ES["colour"][a["colour"]][_form_index("m", sg)]
        obj = "el objeto" if sg else "los objetos"
        return f"¿Qué forma {'tiene' if sg else 'tienen'} {obj} {colour}?"
    if kind == "count":
        how_many = "Cuántos" if gender == "m" else "Cuántas"
        colour = _ES["colour"][a["colour"]][_form_index(gender, False)]
        return f"¿{how_many} {_ES['shape'][a['shape']][1]} {colour} hay?"
    if kind == "region":
        return f"¿Dónde {'está' if sg else 'están'} {_es_definite(a)}?"
    if kind == "size":
        big, small = _ES["size"]["large"][0][f], _ES["size"]["small"][0][f]
        return f"¿{_cap(_es_definite(a))} {'es' if sg else 'son'} {big} o {small}?"
    pc, ps = probe
    sg_form, _, g = _ES["shape"][ps]
    art = "un" if g == "m" else "una"
    return f"¿Hay {art} {sg_form} {_ES['colour'][pc][_form_index(g, True)]} en la imagen?"


LANGUAGE = _Language(_ES_TEMPLATES, {"number": 2, "size": 1, "region": 3, "order": 2},
                     _es_caption_slots, _es_question, lambda s: _ES["shape"][s][0])
