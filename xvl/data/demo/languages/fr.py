"""French: gender and number agreement, colours after the noun, elided articles."""
from __future__ import annotations

from typing import Tuple

from ._common import _Language, _cap, _form_index, _pick


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


def _fr_caption_slots(a: dict, c: dict) -> dict:
    sg = a["count"] == 1
    sg_form, pl_form, gender, _ = _FR["shape"][a["shape"]]
    f = _form_index(gender, sg)
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
        words.append(_FR["colour"][a["colour"]][_form_index(gender, sg)])
    return " ".join(words)


def _fr_question(kind: str, a: dict, probe: Tuple[str, str]) -> str:
    sg = a["count"] == 1
    gender = _FR["shape"][a["shape"]][2]
    f = _form_index(gender, sg)
    if kind == "colour":
        return f"De quelle couleur {'est' if sg else 'sont'} {_fr_definite(a, with_colour=False)} ?"
    if kind == "shape":
        colour = _FR["colour"][a["colour"]][_form_index("m", sg)]
        obj = "de l'objet" if sg else "des objets"
        return f"Quelle est la forme {obj} {colour} ?"
    if kind == "count":
        colour = _FR["colour"][a["colour"]][_form_index(gender, False)]
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
    return f"Y a-t-il {art} {sg_form} {_FR['colour'][pc][_form_index(g, True)]} dans l'image ?"


LANGUAGE = _Language(_FR_TEMPLATES, {"number": 2, "size": 2, "region": 3}, _fr_caption_slots,
                     _fr_question, lambda s: _FR["shape"][s][0])
