"""Captions and questions about a scene, rendered in any demo language."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .languages import _check_language
from .languages._common import _cap

#: Question kinds, in a fixed order.
QUESTION_KINDS = ("colour", "shape", "count", "region", "size", "exists")
#: Caption templates 0..NUM_SHARED_TEMPLATES-1 exist in every language with the same meaning
#: (the translation set); later templates are language-specific phrasings used for native captions.
NUM_SHARED_TEMPLATES = 4


def _with_capitals(slots: Dict[str, str]) -> Dict[str, str]:
    """Add a capitalised twin of every slot: ``{np}`` -> ``{Np}`` for sentence starts."""
    out = dict(slots)
    for k, v in slots.items():
        out[k[:1].upper() + k[1:]] = _cap(v)
    return out


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
