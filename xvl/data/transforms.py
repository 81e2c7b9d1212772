"""Image transforms, built with timm's own factory from the vision tower's data config."""
from __future__ import annotations

from timm.data import create_transform


def build_image_transform(data_config: dict, train: bool = False, augment: bool = False, scale=(0.7, 1.0)):
    """Eval: resize + center crop (crop_pct) + normalize. Train with ``augment``: random resized
    crop over ``scale`` of the area, no flips or colour jitter by default (captions name positions
    and colours, which those would falsify)."""
    if not (train and augment):
        return create_transform(**data_config, is_training=False)
    dc = {k: v for k, v in data_config.items() if k not in ("crop_pct", "crop_mode")}
    return create_transform(**dc, is_training=True, scale=tuple(scale), hflip=0.0, color_jitter=None)
