"""InfoXLM cross-lingual contrast (XLCo), MoCo-style: momentum key encoder + FIFO queue.

For a translation pair (s = ``input_ids``, t = ``pair_input_ids``):

- query  q  = pooled (``[CLS]`` or mean) hidden state of s at layer ``layer`` of the *online* text
  tower (read from the model outputs' ``text_hidden_states``), L2-normalized;
- key    k+ = the same representation of t from a *momentum* copy of the text tower
  (``copy.deepcopy(model.text)`` at construction, no gradient, EMA-updated in :meth:`after_step`);
- negatives: a FIFO queue of past keys, gathered across processes (every rank holds the same queue);
- loss = cross-entropy over ``[q.k+, q.queue] / temperature`` with the positive at index 0.

No projection head (InfoXLM uses none at this layer). InfoXLM's reference settings are layer 8,
temperature 0.25 (``--xlco_softmax_tau``), queue 131072 and momentum 0.9999; the defaults here
(last layer, 0.25, 4096, 0.999) suit smaller runs.

Design choices:

- ``symmetric`` (default) also contrasts t -> s (query from ``pair_hidden_states``, keys of s from
  the momentum encoder); each direction has its *own* queue (``queue[0]`` holds keys of t for the
  s -> t direction, ``queue[1]`` keys of s), so a query's negatives are always in the same language
  family as its positive and "pick the other language" is no shortcut. The loss is the mean of
  the directions. Both queues advance together (one pointer).
- The key encoder runs in eval mode (dropout off) by default: deterministic keys, and the
  queue's keys are targets, not augmentations. ``key_encoder_train_mode=True`` restores the
  MoCo / InfoXLM behaviour (key encoder in train mode); the objective's ``train()`` enforces it.
- The loss is active only once the queue is full (``queue_filled >= queue_size``). Before that it
  is ``0 * q.sum()`` (has a grad_fn, so backward and DDP work) and ``xlco_active`` is 0.
- Keys of the current batch are enqueued after the loss is computed, and only in training mode
  (an eval-mode forward leaves the state alone). Enqueueing writes at ``(ptr + i) % queue_size``,
  so any global batch size works (not only divisors of ``queue_size``); a global batch larger
  than the queue keeps its newest ``queue_size`` keys.
- State: the momentum tower's parameters and the ``queue`` / ``queue_ptr`` / ``queue_filled``
  buffers are in this module's ``state_dict``, hence in training checkpoints (and restored on
  resume with ``strict=True``).
- When ``layer`` is not the last one, ``0 * text_tokens.sum()`` is added so every text-tower
  parameter is in the graph (DDP with ``find_unused_parameters=False``), as InfoXLM does.

Under DDP the queue is a buffer: with ``broadcast_buffers=True`` (DDP's default) it is broadcast
from rank 0 every forward. That is correct (queues are identical on all ranks) but costs
``2 * queue_size * hidden * 4`` bytes per step; pass ``broadcast_buffers=False`` for big queues.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xvl.distributed import all_gather_no_grad
from xvl.models.text import cls_pool, mean_pool
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES

_POOLS = {"cls": cls_pool, "mean": mean_pool}


def xlco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float):
    """MoCo InfoNCE: rows of ``q`` [B,D] vs their positive ``k`` [B,D] and the shared ``queue`` [Q,D].

    Returns ``(loss, acc)``: mean cross-entropy with the positive at index 0 of
    ``[q.k, q.queue] / temperature``, and the top-1 rate of the positive.
    """
    l_pos = (q * k).sum(-1, keepdim=True)
    l_neg = q @ queue.t()
    logits = torch.cat([l_pos, l_neg], 1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == 0).float().mean()


@OBJECTIVES.register("xlco")
class XLCoObjective(Objective):
    """Cross-lingual contrast against a momentum encoder's keys and a queue (InfoXLM XLCo)."""

    name = "xlco"

    @dataclass
    class Args:
        # hidden_states index: 0 = embeddings, k = layer k, -1 = last (InfoXLM: 8 of 12)
        layer: int = -1
        pooling: Literal["cls", "mean"] = "cls"
        queue_size: int = 4096  # InfoXLM: 131072
        temperature: float = 0.25  # InfoXLM --xlco_softmax_tau 0.25
        momentum: float = 0.999  # InfoXLM: 0.9999
        symmetric: bool = True
        key_encoder_train_mode: bool = False

    def __init__(self, args: "XLCoObjective.Args", model=None):
        super().__init__(args, model)
        if args.queue_size < 1:
            raise ValueError(f"objectives.xlco.args.queue_size must be >= 1, got {args.queue_size}")
        if not args.temperature > 0:
            raise ValueError(f"objectives.xlco.args.temperature must be > 0, got {args.temperature}")
        if not 0.0 <= args.momentum <= 1.0:
            raise ValueError(f"objectives.xlco.args.momentum must be in [0, 1], got {args.momentum}")
        self.pool = _POOLS[args.pooling]
        self.momentum_text: Optional[nn.Module] = None
        if model is None:  # config validation only: nothing model-dependent is built
            return
        n_layers = model.text.model.config.num_hidden_layers
        if not -(n_layers + 1) <= args.layer <= n_layers:
            raise ValueError(f"objectives.xlco.args.layer={args.layer} is out of range for a text tower "
                             f"with {n_layers} layers (0 = embeddings, {n_layers} or -1 = last)")
        self.momentum_text = copy.deepcopy(model.text)
        for p in self.momentum_text.parameters():
            p.requires_grad_(False)
            p.grad = None
        dim, n_dirs = model.text.width, 2 if args.symmetric else 1
        ref = next(model.text.parameters())
        self.register_buffer("queue", torch.zeros(n_dirs, args.queue_size, dim, device=ref.device))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=ref.device))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long, device=ref.device))
        self.train(self.training)

    # ------------------------------------------------------------------------------ helpers
    def train(self, mode: bool = True):
        super().train(mode)
        if self.momentum_text is not None and not self.args.key_encoder_train_mode:
            self.momentum_text.eval()
        return self

    def _check_ready(self) -> None:
        if self.momentum_text is None:
            raise RuntimeError("xlco was built without a model: construct it with model=... "
                               "(build_objectives(specs, model=model)) to get its momentum encoder")

    def _represent(self, hidden_states, attention_mask: torch.Tensor) -> torch.Tensor:
        h = hidden_states[self.args.layer]
        return F.normalize(self.pool(h, attention_mask).float(), dim=-1)

    @torch.no_grad()
    def encode_keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    lang: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalized keys [B,H] from the momentum encoder (no gradient)."""
        self._check_ready()
        out = self.momentum_text(input_ids, attention_mask, lang=lang)
        return self._represent(out["text_hidden_states"], attention_mask).detach()

    @property
    def is_active(self) -> bool:
        return self.momentum_text is not None and int(self.queue_filled) >= self.args.queue_size

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Push ``keys`` [n_dirs, n, H] (already gathered) FIFO: the newest replace the oldest."""
        self._check_ready()
        if keys.ndim != 3 or keys.shape[0] != self.queue.shape[0] or keys.shape[2] != self.queue.shape[2]:
            raise ValueError(f"keys must be [{self.queue.shape[0]}, n, {self.queue.shape[2]}], got {tuple(keys.shape)}")
        size, n = self.args.queue_size, keys.shape[1]
        if n == 0:
            return
        m = min(n, size)  # more keys than slots: only the newest `size` survive
        ptr = int(self.queue_ptr)
        idx = (ptr + (n - m) + torch.arange(m, device=self.queue.device)) % size
        self.queue[:, idx] = keys[:, n - m:].to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)
        self.queue_filled.fill_(min(size, int(self.queue_filled) + n))

    # ------------------------------------------------------------------------------ objective
    def forward(self, outputs: Dict[str, torch.Tensor], batch: Dict) -> Dict[str, torch.Tensor]:
        self._check_ready()
        a = self.args
        queries = [self._represent(outputs["text_hidden_states"], batch["attention_mask"])]
        keys = [self.encode_keys(batch["pair_input_ids"], batch["pair_attention_mask"], batch.get("pair_lang"))]
        if a.symmetric:
            queries.append(self._represent(outputs["pair_hidden_states"], batch["pair_attention_mask"]))
            keys.append(self.encode_keys(batch["input_ids"], batch["attention_mask"], batch.get("lang")))

        active = self.is_active
        if active:
            # clone: the queue is overwritten in place below, and autograd saved it for q's gradient
            queue = self.queue.clone()
            parts = [xlco_infonce(q, k, queue[i], a.temperature) for i, (q, k) in enumerate(zip(queries, keys))]
            loss = sum(p[0] for p in parts) / len(parts)
            acc = sum(p[1] for p in parts) / len(parts)
        else:
            loss = 0.0 * sum(q.sum() for q in queries)
            acc = torch.zeros((), device=loss.device)
        if a.layer not in (-1, len(outputs["text_hidden_states"]) - 1):
            # keep every text-tower parameter in the graph (DDP find_unused_parameters=False)
            loss = loss + 0.0 * outputs["text_tokens"].sum()
            if a.symmetric:
                loss = loss + 0.0 * outputs["pair_tokens"].sum()

        if self.training:
            self.enqueue(torch.stack([all_gather_no_grad(k) for k in keys]))
        dev = loss.device
        return {
            f"{self.name}_loss": loss,
            f"{self.name}_acc": acc.detach(),
            f"{self.name}_active": torch.tensor(1.0 if active else 0.0, device=dev),
            f"{self.name}_queue_fill": torch.tensor(int(self.queue_filled) / a.queue_size, device=dev),
        }

    @torch.no_grad()
    def after_step(self, model) -> None:
        """EMA: theta_k = m * theta_k + (1 - m) * theta_q for the text tower (buffers copied)."""
        if self.momentum_text is None:
            return
        online = getattr(model, "text", model)
        m = self.args.momentum
        for (nk, pk), (nq, pq) in zip(self.momentum_text.named_parameters(), online.named_parameters(), strict=True):
            if nk != nq or pk.shape != pq.shape:
                raise RuntimeError(f"xlco momentum encoder does not match the online text tower: {nk} vs {nq}")
            pk.copy_(pk * m + pq.detach() * (1.0 - m))
        for bk, bq in zip(self.momentum_text.buffers(), online.buffers(), strict=True):
            bk.copy_(bq)
