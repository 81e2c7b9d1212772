"""Shared pieces of the demo languages: the :class:`_Language` record and word-picking helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple


@dataclass(frozen=True)
class _Language:
    templates: tuple  # caption templates; str, or (one-object, several-objects) pair
    slots: Dict[str, int]  # variant slot -> number of options (index 0 = translation-set wording)
    caption_slots: Callable[[dict, dict], dict]
    question: Callable[[str, dict, Tuple[str, str]], str]
    label: Callable[[str], str]  # shape -> singular nominative base form
    spell_out_initial: bool = True  # no digits at the start of a sentence ("Three ...", not "3 ...")


def _pick(options: Sequence, i: int):
    """Option ``i`` of ``options``, wrapping around (lists of synonyms have different lengths)."""
    return options[i % len(options)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _form_index(gender: str, sg: bool) -> int:
    """Index into the (m.sg, f.sg, m.pl, f.pl) adjective tuples of French and Spanish."""
    return (0 if gender == "m" else 1) + (0 if sg else 2)
