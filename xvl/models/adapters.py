"""X-Mod language-specific modules (Pfeiffer et al. 2022, "Lifting the Curse of Multilinguality by
Pre-training Modular Transformers").

Every transformer layer gets one bottleneck adapter per language; a row of the batch passes only
through its own language's module, everything else (embeddings, attention, FFN, LayerNorms) is
shared. Languages can be added after pre-training: the new module is initialised from an existing
language's module (or randomly) and trained alone while every shared weight and every other
language's module stays frozen (:func:`freeze_all_but_language`), so the existing languages'
outputs do not move at all.

Placement (X-Mod's defaults, also those of the ``transformers`` ``xmod`` port:
``adapter_reuse_layer_norm=True``, ``ln_before_adapter=True``, no extra adapter LayerNorm)::

    h = LayerNorm_ffn(x + Dropout(FFN(x)))          # the layer's FFN sublayer, unchanged (post-LN)
    out = h + Dropout(Up(act(Down(h))))[language]   # the language's adapter, residual around it

i.e. the adapter reads the FFN sublayer's *normalised* output (the layer's own, language-shared
LayerNorm is the "LayerNorm before the adapter"), the residual is taken after that LayerNorm, and
the layer's output is the un-normalised sum (the next layer's attention sublayer normalises it).
``act`` is the encoder's ``hidden_act`` (GELU for XLM-R), Down/Up have biases, ``Dropout`` is the
encoder's ``hidden_dropout_prob``. :class:`~xvl.models.text.TextTower` applies it with a forward hook
on each ``encoder.layer[i].output`` (BERT / RoBERTa / XLM-R), so the HF weights keep their names.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["BottleneckAdapter", "LanguageAdapters", "Routing", "freeze_all_but_language", "language_adapters"]


class BottleneckAdapter(nn.Module):
    """``Up(act(Down(x)))``: hidden -> bottleneck -> hidden (the residual is added by the caller)."""

    def __init__(self, hidden: int, bottleneck: int, activation: Union[str, Callable] = "gelu"):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        if isinstance(activation, str):
            from transformers.activations import ACT2FN

            activation = ACT2FN[activation]
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


@dataclass
class Routing:
    """Where the rows of a batch go: computed once per forward, shared by every layer.

    ``codes[k]`` takes ``counts[k]`` consecutive rows of ``hidden[order]``; ``inverse`` puts them
    back. ``order`` / ``inverse`` are ``None`` when the whole batch has one language.
    """

    batch: int
    codes: List[str]
    counts: List[int]
    order: Optional[torch.Tensor]
    inverse: Optional[torch.Tensor]


class LanguageAdapters(nn.Module):
    """One :class:`BottleneckAdapter` per language (an ``nn.ModuleDict`` keyed by language code).

    Args:
        hidden: the encoder width.
        bottleneck: the adapter's inner width.
        languages: the codes that get a module.
        vocab: the language vocabulary that ``lang_ids`` index into (``model.languages``); default
            ``languages``. It may hold languages without a module (routing to one is an error).
        activation: name in ``transformers.activations.ACT2FN`` or a callable.
        dropout: on the adapter's output, before the residual.
        init_std: random init (normal weights, zero biases), as HF initialises Linear layers.

    ``forward(hidden [B,...,H], lang_ids [B]) -> hidden + Dropout(adapter[lang](hidden))`` row by row;
    rows are grouped by language (one sort, one module call per language present, no loop over rows).
    """

    def __init__(self, hidden: int, bottleneck: int, languages: Sequence[str], vocab: Optional[Sequence[str]] = None,
                 activation: Union[str, Callable] = "gelu", dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        self.hidden, self.bottleneck, self.activation, self.init_std = hidden, bottleneck, activation, init_std
        self.vocab: List[str] = list(vocab if vocab is not None else languages)
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"language vocabulary has duplicates: {self.vocab}")
        missing = [c for c in languages if c not in self.vocab]
        if missing:
            raise ValueError(f"adapter languages {missing} are not in the language vocabulary {self.vocab}")
        self.adapters = nn.ModuleDict()
        for code in languages:
            self._check_code(code)
            if code in self.adapters:
                raise ValueError(f"adapter languages have duplicates: {list(languages)}")
            self.adapters[code] = self._new_module()
        self.dropout = nn.Dropout(dropout)

    # ------------------------------------------------------------------------------- modules
    @property
    def languages(self) -> List[str]:
        """The codes that have a module (insertion order)."""
        return list(self.adapters.keys())

    @staticmethod
    def _check_code(code: str) -> None:
        if not isinstance(code, str) or not code or "." in code:
            raise ValueError(f"invalid language code {code!r} (a non-empty string without '.')")

    def _new_module(self) -> BottleneckAdapter:
        m = BottleneckAdapter(self.hidden, self.bottleneck, self.activation)
        for lin in (m.down, m.up):
            nn.init.normal_(lin.weight, mean=0.0, std=self.init_std)
            nn.init.zeros_(lin.bias)
        return m

    def add_language(self, code: str, init_from: Optional[str] = None) -> List[nn.Parameter]:
        """Add ``code``'s module (a copy of ``init_from``'s, else random); returns its parameters.

        ``code`` is appended to the vocabulary if new. The new parameters are trainable even when
        ``init_from``'s were frozen, and live on ``init_from``'s (else the existing modules') device/dtype.
        """
        self._check_code(code)
        if code in self.adapters:
            raise ValueError(f"language {code!r} already has an adapter")
        if init_from is not None:
            if init_from not in self.adapters:
                raise KeyError(f"cannot initialise {code!r} from {init_from!r}: no adapter for {init_from!r} "
                               f"(adapters: {self.languages})")
            module = copy.deepcopy(self.adapters[init_from])
        else:
            module = self._new_module()
            ref = next(iter(self.adapters.parameters()), None)
            if ref is not None:
                module.to(device=ref.device, dtype=ref.dtype)
        for p in module.parameters():
            p.requires_grad_(True)
        if code not in self.vocab:
            self.vocab.append(code)
        self.adapters[code] = module
        return list(module.parameters())

    # ------------------------------------------------------------------------------- routing
    def code_for(self, lang_id: int) -> str:
        """The language code of a vocabulary id; a clear error if it is unknown or has no module."""
        if not 0 <= lang_id < len(self.vocab):
            raise ValueError(f"language id {lang_id} is outside the language vocabulary "
                             f"({len(self.vocab)} languages: {self.vocab})")
        code = self.vocab[lang_id]
        if code not in self.adapters:
            raise ValueError(f"no language adapter for {code!r} (language id {lang_id}); adapters exist for "
                             f"{self.languages}: add one with add_language({code!r}, init_from=...)")
        return code

    def route(self, lang_ids: torch.Tensor) -> Routing:
        """Group the rows of a batch by language (one host sync); validates every id present."""
        lang_ids = torch.as_tensor(lang_ids)
        if lang_ids.dim() != 1:
            raise ValueError(f"lang_ids must be [B], got shape {tuple(lang_ids.shape)}")
        if lang_ids.dtype.is_floating_point or lang_ids.dtype == torch.bool:
            raise ValueError(f"lang_ids must be integer language ids, got {lang_ids.dtype}")
        b = lang_ids.shape[0]
        if b == 0:
            return Routing(0, [], [], None, None)
        order = torch.argsort(lang_ids, stable=True)
        ids, counts = torch.unique_consecutive(lang_ids[order], return_counts=True)
        ids, counts = ids.tolist(), counts.tolist()
        codes = [self.code_for(i) for i in ids]
        if len(codes) == 1:
            return Routing(b, codes, counts, None, None)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=order.device)
        return Routing(b, codes, counts, order, inverse)

    def forward(self, hidden: torch.Tensor, lang_ids: Optional[torch.Tensor] = None,
                routing: Optional[Routing] = None) -> torch.Tensor:
        if routing is None:
            if lang_ids is None:
                raise ValueError("LanguageAdapters needs lang_ids (or a precomputed routing)")
            routing = self.route(torch.as_tensor(lang_ids, device=hidden.device))
        if hidden.shape[0] != routing.batch:
            raise ValueError(f"hidden has {hidden.shape[0]} rows but {routing.batch} language ids")
        if routing.batch == 0:
            return hidden
        if routing.order is None:
            delta = self.adapters[routing.codes[0]](hidden)
        else:
            chunks = torch.split(hidden[routing.order], routing.counts, dim=0)
            delta = torch.cat([self.adapters[c](x) for c, x in zip(routing.codes, chunks)], dim=0)[routing.inverse]
        out = hidden + self.dropout(delta)
        if self.training and torch.is_grad_enabled():
            # modules of languages absent from this batch: keep their trainable parameters in the graph
            # with an exact zero (DDP with find_unused_parameters=False, as elsewhere in xvl); frozen
            # parameters stay out of it, so they receive no gradient at all
            idle = [p for c, m in self.adapters.items() if c not in routing.codes
                    for p in m.parameters() if p.requires_grad]
            if idle:
                out = out + 0.0 * sum(p.sum() for p in idle).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, bottleneck={self.bottleneck}, languages={self.languages}"


def language_adapters(model: nn.Module) -> List[LanguageAdapters]:
    """Every :class:`LanguageAdapters` in ``model`` (one per layer for a text tower)."""
    return [m for m in model.modules() if isinstance(m, LanguageAdapters)]


def freeze_all_but_language(model: nn.Module, code: str) -> List[nn.Parameter]:
    """X-Mod's post-hoc language addition: only ``code``'s adapter parameters stay trainable.

    Sets ``requires_grad=False`` on every parameter of ``model`` (shared weights, other languages'
    modules, the vision tower, projections, temperature) and ``True`` on ``code``'s module in every
    layer; returns those parameters (give them, or all parameters, to the optimizer: frozen ones get
    no gradient, so AdamW leaves them untouched, weight decay included).
    """
    adapters = language_adapters(model)
    if not adapters:
        raise ValueError(f"{type(model).__name__} has no language adapters (text.adapters.enabled is off)")
    lacking = [i for i, a in enumerate(adapters) if code not in a.adapters]
    if lacking:
        raise ValueError(f"no language adapter for {code!r} in {len(lacking)} of {len(adapters)} layers "
                         f"(adapters exist for {adapters[lacking[0]].languages}); add it with add_language first")
    for p in model.parameters():
        p.requires_grad_(False)
    params: List[nn.Parameter] = []
    for a in adapters:
        for p in a.adapters[code].parameters():
            p.requires_grad_(True)
            params.append(p)
    return params
