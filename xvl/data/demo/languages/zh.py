"""Chinese (simplified): measure word 个, 的-phrases, no plural."""
from __future__ import annotations

from typing import Tuple

from ._common import _Language, _pick


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


LANGUAGE = _Language(_ZH_TEMPLATES, {"number": 2, "region": 3, "colour": 2, "shape": 2},
                     _zh_caption_slots, _zh_question, lambda s: _ZH["shape"][s][0],
                     spell_out_initial=False)
