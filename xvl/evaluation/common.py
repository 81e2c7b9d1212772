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


def pct(x) -> str:
    """A recall/accuracy in [0, 1] as a percentage with one decimal ("-" when missing)."""
    return "-" if x is None else f"{100.0 * float(x):.1f}"


def render_table(header: list, rows: list) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]

    def fmt(r: list) -> str:
        return "  ".join(r[0].ljust(widths[0]) if c == 0 else r[c].rjust(widths[c])
                         for c in range(len(r))).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])
