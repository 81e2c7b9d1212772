"""Small helpers shared by the evaluators (retrieval, bitext)."""
from __future__ import annotations

from typing import Iterable, Sequence


def progress(iterable: Iterable, enabled: bool, **kwargs):
    """``iterable`` wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def batches(seq: Sequence, size: int):
    """Consecutive slices of ``seq`` of length ``size`` (the last may be shorter)."""
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values))


def lang_kwargs(model, lang) -> dict:
    """``{"lang": code}`` for models that know the language (X-Mod adapters route on it)."""
    return {"lang": lang} if lang in getattr(model, "lang_to_id", {}) else {}
