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

Modules
-------
* :mod:`.scenes`: attribute vocabularies, object placement and image drawing;
* :mod:`.languages`: the language registry, with one module per language (``en``, ``de``, ``fr``,
  ``es``, ``ru``, ``ja``, ``zh``) holding its lexicon table, caption templates and questions;
* :mod:`.text`: :func:`render_caption`, :func:`render_question` and :func:`num_templates`;
* :mod:`.generate`: :func:`generate_demo`, which writes the images and jsonl files.
"""
from __future__ import annotations

from .generate import DemoPaths, generate_demo
from .languages import DEMO_LANGUAGES
from .scenes import COLOURS, COUNTS, REGIONS, SHAPES, SIZES
from .text import (
    NUM_SHARED_TEMPLATES,
    QUESTION_KINDS,
    num_templates,
    render_caption,
    render_question,
)

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
