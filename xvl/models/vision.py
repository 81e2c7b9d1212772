"""Image tower: any timm backbone, exposing pooled features and patch tokens."""
from __future__ import annotations

import logging
from typing import Dict

import timm
import torch
from torch import nn

from xvl.config import VisionConfig

logger = logging.getLogger(__name__)


def _create_timm(cfg: VisionConfig) -> nn.Module:
    kwargs = dict(cfg.kwargs)
    kwargs.setdefault("num_classes", 0)  # features only; projections live in XVLModel
    if "img_size" not in kwargs:
        # ViT-style models take img_size (position embeddings are sized from it); CNNs reject the
        # keyword, and they are size-agnostic anyway, so retry without it.
        try:
            return timm.create_model(cfg.name, pretrained=cfg.pretrained, img_size=cfg.image_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)


def load_local_weights(model: nn.Module, path: str) -> None:
    """Load a local timm checkpoint (safetensors preferred) into ``model``.

    Classifier-head weights the feature-only model does not have are dropped; any other missing or
    unexpected key is an error, so a wrong file never loads half-way.
    """
    state = timm.models.load_state_dict(path)  # safetensors by extension; .pth via weights_only load
    own = model.state_dict()
    dropped = [k for k in state if k not in own and k.split(".")[0] in ("head", "fc", "classifier")]
    for k in dropped:
        state.pop(k)
    model.load_state_dict(state, strict=True)
    logger.info("loaded vision weights from %s (dropped head keys: %s)", path, dropped)


class VisionTower(nn.Module):
    """Wraps a timm model: ``forward(images) -> {"image_pooled": [B,C], "image_tokens": [B,N,C]}``.

    ``image_tokens`` are the patch tokens without prefix (CLS/register) tokens; for CNNs the final
    feature map flattened to [B, H*W, C].
    """

    def __init__(self, cfg: VisionConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.model = _create_timm(cfg)
        if load_weights and cfg.checkpoint:
            load_local_weights(self.model, cfg.checkpoint)
        self.width = self.model.num_features
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 0)

    def data_config(self) -> Dict:
        """Preprocessing (mean, std, interpolation) as timm resolves it, at the configured size."""
        dc = timm.data.resolve_data_config({}, model=self.model)
        dc["input_size"] = (3, self.cfg.image_size, self.cfg.image_size)
        dc["crop_pct"] = self.cfg.crop_pct
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dc.items()}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.model.forward_features(images)
        pooled = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:  # CNN feature map [B, C, H, W]
            tokens = feats.flatten(2).transpose(1, 2)
        else:
            tokens = feats[:, self.num_prefix_tokens :]
        return {"image_pooled": pooled, "image_tokens": tokens}
