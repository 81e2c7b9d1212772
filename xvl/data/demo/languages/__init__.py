"""The demo languages: one module per language, each with its lexicon table, caption templates,
caption slots and question renderer, gathered here into a registry keyed by ISO 639-1 code.

Every language module defines ``LANGUAGE``, a ``_common._Language`` record. The registry
order is :data:`DEMO_LANGUAGES`; it also fixes the per-language random streams of
:func:`~xvl.data.demo.generate_demo`, so it must not change.
"""
from __future__ import annotations

from typing import Dict

from . import de, en, es, fr, ja, ru, zh
from ._common import _Language

#: Languages the demo data is written in (ISO 639-1 codes).
DEMO_LANGUAGES = ("en", "de", "fr", "es", "ru", "ja", "zh")

_LANGUAGES: Dict[str, _Language] = {
    "en": en.LANGUAGE,
    "de": de.LANGUAGE,
    "fr": fr.LANGUAGE,
    "es": es.LANGUAGE,
    "ru": ru.LANGUAGE,
    "ja": ja.LANGUAGE,
    "zh": zh.LANGUAGE,
}
assert tuple(_LANGUAGES) == DEMO_LANGUAGES


def _check_language(lang: str) -> _Language:
    if lang not in _LANGUAGES:
        raise ValueError(
            f"unknown demo language {lang!r}; supported languages: {', '.join(DEMO_LANGUAGES)}"
        )
    return _LANGUAGES[lang]
