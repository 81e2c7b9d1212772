"""Shared fixtures: tiny tokenizer and model configs (seconds on CPU, nothing downloaded)."""
from __future__ import annotations

import os

import pytest

SHARED_DATA = os.environ.get("XVL_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

TINY_TEXTS = [
    f"{n} {c} {s}" for n in ("one", "two", "three", "eins", "zwei", "drei", "un", "deux", "trois")
    for c in ("red", "blue", "green", "rot", "blau", "grün", "rouge", "bleu", "vert")
    for s in ("circle", "square", "Kreis", "Quadrat", "cercle", "carré")
] + ["два красных круга", "三つの赤い丸", "两个红色的圆形", "一个蓝色的正方形"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded, and CI's 2 cores are shared: intra-op threads only add
    contention (60 steps: 15 s -> 1 s). Restores the previous setting after the module. Test modules
    opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from xvl.data.tokenizer import train_tokenizer

    return train_tokenizer(TINY_TEXTS, vocab_size=300, max_length=16)


def tiny_model_config(**overrides):
    """A ~50k-parameter two-tower config (ViT 1x32 at 32 px, 1-layer 32-wide XLM-R)."""
    from xvl.config import ModelConfig, TextConfig, VisionConfig

    cfg = ModelConfig(
        vision=VisionConfig(name="vit_tiny_patch16_224", image_size=32,
                            kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}),
        text=TextConfig(model_type="xlm-roberta", max_length=16,
                        config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64}),
        embed_dim=16,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def tiny_model(tiny_tokenizer):
    import torch

    from xvl.models.model import XVLModel

    torch.manual_seed(0)
    return XVLModel(tiny_model_config(), tiny_tokenizer).eval()
