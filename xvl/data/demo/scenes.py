"""Scenes of the demo data: attribute vocabularies, object placement and image drawing.

A scene is one group of ``count`` identical objects (shape, colour, size) in one region of a plain
light background; see :mod:`xvl.data.demo` for the grammar and the region rules.
"""
from __future__ import annotations

import itertools
import random
from typing import Dict, List, Sequence, Tuple

from PIL import Image, ImageDraw

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


def _all_combos() -> List[Tuple[str, str, str, str, int]]:
    return list(itertools.product(SHAPES, COLOURS, SIZES, REGIONS, COUNTS))


def _as_attrs(combo) -> dict:
    shape, colour, size, region, count = combo
    return {"shape": shape, "colour": colour, "size": size, "region": region, "count": count}


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
    """Group-level rule that makes regions exclusive (see the package docstring)."""
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
