"""XVLModel: vision tower + text tower + projections + learnable temperature.

The model computes features; it never computes losses (those live in :mod:`xvl.objectives`).
``forward(batch)`` returns a dict of features that objectives consume; ``encode_image`` /
``encode_text`` are the inference API. A model directory (``save_pretrained`` / :func:`load`)
holds ``model.safetensors``, ``xvl_config.json``, ``text_config.json``, the tokenizer files and
``preprocessor_config.json`` — no pickle anywhere.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from xvl.atomic import atomic_directory
from xvl.config import ModelConfig, to_dict
from xvl.configlib import from_dict
from xvl.models.fusion import FusionEncoder
from xvl.models.heads import AnswerHead, MaskedTokenHead, MatchingHead
from xvl.models.text import TextTower
from xvl.models.vision import VisionTower

CONFIG_FILE = "xvl_config.json"
TEXT_CONFIG_FILE = "text_config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"


class XVLModel(nn.Module):
    """Two-tower multilingual vision-language encoder.

    Args:
        cfg: the model section of the config.
        tokenizer: a ``PreTrainedTokenizerFast`` (trained by ``xvl tokenizer train`` or any local HF
            tokenizer directory); it travels with the model.
        text_hf_config: rebuild the text tower from this exact HF config (used by :func:`load`).
        load_weights: load pretrained / local checkpoint weights named in ``cfg`` (off when the
            weights come from a model directory anyway).
    """

    def __init__(self, cfg: ModelConfig, tokenizer, text_hf_config=None, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.vision = VisionTower(cfg.vision, load_weights=load_weights)
        self.text = TextTower(cfg.text, tokenizer, hf_config=text_hf_config, load_weights=load_weights,
                              languages=cfg.languages)
        self.image_proj = nn.Linear(self.vision.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.lang_to_id = {lang: i for i, lang in enumerate(cfg.languages)}
        self._preprocess = None
        # fusion encoder + its heads (model.fusion.layers > 0): matching, masked tokens, VQA answers
        self.fusion = self.itm_head = self.fusion_mlm_head = self.answer_head = None
        if cfg.fusion.layers > 0:
            self.fusion = FusionEncoder(cfg.fusion, self.text.width, self.vision.width)
            self.itm_head = MatchingHead(self.text.width)
            self.fusion_mlm_head = MaskedTokenHead(self.text.width, self.text.model.get_input_embeddings())
            if cfg.vqa_answers:
                self.answer_head = AnswerHead(self.text.width, len(cfg.vqa_answers))

    # ----------------------------------------------------------------------------- inference API
    @property
    def preprocess(self):
        """The eval image transform (PIL -> normalized tensor), built from timm's data config."""
        if self._preprocess is None:
            from timm.data import create_transform

            self._preprocess = create_transform(**self.vision.data_config(), is_training=False)
        return self._preprocess

    def tokenize(self, texts: List[str], max_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Pad and truncate ``texts`` to ``input_ids`` / ``attention_mask`` tensors."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=max_length or self.cfg.text.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.image_proj(self.vision(image)["image_pooled"])
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    normalize: bool = True, lang=None) -> torch.Tensor:
        """Sentence embeddings. ``lang``: a language code for the whole batch or a [B] tensor of
        ids; required when the text tower has language-specific modules (X-Mod adapters)."""
        if isinstance(lang, str):
            if lang not in self.lang_to_id:
                raise ValueError(f"unknown language '{lang}': the model knows {sorted(self.lang_to_id)}")
            lang = torch.full((input_ids.shape[0],), self.lang_to_id[lang], dtype=torch.long,
                              device=input_ids.device)
        emb = self.text_proj(self.text(input_ids, attention_mask, lang=lang)["text_pooled"])
        return F.normalize(emb, dim=-1) if normalize else emb

    def fuse(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, context: torch.Tensor,
             context_mask: Optional[torch.Tensor] = None, context_type: str = "image") -> torch.Tensor:
        """Fused token states [B,L,H] of text tokens attending to ``context`` (image patch tokens, or
        a paired sentence's token states with ``context_type="text"``); see :mod:`xvl.models.fusion`."""
        if self.fusion is None:
            raise ValueError("this model has no fusion encoder: set model.fusion.layers > 0 "
                             "(needed by itm/ttm, conditional MLM, VTLM, MRTM, VQA and --rerank)")
        return self.fusion(text_tokens, text_mask, context, context_mask, context_type)

    def set_answer_vocabulary(self, answers: List[str]) -> None:
        """(Re)create the VQA answer head for ``answers`` (class i = ``answers[i]``); saved with the model."""
        if self.fusion is None:
            raise ValueError("VQA needs a fusion encoder: the model has model.fusion.layers = 0")
        self.cfg.vqa_answers = list(answers)
        self.answer_head = AnswerHead(self.text.width, len(answers)).to(self.logit_scale.device)

    def get_logit_scale(self) -> torch.Tensor:
        """exp(learnable log-scale), clamped at ``max_logit_scale`` (CLIP: 100)."""
        return self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()

    # ------------------------------------------------------------------------------- training
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Features for whatever the batch holds; objectives pick what they need.

        - ``image`` -> ``image_pooled``, ``image_tokens``, ``image_embeds`` (normalized, projected)
        - ``input_ids`` (+ ``attention_mask``, ``lang``) -> ``text_tokens``, ``text_pooled``,
          ``text_hidden_states``, ``text_embeds``
        - ``pair_input_ids`` (a translation / second caption; + ``pair_attention_mask``,
          ``pair_lang``) -> ``pair_tokens``, ``pair_pooled``, ``pair_hidden_states``, ``pair_embeds``
        - ``mlm_input_ids`` (a masked sequence; + ``mlm_attention_mask``, optional
          ``mlm_position_ids``, ``mlm_token_type_ids``, ``mlm_lang``) -> ``mlm_tokens``
        and always ``logit_scale``.
        """
        out: Dict[str, torch.Tensor] = {"logit_scale": self.get_logit_scale()}
        if "image" in batch:
            v = self.vision(batch["image"])
            out.update(v)
            out["image_embeds"] = F.normalize(self.image_proj(v["image_pooled"]), dim=-1)
        for prefix, key in (("text", "input_ids"), ("pair", "pair_input_ids")):
            if key not in batch:
                continue
            bp = "" if prefix == "text" else "pair_"
            t = self.text(batch[key], batch[f"{bp}attention_mask"], lang=batch.get(f"{bp}lang"))
            out[f"{prefix}_tokens"], out[f"{prefix}_pooled"] = t["text_tokens"], t["text_pooled"]
            out[f"{prefix}_hidden_states"] = t["text_hidden_states"]
            out[f"{prefix}_embeds"] = F.normalize(self.text_proj(t["text_pooled"]), dim=-1)
        if "mlm_input_ids" in batch:
            m = self.text(batch["mlm_input_ids"], batch["mlm_attention_mask"], lang=batch.get("mlm_lang"),
                          position_ids=batch.get("mlm_position_ids"),
                          token_type_ids=batch.get("mlm_token_type_ids"))
            out["mlm_tokens"] = m["text_tokens"]
        return out

    def add_language(self, code: str, init_from: Optional[str] = None) -> List[nn.Parameter]:
        """X-Mod: give language ``code`` its own adapter in every text layer; returns the new parameters.

        ``code`` is appended to ``cfg.languages`` / ``lang_to_id`` if new (ids never shift) and to
        ``cfg.text.adapters.languages``, so ``save_pretrained`` / :func:`load` rebuild it. The module
        starts as a copy of ``init_from``'s (else random); train it alone with
        :func:`xvl.models.adapters.freeze_all_but_language`.
        """
        params = self.text.add_language(code, init_from=init_from)
        if code not in self.lang_to_id:
            self.cfg.languages.append(code)
            self.lang_to_id[code] = len(self.cfg.languages) - 1
        return params

    # --------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str) -> None:
        """Write the model directory atomically (a temp dir renamed into place)."""
        with atomic_directory(directory, prefix=".tmp-model-") as tmp:
            save_model(self, os.path.join(tmp, WEIGHTS_FILE))
            with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
                json.dump({"model": to_dict(self.cfg), "format": "xvl/1"}, f, indent=2)
            self.text.model.config.to_json_file(os.path.join(tmp, TEXT_CONFIG_FILE))
            with open(os.path.join(tmp, PREPROCESSOR_FILE), "w") as f:
                json.dump(self.vision.data_config(), f, indent=2)
            self.tokenizer.save_pretrained(tmp)

    @classmethod
    def from_pretrained(cls, directory: str, map_location: str = "cpu") -> "XVLModel":
        """Rebuild the architecture from the directory's configs and load its safetensors weights."""
        from transformers import AutoConfig

        from xvl.data.tokenizer import load_tokenizer

        path = os.path.join(directory, CONFIG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} is not an xvl model directory (no {CONFIG_FILE})")
        with open(path) as f:
            cfg = from_dict(ModelConfig, json.load(f)["model"])
        # weights come from model.safetensors: never fetch pretrained ones again
        cfg.vision.pretrained, cfg.vision.checkpoint = False, None
        tokenizer = load_tokenizer(directory)
        text_cfg = AutoConfig.from_pretrained(os.path.join(directory, TEXT_CONFIG_FILE))
        model = cls(cfg, tokenizer, text_hf_config=text_cfg, load_weights=False)
        load_model(model, os.path.join(directory, WEIGHTS_FILE), strict=True, device=map_location)
        return model.eval()


