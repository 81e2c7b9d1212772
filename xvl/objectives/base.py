"""The objective interface and the weighted composite the trainer calls.

An objective is an ``nn.Module``: ``forward(outputs, batch) -> dict`` where ``outputs`` is the
model's feature dict and ``batch`` the collated batch. Every key ending in ``_loss`` is a scalar
loss; other keys are detached metrics for logging. Options are a typed dataclass (``Args``) built
from the config's ``args`` mapping, so a typo there is an error before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from xvl.configlib import from_dict
from xvl.registry import OBJECTIVES


class Objective(nn.Module):
    """Base class: subclasses set ``name``, define a nested ``Args`` dataclass and ``forward``."""

    name: str = "objective"
    #: batch keys the objective reads; the composite skips it on batches without them (in a run
    #: that mixes image-caption and parallel-text steps, image-text objectives skip text batches)
    requires: tuple = ()
    #: the data it needs from the caption dataset: a second caption per image / the labelled boxes
    needs_pairs: bool = False
    needs_objects: bool = False
    #: the batch keys' prefix its input preparer writes (two objectives with the same one clash);
    #: None: the objective's name
    prepares: Optional[str] = None

    @dataclass
    class Args:
        pass

    def __init__(self, args: "Objective.Args", model=None):
        super().__init__()
        self.args = args
        # a plain reference, not a submodule: the model's parameters stay the model's (one copy in
        # the state dict and the optimizer); objectives that run the fusion encoder or the text tower
        # on their own inputs reach it through ``self.xvl_model``
        self._model_ref = [model] if model is not None else []

    @property
    def xvl_model(self):
        if not self._model_ref:
            raise ValueError(f"objective {self.name} needs the model (build it with model=...)")
        return self._model_ref[0]

    def applies(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> bool:
        """Whether this objective has what it needs in ``batch`` (default: every key in ``requires``)."""
        return all(k in batch for k in self.requires)

    def forward(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def input_preparer(self):
        """A picklable ``fn(batch, tokenizer, generator)`` that adds what this objective needs to a
        collated batch (masked inputs, ...), run in the data loader; None when nothing is needed."""
        return None

    @torch.no_grad()
    def after_step(self, model) -> None:
        """Called after every optimizer step with the (unwrapped) model: momentum encoders update
        here (InfoXLM's EMA key encoder). Default: nothing."""


def parse_objective_args(name: str, args: dict):
    """The objective class for ``name`` and its typed ``Args`` (unknown name or arg: an error)."""
    cls = OBJECTIVES.get(name)
    return cls, from_dict(cls.Args, dict(args), prefix=f"objectives.{name}.args")


def build_objective(name: str, args: dict, model=None) -> Objective:
    cls, parsed = parse_objective_args(name, args)
    return cls(parsed, model=model)


class CompositeObjective(nn.Module):
    """Weighted sum of objectives: ``loss = sum_i w_i * <name_i>_loss``; all parts are logged."""

    def __init__(self, objectives: List[Objective], weights: List[float]):
        super().__init__()
        self.parts = nn.ModuleList(objectives)
        self.weights = list(weights)

    def forward(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> Dict[str, torch.Tensor]:
        result: Dict[str, torch.Tensor] = {}
        total = None
        for obj, w in zip(self.parts, self.weights):
            if not obj.applies(outputs, batch):
                continue
            part = obj(outputs, batch)
            for k, v in part.items():
                if k.endswith("_loss"):
                    total = w * v if total is None else total + w * v
                    result[k] = v.detach()
                else:
                    result[k] = v.detach() if torch.is_tensor(v) else v
        if total is None:
            raise ValueError(f"no objective applies to this batch (keys {sorted(batch)}); objectives: "
                             f"{[o.name for o in self.parts]}")
        result["loss"] = total
        return result

    def after_step(self, model) -> None:
        for obj in self.parts:
            obj.after_step(model)


def build_objectives(specs, model=None) -> CompositeObjective:
    """From config ``objectives: [{name, weight, args}]``; unknown names/args fail here, up front."""
    objs = [build_objective(s.name, s.args, model=model) for s in specs]
    return CompositeObjective(objs, [s.weight for s in specs])
