"""Japanese: counters (つ/個), attributive adjectives, no plural."""
from __future__ import annotations

from typing import Tuple

from ._common import _Language, _pick


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


LANGUAGE = _Language(_JA_TEMPLATES, {"number": 3, "size": 2, "region": 3, "colour": 2, "shape": 2},
                     _ja_caption_slots, _ja_question, lambda s: _JA["shape"][s][0],
                     spell_out_initial=False)
