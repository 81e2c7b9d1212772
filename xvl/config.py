"""The configuration schema: typed nested dataclasses.

A run is described by one YAML file plus dotted ``key=value`` overrides::

    xvl train configs/flickr8k-ml-tiny.yaml train.max_steps=200 model.embed_dim=128

Unknown keys and wrong types are errors that name the key (and the closest valid key) before any
work starts; the resolved config is written to the run directory as ``config.yaml``.
Generic machinery (parsing, overrides, type checks) lives in :mod:`xvl.configlib`; this module
only declares what the keys are and checks the cross-field rules in ``validate``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from xvl.configlib import ConfigError, load_config, save_config, to_dict  # noqa: F401  (re-exported)

__all__ = ["XVLConfig", "ModelConfig", "DataConfig", "TrainConfig", "EvalConfig", "ObjectiveSpec", "load",
           "ConfigError", "save_config", "to_dict"]


@dataclass
class VisionConfig:
    """Image tower: any timm model name."""

    name: str = "vit_tiny_patch16_224"
    pretrained: bool = False  # timm weights by name (needs a hub or a local HF cache)
    checkpoint: Optional[str] = None  # local weights file (.safetensors preferred) for the timm model
    image_size: int = 224
    crop_pct: float = 1.0  # eval resize/crop ratio; 1.0 keeps the whole (already squared) image
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs


@dataclass
class TokenizerConfig:
    """Where the tokenizer comes from: a local HF tokenizer directory, or trained on the train data."""

    path: Optional[str] = None  # local tokenizer dir (or hub name); None: text.pretrained's, else train one
    vocab_size: int = 8000  # when training
    # BPE by default: HF's Unigram trainer leaves frequent short words split into letters on
    # caption-sized corpora ("p ur p l e" with 780 occurrences); Unigram stays available
    model: Literal["unigram", "bpe"] = "bpe"
    min_frequency: int = 2
    split_cjk: bool = True  # isolate Han ideographs (mBERT-style) before subword training


@dataclass
class AdapterConfig:
    """X-Mod language-specific modules: a bottleneck adapter per language after each FFN sublayer."""

    enabled: bool = False
    bottleneck: int = 64
    # languages that get a module (default: all of model.languages); more can be added later
    languages: Optional[List[str]] = None


@dataclass
class TextConfig:
    """Text tower: a transformers encoder, from scratch (``model_type`` + ``config``) or a local dir."""

    model_type: str = "xlm-roberta"
    pretrained: Optional[str] = None  # local directory (or hub name) for AutoModel.from_pretrained
    config: Dict[str, Any] = field(default_factory=dict)  # overrides for AutoConfig.for_model
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 32
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)


@dataclass
class FusionConfig:
    """Fusion encoder (:mod:`xvl.models.fusion`): text tokens cross-attend to image patches or to the
    paired sentence; its [CLS] state feeds the matching (ITM/TTM) and VQA heads. 0 layers: none
    (a dual encoder; the fusion objectives and ``--rerank`` then refuse to run)."""

    layers: int = 0
    heads: int = 4
    intermediate_size: Optional[int] = None  # default 4 x the text width
    dropout: float = 0.1


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    embed_dim: int = 256
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    # language vocabulary for batch["lang"] ids (ISO 639-1); later modules (adapters) route on it
    # (order fixes the ids: append, never reorder, or saved models' ids shift)
    languages: List[str] = field(default_factory=lambda: [
        "en", "de", "fr", "es", "ru", "ja", "zh", "cs", "nl", "id", "tr", "pt", "ko", "bn"])
    # VQA answer vocabulary (class index = position); set by ``xvl finetune vqa``, empty: no answer head
    vqa_answers: List[str] = field(default_factory=list)


@dataclass
class ParallelSourceConfig:
    """One parallel-text corpus (see :mod:`xvl.data.parallel` for the readers)."""

    type: Literal["aligned", "tatoeba", "pairs", "hf", "captions"] = "aligned"
    # aligned: file prefix (".../train" + ".en", ".de", ...); tatoeba: directory; pairs: tsv/jsonl file;
    # hf: local dataset path (json/parquet/arrow dir); captions: a flickr8k-ml-schema jsonl
    path: str = ""
    languages: Optional[List[str]] = None  # aligned: which files; tatoeba/captions: filter
    pairs: str = "all"  # aligned: "all" language pairs or "pivot:en"
    src_lang: Optional[str] = None  # pairs (2-column tsv) and hf
    tgt_lang: Optional[str] = None
    src_field: Optional[str] = None  # hf (default: the "translation" dict field)
    tgt_field: Optional[str] = None


@dataclass
class ParallelDataConfig:
    """Translation pairs for the text-side objectives, mixed across corpora by n^alpha sampling."""

    sources: List[ParallelSourceConfig] = field(default_factory=list)
    alpha: float = 0.3
    swap: bool = True  # randomly swap source and target per sample


@dataclass
class StreamSourceConfig:
    """One streamed training source (``data.sources``; see :mod:`xvl.data.stream_sources`).

    ``shards``: webdataset shards written by ``xvl data make-shards`` (``path``: their directory or
    index.json, a brace pattern, or fsspec URLs joined by ``::``); with ``make_from`` (a captions
    jsonl) the shards are written to ``path`` first when it holds no index yet. ``hf``: a
    ``datasets`` image-caption dataset (local parquet/arrow/json or a saved dataset dir).
    ``aligned`` / ``pairs`` / ``tatoeba`` / ``captions``: parallel text read into memory, as in
    ``data.parallel.sources``.
    """

    type: Literal["shards", "hf", "aligned", "pairs", "tatoeba", "captions"] = "shards"
    path: str = ""
    name: Optional[str] = None  # default: type:path
    # default: from the data (index kind / type); vqa: image samples with questions (make-shards --vqa)
    task: Optional[Literal["image_text", "text_pair", "vqa"]] = None
    weight: float = 1.0  # share of micro-batches drawn from this source
    make_from: Optional[str] = None  # shards: captions jsonl to convert into ``path`` when it has no index
    # hf
    split: Optional[str] = None
    streaming: bool = False
    image_column: str = "image"
    caption_column: str = "caption"
    lang_column: Optional[str] = None
    lang: Optional[str] = None  # language of every caption when there is no lang column
    image_root: Optional[str] = None  # hf: image paths in a string column are relative to this
    # parallel text (parallel shards and the text types)
    languages: Optional[List[str]] = None
    pairs: str = "all"  # "all" language pairs of an aligned group, or "pivot:en"
    src_lang: Optional[str] = None
    tgt_lang: Optional[str] = None
    # vqa: the answer vocabulary file (gqa answers.json) and the question languages to train on
    answers: Optional[str] = None
    question_languages: List[str] = field(default_factory=lambda: ["en"])


@dataclass
class StreamConfig:
    """How streamed sources are read (shuffle buffer, epochs, tokenizer texts)."""

    shuffle_buffer: int = 1000  # samples; 0: shard order only
    resampled: bool = False  # draw shards with replacement (endless, reseeded on resume) vs finite epochs
    too_few_shards: Literal["error", "warn"] = "error"  # fewer shards than processes x workers
    tokenizer_texts: int = 200_000  # at most this many sentences read to train a tokenizer


@dataclass
class DataConfig:
    """Training data: image-caption jsonl (flickr8k-ml schema) and/or parallel text.

    ``train`` set: image-caption training. ``train: null`` with ``parallel.sources``: text-only
    training of the text tower (the image tower is frozen). Both: a mixed run (``task_ratios``).
    """

    root: str = "../shared/data"  # relative paths below resolve against this
    train: Optional[str] = "flickr8k-ml/train.jsonl"
    val: Optional[str] = "flickr8k-ml/val.jsonl"
    image_root: Optional[str] = None  # default: the jsonl's directory
    languages: Optional[List[str]] = None  # keep captions in these languages only (None: all)
    exclude_kinds: List[str] = field(default_factory=list)  # e.g. ["machine_translation"]
    # one caption per image per step: pick a language uniformly, then one of its captions
    caption_sampling: Literal["uniform_language", "uniform_caption"] = "uniform_language"
    # a second caption of the same image per sample (CCLM caption-translation view, RC3 weak pairs):
    # auto = none unless an objective reads pairs, then prefer_strict (see ImageCaptionDataset)
    pair_sampling: Literal["auto", "none", "any", "prefer_strict"] = "auto"
    augment: bool = False  # random resized crop (scale below); off for data whose captions name positions
    augment_scale: List[float] = field(default_factory=lambda: [0.7, 1.0])
    num_workers: int = 1
    max_train_records: Optional[int] = None  # first N records (smoke runs)
    parallel: ParallelDataConfig = field(default_factory=ParallelDataConfig)
    # with both train captions and parallel.sources: share of micro-batches per task,
    # {image_text: w, text_pair: w} (default 1:1); each micro-batch comes from one task
    task_ratios: Dict[str, float] = field(default_factory=dict)
    # streamed sources mixed by weight (replaces train / parallel.sources; see StreamSourceConfig)
    sources: List[StreamSourceConfig] = field(default_factory=list)
    stream: StreamConfig = field(default_factory=StreamConfig)


@dataclass
class ObjectiveSpec:
    """One objective: a registry name, its weight in the sum, and its own typed options."""

    name: str = "itc"
    weight: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 64  # per process and per micro-step
    grad_accum_steps: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on capable GPUs, fp32 on CPU
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    ckpt_every: int = 500  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    progress: bool = True
    # DDP: set true when the objectives leave trainable parameters without gradient (e.g. only a
    # fixed-temperature contrastive, which never touches logit_scale); costs a graph traversal per step
    find_unused_parameters: bool = False
    # warm start: copy these modules' weights from an xvl model directory (e.g. the text recipe's
    # runs/text-multi30k/model); its tokenizer is used too, unless model.text.tokenizer.path is set
    init_from: Optional[str] = None
    init_parts: List[str] = field(default_factory=lambda: ["text", "text_proj"])


@dataclass
class EvalConfig:
    batch_size: int = 128
    include_machine_translation: bool = False
    tatoeba: Optional[str] = None  # bitext eval dir (Tatoeba v1 files), relative to data.root
    bitext_scoring: Literal["cosine", "margin"] = "cosine"


@dataclass
class XVLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objectives: List[ObjectiveSpec] = field(default_factory=lambda: [ObjectiveSpec()])
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        t = self.train
        for key in ("max_steps", "batch_size", "grad_accum_steps"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
        if len(t.betas) != 2:
            raise ConfigError(f"train.betas must have two values, got {t.betas}")
        if not self.objectives:
            raise ConfigError("objectives: at least one objective is required")
        lo, hi = self.data.augment_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.augment_scale must satisfy 0 < lo <= hi <= 1, got {self.data.augment_scale}")
        d = self.data
        if d.sources:
            if d.train is not None or d.parallel.sources:
                raise ConfigError("data.sources replaces data.train and data.parallel.sources: set data.train: null "
                                  "and list every training source (shards, hf, parallel text) under data.sources")
            if d.task_ratios:
                raise ConfigError("data.task_ratios mixes data.train with data.parallel.sources; streamed sources "
                                  "are mixed by their own weights: set data.sources[i].weight instead")
            if d.max_train_records is not None:
                raise ConfigError("data.max_train_records limits data.train; it does not apply to data.sources")
            for i, src in enumerate(d.sources):
                if not src.path:
                    raise ConfigError(f"data.sources[{i}]: path is required")
                if src.weight <= 0:
                    raise ConfigError(f"data.sources[{i}] ({src.path}): weight must be > 0, got {src.weight}")
                if src.make_from and src.type != "shards":
                    raise ConfigError(f"data.sources[{i}]: make_from is for type shards, not {src.type}")
                if src.task == "vqa" and (src.type != "shards" or not src.answers):
                    raise ConfigError(f"data.sources[{i}]: a vqa source reads shards (xvl data make-shards --vqa) "
                                      "and needs answers: <answer vocabulary file>")
            names = [s.name or f"{s.type}:{s.path}" for s in d.sources]
            if len(set(names)) != len(names):
                raise ConfigError(f"data.sources: duplicate source names {names}; give them distinct names")
        elif d.train is None and not d.parallel.sources:
            raise ConfigError("data: set data.train (image-caption jsonl), data.parallel.sources (text) "
                              "or data.sources (streamed shards / HF datasets / text)")
        if len(set(self.model.languages)) != len(self.model.languages):
            raise ConfigError(f"model.languages has duplicates: {self.model.languages}")


def load(path: Optional[str] = None, overrides=(), base: Optional[dict] = None) -> XVLConfig:
    """Load an :class:`XVLConfig` from YAML (optional) plus dotted overrides."""
    return load_config(XVLConfig, path, list(overrides), base=base)
