"""xvl: multilingual vision-language pretraining.

The library is importable without the CLI, a tracker or accelerate. Typical use::

    import xvl
    model = xvl.load("runs/demo/model")
    emb = model.encode_text(**model.tokenize(["ein roter Kreis"]), normalize=True)
"""
from xvl.version import __version__

__all__ = ["__version__", "load", "XVLModel"]


def __getattr__(name):  # lazy: importing xvl must not pull torch/timm/transformers
    if name in ("load", "XVLModel"):
        from xvl.models import model as _model

        return {"load": _model.load, "XVLModel": _model.XVLModel}[name]
    raise AttributeError(name)