def load(directory: str, map_location: str = "cpu") -> XVLModel:
    """Load a model directory written by :meth:`XVLModel.save_pretrained`."""
    return XVLModel.from_pretrained(directory, map_location=map_location)


def init_from_model_dir(model: XVLModel, directory: str, parts) -> Dict[str, int]:
    """Copy the weights of the top-level modules ``parts`` (e.g. ``["text", "text_proj"]``) from the
    model directory ``directory`` into ``model`` (warm start: a multimodal recipe starting from the
    text recipe's encoder). Names and shapes must match; returns {part: tensors copied}.

    A part the directory lacks, or a shape mismatch (a different text width, vocabulary or
    tokenizer), is an error before training, never a silent partial load.
    """
    from safetensors import safe_open

    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"train.init_from: {directory} is not an xvl model directory (no {WEIGHTS_FILE})")
    own = model.state_dict()
    copied: Dict[str, int] = {}
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        for part in parts:
            names = [k for k in keys if k.startswith(part + ".")]
            if not names:
                raise ValueError(f"train.init_from: {directory} has no weights for '{part}'")
            for k in names:
                if k not in own:
                    raise ValueError(f"train.init_from: {directory} has {k}, which this model lacks "
                                     "(different architecture?)")
                t = f.get_tensor(k)
                if t.shape != own[k].shape:
                    raise ValueError(f"train.init_from: {k} has shape {tuple(t.shape)} in {directory} but "
                                     f"{tuple(own[k].shape)} here (text config / tokenizer must match)")
                with torch.no_grad():
                    own[k].copy_(t)
            missing = [k for k in own if k.startswith(part + ".") and k not in names]
            if missing:
                raise ValueError(f"train.init_from: {directory} lacks {missing[:3]}... for '{part}'")
            copied[part] = len(names)
    return copied
