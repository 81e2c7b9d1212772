"""Atomic, pickle-free training checkpoints.

A checkpoint directory ``checkpoint-<step>/`` holds

- ``model.safetensors``       model weights (and objective buffers such as queues, prefixed),
- ``optimizer.safetensors``   optimizer tensors, with ``optimizer.json`` for its scalar state,
- ``trainer_state.json``      step, samples seen, skip counts, the config hash.

It is written to a temporary directory and renamed into place, then ``latest`` (a one-line file)
is replaced atomically; a run killed at any moment leaves the previous checkpoint intact and
``latest`` pointing at a complete one. Randomness needs no saved RNG state: the data order is
seeded per epoch, sample randomness per (seed, epoch, index) and the model's (dropout) per step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from xvl.atomic import atomic_directory, atomic_write_text

LATEST = "latest"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _optimizer_to_flat(opt_state: dict):
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, dict] = {}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: Dict[str, torch.Tensor], meta: dict) -> dict:
    state: Dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str, step: int, model_state: Dict[str, torch.Tensor], optimizer,
                    trainer_state: dict, keep: int = 2) -> str:
    """Write ``run_dir/checkpoint-<step>`` atomically and prune to the newest ``keep``."""
    final = os.path.join(run_dir, f"checkpoint-{step:08d}")
    with atomic_directory(final, prefix=".tmp-ckpt-") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()},
                  os.path.join(tmp, "model.safetensors"))
        tensors, meta = _optimizer_to_flat(optimizer.state_dict())
        save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
        with open(os.path.join(tmp, "optimizer.json"), "w") as f:
            json.dump(meta, f)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(trainer_state, f, indent=2)
    atomic_write_text(os.path.join(run_dir, LATEST), os.path.basename(final) + "\n")
    _prune(run_dir, keep)
    return final


def _prune(run_dir: str, keep: int) -> None:
    ckpts = sorted(d for d in os.listdir(run_dir) if _CKPT_RE.match(d))
    for d in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(os.path.join(run_dir, d), ignore_errors=True)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint ``latest`` points at, or the newest complete one; None when there is none."""
    pointer = os.path.join(run_dir, LATEST)
    if os.path.exists(pointer):
        with open(pointer) as f:
            path = os.path.join(run_dir, f.read().strip())
        if os.path.exists(os.path.join(path, "trainer_state.json")):
            return path
    if not os.path.isdir(run_dir):
        return None
    done = sorted(d for d in os.listdir(run_dir)
                  if _CKPT_RE.match(d) and os.path.exists(os.path.join(run_dir, d, "trainer_state.json")))
    return os.path.join(run_dir, done[-1]) if done else None


def load_checkpoint(path: str, optimizer=None) -> tuple:
    """Returns ``(model_state, trainer_state)`` and restores ``optimizer`` in place when given."""
    model_state = load_file(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "trainer_state.json")) as f:
        trainer_state = json.load(f)
    if optimizer is not None:
        with open(os.path.join(path, "optimizer.json")) as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(path, "optimizer.safetensors"))
        optimizer.load_state_dict(_optimizer_from_flat(tensors, meta))
    return model_state, trainer_state
