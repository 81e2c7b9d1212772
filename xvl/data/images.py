"""Image loading that never crashes a long run: failures are returned, counted and logged."""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Optional

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)


class SkipCounter:
    """Counts skipped samples by reason and logs the first few of each reason.

    Long runs must never lose data silently: every skip goes through one of these, and the trainer
    reports the totals in its logs and metrics.
    """

    def __init__(self, name: str = "data", log_first: int = 5):
        self.name = name
        self.log_first = log_first
        self.counts: Counter = Counter()

    def skip(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= self.log_first:
            logger.warning("%s: skipped (%s) %s", self.name, reason, detail)
        elif self.counts[reason] == self.log_first + 1:
            logger.warning("%s: further '%s' skips are counted, not logged", self.name, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return dict(self.counts)


def load_image(path: str, skips: Optional[SkipCounter] = None) -> Optional[Image.Image]:
    """Open ``path`` as an RGB PIL image; on a missing or undecodable file return None.

    The failure is recorded in ``skips`` (reason ``missing_image`` or ``bad_image``) when given.
    """
    if not os.path.exists(path):
        if skips is not None:
            skips.skip("missing_image", path)
        return None
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if skips is not None:
            skips.skip("bad_image", f"{path}: {e}")
        return None
