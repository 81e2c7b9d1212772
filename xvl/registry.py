"""Name -> class registries so configs can pick components by string.

Adding a component is one file plus a decorator line::

    @OBJECTIVES.register("itc")
    class ImageTextContrastive(Objective): ...

Registration happens on import; ``ensure_builtin`` imports the built-in modules so that looking a
name up never depends on import order.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A config names a component that is not registered (the message suggests the closest)."""


class Registry(Generic[T]):
    """A named mapping from string keys to classes or factories."""

    def __init__(self, kind: str, builtin_modules: tuple = ()):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._builtin_modules = builtin_modules
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def ensure_builtin(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._builtin_modules:
                importlib.import_module(mod)

    def get(self, name: str) -> T:
        self.ensure_builtin()
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._items))})")
        return self._items[name]

    def names(self) -> list:
        self.ensure_builtin()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.ensure_builtin()
        return name in self._items


OBJECTIVES: Registry = Registry("objective", (
    "xvl.objectives.contrastive",  # itc (and ttc / sentence contrastive via its views)
    "xvl.objectives.xtr",  # EMS cross-lingual token reconstruction
    "xvl.objectives.mlm",  # mlm / tlm
    "xvl.objectives.xlco",  # InfoXLM momentum contrast
    "xvl.objectives.token_contrastive",  # VECO 2.0 token-to-token alignment
    "xvl.objectives.matching",  # CCLM itm / ttm (fusion-encoder matching with in-batch hard negatives)
    "xvl.objectives.conditional_mlm",  # CCLM conditional MLM (cmlm), through the fusion encoder
    "xvl.objectives.vtlm",  # UC2 visual translation LM with co-masking of aligned words
    "xvl.objectives.rc3",  # RC3 regularized contrastive (strict vs weakly aligned caption pairs)
    "xvl.objectives.mrtm",  # UC2 masked region-to-token modelling on patch blocks
    "xvl.objectives.vqa",  # answer classification for VQA batches mixed into pre-training
))
POOLERS: Registry = Registry("pooler", ("xvl.models.text",))
