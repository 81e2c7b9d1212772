"""Masked region-to-token modelling (UC2's MRTM), adapted to patch encoders.

UC2 masks detector regions of the image and predicts, for each masked region, the region's object
label as a token of the caption's language (the caption is visible), so the image side learns to
ground visual content in words of every pretraining language.

Here the image tower is a ViT on patches, not a region detector, so:

* **What is masked.** The data-loader preparer (:class:`MRTMInputs`) draws square, grid-aligned
  blocks of ``block_size x block_size`` patches, about ``mask_ratio`` of the grid
  (:func:`xvl.data.masking.mask_patch_blocks`). Masked patches have their patch *embedding*
  replaced by a learned mask token (owned by this objective) before the position embeddings and the
  transformer blocks (:func:`encode_masked_image`, BEiT/SimMIM-style), so the rest of the image is
  seen and the masked content is not.
* **What is predicted.** A masked patch lies *under* a labelled object box when the patch centre is
  inside the box (normalized ``[x0, y0, x1, y1]``, ``x0 <= cx < x1``, ``y0 <= cy < y1``); when
  several boxes contain it, the smallest box wins (it is most likely in front). Its target is the
  object's label in the row's caption language (``batch["objects"][i][k]["labels"][lang]``; falls
  back to ``Args.fallback_language``, "en", when the caption language has no label; an object with
  neither is unused, as if it were not there). The label is tokenized with the model's tokenizer and
  **its first word-piece** is the target (UC2 predicts one label token per region; a bare
  word-boundary piece ``"▁"`` and special / unknown tokens are skipped, so "圆形" -> "圆" rather
  than "▁"). Masked patches under no box, and unmasked patches, are ignored (``-100``).
* **How it is predicted (deviation).** UC2 reads the masked region's output state of its
  single-stream transformer, where regions attend to the caption. Our fusion encoder only has text
  as the query side, so running it would give per-*token* states, not per-patch ones. Instead each
  masked-image patch state is projected to the text width by ``model.fusion.image_proj`` (shared
  with the fusion encoder's image context), then passes one objective-owned cross-attention block
  (:class:`PatchTextCrossAttention`: patch queries attend to the caption's ``text_tokens``, then a
  feed-forward sublayer; post-LN residuals), and is decoded with ``model.fusion_mlm_head`` (the
  vocabulary decoder tied to the text tower's input embeddings, shared with conditional MLM / VTLM).
* **Sets without boxes.** ``Args.pseudo_labeller`` names a Python callable ``"module:function"``
  mapping the collated, normalized image batch ``[B, 3, H, W]`` to a per-image list of objects
  (``{"box": [x0, y0, x1, y1] normalized, "labels": {lang: text}}``) — e.g. a wrapper around a
  detector whose class names are translated with a label lexicon. It is called in the data loader
  when a batch has no ``objects`` or no box at all. Without one, such batches skip MRTM
  (:meth:`MaskedRegionToTokenModeling.applies` is False) and the objective logs one warning. An
  image without boxes inside a batch that has some is simply a row of ``-100`` targets.

Loss: mean cross-entropy over the masked patches that have a target. Outputs ``mrtm_loss``,
``mrtm_acc`` (top-1 over those patches) and ``mrtm_patches`` (how many there were). A batch with
none gives a zero loss that still has a ``grad_fn`` through every parameter involved.

Cost: one extra image-tower forward per step (the masked image; the contrastive objectives keep
using the unmasked ``image_tokens``), as UC2 also encodes the masked input separately.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from xvl.data.masking import IGNORE_INDEX, mask_patch_blocks
from xvl.objectives.base import Objective
from xvl.registry import OBJECTIVES

logger = logging.getLogger(__name__)

_WORD_BOUNDARY = "\u2581"  # SentencePiece / Metaspace "▁"


# ------------------------------------------------------------------------------ vision side
def _timm_vit(vision_tower) -> nn.Module:
    """The timm ViT inside ``vision_tower`` (an :class:`~xvl.models.vision.VisionTower` or the timm
    model itself); a clear error for backbones whose patch embeddings cannot be masked."""
    from timm.models.vision_transformer import VisionTransformer

    vit = getattr(vision_tower, "model", vision_tower)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(
            f"mrtm masks ViT patch embeddings, but the vision tower is a {type(vit).__name__}, not a "
            "timm VisionTransformer (CNN feature maps have no patch tokens to replace by a mask "
            "token); use a ViT vision model or drop the mrtm objective")
    return vit


def vit_grid_size(vision_tower) -> Tuple[int, int]:
    """The ``(rows, cols)`` patch grid of a timm ViT at its configured image size."""
    vit = _timm_vit(vision_tower)
    grid = getattr(vit.patch_embed, "grid_size", None)
    if grid is None:
        raise ValueError("mrtm: the ViT's patch_embed has no grid_size (built without a fixed image size)")
    return int(grid[0]), int(grid[1])


def encode_masked_image(vision_tower, images: torch.Tensor, patch_mask: torch.Tensor,
                        mask_token: torch.Tensor) -> torch.Tensor:
    """Patch tokens ``[B, N, C]`` of a timm ViT whose masked patches were replaced by ``mask_token``.

    Follows timm 1.0's ``VisionTransformer.forward_features`` step by step (patch_embed ->
    [mask] -> _pos_embed -> patch_drop -> norm_pre -> blocks -> norm) and, like
    :class:`~xvl.models.vision.VisionTower`, drops the prefix (class / register) tokens, so with an
    all-False mask the result equals the tower's ``image_tokens``.

    Args:
        vision_tower: a :class:`~xvl.models.vision.VisionTower` or a timm ``VisionTransformer``.
        images: ``[B, 3, H, W]`` normalized pixels.
        patch_mask: ``[B, N]`` bool, True = replace that patch's embedding; N in row-major order.
        mask_token: ``[C]`` (or any shape with C elements), the learned mask embedding.
    """
    vit = _timm_vit(vision_tower)
    x = vit.patch_embed(images)  # [B, N, C], or [B, H, W, C] with dynamic_img_size
    n = x.shape[1] * x.shape[2] if x.ndim == 4 else x.shape[1]
    if tuple(patch_mask.shape) != (x.shape[0], n):
        raise ValueError(f"patch_mask has shape {tuple(patch_mask.shape)}, but the images give "
                         f"{x.shape[0]} x {n} patches")
    # masked before the position embeddings (BEiT / SimMIM): the model still knows *where* the
    # hidden patch is, only not what it shows
    m = patch_mask.to(device=x.device, dtype=torch.bool).view(x.shape[:-1]).unsqueeze(-1)
    x = torch.where(m, mask_token.reshape(-1).to(x.dtype), x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    if getattr(vit, "grad_checkpointing", False) and not torch.jit.is_scripting():
        from timm.models._manipulate import checkpoint_seq

        x = checkpoint_seq(vit.blocks, x)
    else:
        x = vit.blocks(x)
    x = vit.norm(x)
    return x[:, vit.num_prefix_tokens:]


class PatchTextCrossAttention(nn.Module):
    """Patch states attend to the caption's token states, then a feed-forward sublayer (post-LN
    residual blocks, as :class:`xvl.models.fusion.FusionLayer` without its self-attention)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(width, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ffn_norm = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, patches: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """``patches`` [B,N,H], ``text`` [B,L,H], ``text_mask`` [B,L] (1 = real token) -> [B,N,H]."""
        h, _ = self.attn(patches, text, text, key_padding_mask=text_mask == 0, need_weights=False)
        x = self.attn_norm(patches + self.dropout(h))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


# ------------------------------------------------------------------------------- targets
def patch_centres(grid_size: Tuple[int, int]) -> torch.Tensor:
    """``[N, 2]`` normalized ``(x, y)`` centres of the patches of a ``(rows, cols)`` grid, row-major."""
    gh, gw = grid_size
    ys = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh
    xs = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw
    return torch.stack([xs.repeat(gh), ys.repeat_interleave(gw)], dim=1)


def assign_patches_to_boxes(boxes: Sequence[Sequence[float]], grid_size: Tuple[int, int]) -> torch.Tensor:
    """For each patch, the index of the smallest box containing its centre, else -1 (``[N]`` long).

    Boxes are ``[x0, y0, x1, y1]`` normalized to [0, 1]; a centre is inside when
    ``x0 <= cx < x1`` and ``y0 <= cy < y1``. Ties in area go to the earlier box.
    """
    centres = patch_centres(grid_size)
    n = centres.shape[0]
    if len(boxes) == 0:
        return torch.full((n,), -1, dtype=torch.long)
    b = torch.tensor([[float(v) for v in box] for box in boxes], dtype=torch.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [x0, y0, x1, y1] each, got shape {tuple(b.shape)}")
    cx, cy = centres[:, 0:1], centres[:, 1:2]  # [N, 1]
    inside = (cx >= b[:, 0]) & (cx < b[:, 2]) & (cy >= b[:, 1]) & (cy < b[:, 3])  # [N, K]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    cost = torch.where(inside, area.expand_as(inside), torch.full_like(inside, float("inf"), dtype=torch.float64))
    best = cost.argmin(dim=1)  # first minimum: ties go to the earlier box
    return torch.where(inside.any(dim=1), best, torch.full_like(best, -1))


def label_text(labels: Dict[str, str], lang: str, fallback: Optional[str] = "en") -> Optional[str]:
    """The label in ``lang``, else in ``fallback``, else None (an empty string counts as absent)."""
    for code in (lang, fallback):
        if code is not None and (labels or {}).get(code):
            return str(labels[code])
    return None


def first_label_token(text: str, tokenizer) -> Optional[int]:
    """The first word-piece id of ``text`` (no special tokens added) that carries content: a bare
    word-boundary piece (``"▁"``, emitted before scripts written without spaces) and special /
    unknown tokens are skipped. None when nothing is left."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in ids:
        if i in specials:
            continue
        piece = tokenizer.convert_ids_to_tokens(int(i))
        if piece is None or not piece.replace(_WORD_BOUNDARY, "").strip():
            continue
        return int(i)
    return None


def build_patch_targets(objects: List[List[dict]], langs: Sequence[str], grid_size: Tuple[int, int],
                        tokenizer, fallback_language: Optional[str] = "en",
                        cache: Optional[Dict[str, Optional[int]]] = None) -> torch.Tensor:
    """``[B, N]`` long: the label token of the object under each patch in row ``i``'s caption
    language ``langs[i]`` (see :func:`assign_patches_to_boxes`, :func:`label_text`,
    :func:`first_label_token`), ``-100`` for patches under no usable object.

    ``cache`` (text -> token id) avoids re-tokenizing the same labels batch after batch.
    """
    if len(objects) != len(langs):
        raise ValueError(f"{len(objects)} object lists for {len(langs)} captions")
    cache = {} if cache is None else cache
    n = int(grid_size[0]) * int(grid_size[1])
    out = torch.full((len(objects), n), IGNORE_INDEX, dtype=torch.long)
    for row, (objs, lang) in enumerate(zip(objects, langs)):
        boxes, tokens = [], []
        for o in objs or []:
            text = label_text(o.get("labels") or {}, lang, fallback_language)
            if text is None:
                continue  # no label in this language or the fallback: the object is unused
            if text not in cache:
                cache[text] = first_label_token(text, tokenizer)
            if cache[text] is None:
                continue
            boxes.append(o["box"])
            tokens.append(cache[text])
        owner = assign_patches_to_boxes(boxes, grid_size)
        hit = owner >= 0
        if hit.any():
            out[row, hit] = torch.tensor(tokens, dtype=torch.long)[owner[hit]]
    return out


def has_boxes(objects) -> bool:
    """Whether a batch's ``objects`` (a per-row list) holds at least one box."""
    return objects is not None and any(len(o or []) for o in objects)


def resolve_callable(spec: str) -> Callable:
    """Import ``"package.module:function"`` (a dotted attribute path after the colon is allowed)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"pseudo_labeller must be 'module:function', got {spec!r}")
    module, attr = spec.split(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"pseudo_labeller {spec!r}: cannot import module {module!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"pseudo_labeller {spec!r}: {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"pseudo_labeller {spec!r} is not callable")
    return obj


def check_objects(objects, batch_size: int, source: str) -> List[List[dict]]:
    """Validate a per-row object list (what a pseudo-labeller returns)."""
    if not isinstance(objects, (list, tuple)) or len(objects) != batch_size:
        raise ValueError(f"{source} must return a list of {batch_size} object lists (one per image), "
                         f"got {type(objects).__name__} of length {len(objects) if hasattr(objects, '__len__') else '?'}")
    out = []
    for i, objs in enumerate(objects):
        row = []
        for o in objs or []:
            if not isinstance(o, dict) or len(o.get("box", ())) != 4 or not isinstance(o.get("labels"), dict):
                raise ValueError(f"{source}: image {i}: each object needs 'box' [x0, y0, x1, y1] and "
                                 f"'labels' {{lang: text}}, got {o!r}")
            row.append({"box": [float(v) for v in o["box"]], "labels": dict(o["labels"])})
        out.append(row)
    return out


class MRTMInputs:
    """The data-loader preparer: ``fn(batch, tokenizer, generator) -> batch`` (picklable).

    Adds ``mrtm_patch_mask`` [B, N] bool and ``mrtm_targets`` [B, N] long (label token ids at
    masked patches under a labelled box, ``-100`` elsewhere) when the batch has boxes (or the
    pseudo-labeller gives some); otherwise leaves the batch as it is (MRTM then skips it).
    """

    def __init__(self, grid_size: Tuple[int, int], languages: Sequence[str], mask_ratio: float = 0.3,
                 block_size: int = 2, fallback_language: Optional[str] = "en",
                 pseudo_labeller: Optional[str] = None):
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.languages = list(languages)
        self.mask_ratio, self.block_size = mask_ratio, block_size
        self.fallback_language = fallback_language
        self.pseudo_labeller = pseudo_labeller  # resolved lazily in each worker (stays picklable)
        self._labeller = None
        self._cache: Dict[str, Optional[int]] = {}
        self._cache_owner: Optional[int] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_labeller"] = None
        return state

    def __call__(self, batch: Dict, tokenizer, generator: Optional[torch.Generator] = None) -> Dict:
        if "image" not in batch:  # a text-only batch of a mixed run: nothing to mask
            return batch
        objects = batch.get("objects")
        if not has_boxes(objects) and self.pseudo_labeller is not None:
            if self._labeller is None:
                self._labeller = resolve_callable(self.pseudo_labeller)
            objects = check_objects(self._labeller(batch["image"]), batch["image"].shape[0],
                                    f"pseudo_labeller {self.pseudo_labeller!r}")
            batch["objects"] = objects
        if not has_boxes(objects):
            return batch
        if "lang" not in batch:
            raise KeyError("mrtm needs batch['lang'] (the caption language picks the label language)")
        langs = [self.languages[int(i)] for i in torch.as_tensor(batch["lang"]).tolist()]
        if id(tokenizer) != self._cache_owner:  # label -> token cache is per tokenizer
            self._cache, self._cache_owner = {}, id(tokenizer)
        targets = build_patch_targets(objects, langs, self.grid_size, tokenizer,
                                      self.fallback_language, cache=self._cache)
        mask = mask_patch_blocks(len(langs), self.grid_size, self.mask_ratio, self.block_size,
                                 generator=generator).cpu()
        targets[~mask] = IGNORE_INDEX
        batch["mrtm_patch_mask"], batch["mrtm_targets"] = mask, targets
        return batch


# ------------------------------------------------------------------------------- objective
@OBJECTIVES.register("mrtm")
class MaskedRegionToTokenModeling(Objective):
    """UC2's masked region-to-token modelling on ViT patch blocks (see the module docstring)."""

    name = "mrtm"
    requires = ("image", "input_ids")
    needs_objects = True

    @dataclass
    class Args:
        mask_ratio: float = 0.3  # fraction of the patch grid masked (in whole blocks)
        block_size: int = 2  # blocks of block_size x block_size patches
        fallback_language: Optional[str] = "en"  # label language when the caption's has none
        # "module:function": images [B,3,H,W] -> per-image [{"box", "labels"}] for sets without
        # boxes; None: such batches skip MRTM (one logged warning)
        pseudo_labeller: Optional[str] = None
        heads: int = 0  # heads of the patch->caption cross-attention (0: model.fusion.heads)
        dropout: float = 0.0

    def __init__(self, args: "MaskedRegionToTokenModeling.Args", model=None):
        super().__init__(args, model)
        if not 0.0 < args.mask_ratio < 1.0:
            raise ValueError(f"mrtm: mask_ratio must be in (0, 1), got {args.mask_ratio}")
        if args.block_size < 1:
            raise ValueError(f"mrtm: block_size must be >= 1, got {args.block_size}")
        if args.heads < 0:
            raise ValueError(f"mrtm: heads must be >= 0, got {args.heads}")
        if not 0.0 <= args.dropout < 1.0:
            raise ValueError(f"mrtm: dropout must be in [0, 1), got {args.dropout}")
        if args.pseudo_labeller is not None:
            resolve_callable(args.pseudo_labeller)  # a typo fails before training starts
        self._notified = False
        self.grid_size: Optional[Tuple[int, int]] = None
        self.mask_token = None
        self.cross = None
        if model is None:  # config validation only: the parameters need the model's sizes
            return
        if model.fusion is None:
            raise ValueError("mrtm decodes label tokens with the fusion encoder's tied MLM head and "
                             "projects patches with its image projection: set model.fusion.layers > 0")
        self.grid_size = vit_grid_size(model.vision)
        vit = _timm_vit(model.vision)
        if not isinstance(vit.patch_drop, nn.Identity):
            raise ValueError("mrtm: the ViT drops patches (patch_drop_rate > 0), so its tokens no longer "
                             "line up with the patch mask; set patch_drop_rate to 0")
        heads = args.heads or model.cfg.fusion.heads
        width = model.text.width
        if width % heads:
            raise ValueError(f"mrtm: heads={heads} must divide the text width {width}")
        self.mask_token = nn.Parameter(torch.zeros(model.vision.width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # BEiT / SimMIM initialisation
        self.cross = PatchTextCrossAttention(width, heads, args.dropout)

    def input_preparer(self):
        if self.grid_size is None:
            raise RuntimeError("mrtm was built without a model: the patch grid comes from the model")
        a = self.args
        return MRTMInputs(self.grid_size, self.xvl_model.cfg.languages, a.mask_ratio, a.block_size,
                          a.fallback_language, a.pseudo_labeller)

    def applies(self, outputs, batch) -> bool:
        if not super().applies(outputs, batch):
            return False
        if "mrtm_targets" in batch or has_boxes(batch.get("objects")):
            return True  # boxes without targets: forward explains that the preparer did not run
        if not self._notified:
            logger.warning("mrtm: skipping batches without object boxes (no 'objects' in the batch or "
                           "no box in it, and no pseudo_labeller configured); this is logged once")
            self._notified = True
        return False

    def forward(self, outputs, batch):
        if "mrtm_targets" not in batch or "mrtm_patch_mask" not in batch:
            raise KeyError("mrtm needs batch['mrtm_patch_mask'] / batch['mrtm_targets'] from its input "
                           "preparer (objective.input_preparer()) run on the collated batch")
        model = self.xvl_model
        images = batch["image"]
        states = encode_masked_image(model.vision, images, batch["mrtm_patch_mask"], self.mask_token)
        text = outputs["text_tokens"]
        text_mask = batch["attention_mask"].to(text.device)
        x = self.cross(model.fusion.image_proj(states), text, text_mask)  # [B, N, H]
        targets = batch["mrtm_targets"].to(x.device)
        sel = targets != IGNORE_INDEX
        n = int(sel.sum())
        if n == 0:
            # nothing to predict (masked blocks missed every box): zero, but through every
            # parameter involved so distributed gradient sync sees them all
            zero = 0.0 * model.fusion_mlm_head(x[:, :1]).float().sum()
            return {f"{self.name}_loss": zero, f"{self.name}_acc": zero.detach(),
                    f"{self.name}_patches": torch.zeros((), device=x.device)}
        # only the labelled masked patches go through the vocabulary projection
        logits = model.fusion_mlm_head(x[sel]).float()
        target = targets[sel]
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return {f"{self.name}_loss": loss, f"{self.name}_acc": acc,
                f"{self.name}_patches": torch.tensor(float(n), device=x.device)}
