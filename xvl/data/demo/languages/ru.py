"""Russian: cases and numeral government (один круг / два круга / две звезды)."""
from __future__ import annotations

from typing import Tuple

from ._common import _Language, _cap, _pick


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


LANGUAGE = _Language(_RU_TEMPLATES, {"number": 2, "size": 2, "region": 3}, _ru_caption_slots,
                     _ru_question, lambda s: _RU["shape"][s][0])
