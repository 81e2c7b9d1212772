"""Multilingual tokenizer: train our own (no model hub needed) or load a local HF tokenizer.

The project cannot download pretrained tokenizers, so it trains a SentencePiece-style tokenizer
with HF ``tokenizers`` on its own caption / question / sentence files and wraps it as a
``transformers.PreTrainedTokenizerFast``.  Everything downstream therefore only ever sees the
standard HF tokenizer API, whether the tokenizer was trained here or is a user's local HF
tokenizer directory (e.g. an XLM-R tokenizer copied from elsewhere).

Conventions (XLM-R style):

* special tokens ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4 (fixed ids);
  ``<s>`` doubles as CLS and ``</s>`` as SEP;
* single sequence: ``<s> A </s>``; pair: ``<s> A </s> </s> B </s>`` (all token type ids 0);
* NFKC normalisation, whitespace collapsed, Metaspace (``▁``) pre-tokenisation, so languages
  written without spaces (Chinese, Japanese) are segmented by the subword model itself.

Typical use::

    tok = train_tokenizer(["data/captions.jsonl", "data/multi30k/train.de"], vocab_size=8000)
    tok.save_pretrained("runs/tok")
    tok = load_tokenizer("runs/tok", max_length=64)
    batch = tok(["ein roter Kreis", "一个红色的圆"], padding=True, truncation=True,
                return_tensors="pt")

Command line: ``python -m xvl.data.tokenizer OUT_DIR INPUT [INPUT ...] --vocab-size 8000``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence, Union

if TYPE_CHECKING:  # importing this module must stay cheap; transformers is imported lazily
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}
# The order here fixes the ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
SPECIAL_TOKEN_ORDER = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
SPECIAL_TOKEN_IDS = {tok: i for i, tok in enumerate(SPECIAL_TOKEN_ORDER)}

MODELS = ("unigram", "bpe")
METASPACE = "\u2581"  # "▁", as in SentencePiece

_DIR_SUFFIXES = (".jsonl", ".txt")
_PATHLIKE_SUFFIXES = (".txt", ".jsonl", ".json", ".tsv", ".csv")

PathOrStr = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Reading training text
# --------------------------------------------------------------------------------------------
def _texts_from_record(rec) -> Iterator[str]:
    """All trainable strings of one JSON record (captions / VQA / plain ``text`` schema)."""
    if isinstance(rec, str):
        yield rec
        return
    if not isinstance(rec, dict):
        return
    caps = rec.get("captions")
    if isinstance(caps, list):
        for cap in caps:
            if isinstance(cap, dict):
                text = cap.get("text")
                if isinstance(text, str):
                    yield text
            elif isinstance(cap, str):
                yield cap
    question = rec.get("question")
    if isinstance(question, dict):
        for text in question.values():
            if isinstance(text, str):
                yield text
    elif isinstance(question, str):
        yield question
    text = rec.get("text")
    if isinstance(text, str):
        yield text


def _expand_paths(paths: Sequence[PathOrStr]) -> list[Path]:
    """Validate paths eagerly and expand directories (non-recursive, *.jsonl and *.txt)."""
    files: list[Path] = []
    for p in paths:
        path = Path(os.path.expanduser(os.fspath(p)))
        if path.is_dir():
            inside = sorted(
                f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _DIR_SUFFIXES
            )
            if not inside:
                logger.warning("tokenizer: directory %s has no *.jsonl or *.txt files", path)
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"tokenizer training file not found: {os.fspath(p)}")
    return files


def _iter_file(path: Path) -> Iterator[str]:
    suffix = path.suffix.lower()
    with open(path, "r", encoding="utf-8-sig") as f:
        if suffix == ".json":
            data = json.load(f)
            records = data if isinstance(data, list) else [data]
            for rec in records:
                for text in _texts_from_record(rec):
                    text = text.strip()
                    if text:
                        yield text
            return
        if suffix == ".jsonl":
            empty_records = 0
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON line ({e})") from e
                n = 0
                for text in _texts_from_record(rec):
                    text = text.strip()
                    if text:
                        n += 1
                        yield text
                empty_records += n == 0
            if empty_records:
                logger.warning(
                    "tokenizer: %d records in %s had no captions/question/text", empty_records, path
                )
            return
        # Plain text: one sentence per line (any other extension, e.g. Multi30K "train.de").
        for line in f:
            line = line.strip()
            if line:
                yield line


def iter_texts(paths: Union[PathOrStr, Sequence[PathOrStr]]) -> Iterator[str]:
    """Yield the training text lines of ``paths``.

    Supported inputs:

    * plain text files, one sentence per line (any extension other than ``.jsonl``/``.json``,
      e.g. ``.txt`` or Multi30K's ``train.de``);
    * ``.jsonl`` files (one record per line) and ``.json`` files (a list of records, or one record)
      in the captions schema ``{"captions": [{"lang": .., "text": ..}, ..]}`` (every caption text),
      the VQA schema ``{"question": {lang: text, ..}}`` (every question), or records with a
      ``"text"`` string field;
    * directories: every ``*.jsonl`` and ``*.txt`` directly inside (non-recursive, sorted).

    Lines are stripped and empty ones skipped.  All paths are checked before anything is read:
    a missing path raises ``FileNotFoundError`` naming it.  A malformed JSON line raises
    ``ValueError`` naming the file and line.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = _expand_paths(list(paths))

    def gen() -> Iterator[str]:
        for path in files:
            yield from _iter_file(path)

    return gen()


def _looks_like_path(s: str) -> bool:
    return (
        bool(s)
        and not any(c.isspace() for c in s)
        and ("/" in s or os.sep in s or s.lower().endswith(_PATHLIKE_SUFFIXES))
    )


def _resolve_inputs(paths_or_texts) -> tuple[Iterable[str], Optional[int]]:
    """Return (text iterable, length if known).  Paths vs. texts detection, see train_tokenizer."""
    if isinstance(paths_or_texts, (str, os.PathLike)):
        return iter_texts([paths_or_texts]), None
    if isinstance(paths_or_texts, (list, tuple)):
        items = list(paths_or_texts)
        if not items:
            raise ValueError("train_tokenizer: no training inputs given")
        if any(isinstance(x, os.PathLike) for x in items):
            return iter_texts(items), None
        if not all(isinstance(x, str) for x in items):
            raise TypeError("train_tokenizer: expected a list of paths or of strings")
        exists = [os.path.exists(os.path.expanduser(x)) for x in items]
        if all(exists) or (any(exists) and all(_looks_like_path(x) for x in items)):
            return iter_texts(items), None
        if not any(exists) and all(_looks_like_path(x) for x in items):
            # Every entry is path-shaped but none exists: almost certainly a typo'd path list.
            raise FileNotFoundError(f"tokenizer training file not found: {items[0]}")
        texts = [t.strip() for t in items]
        texts = [t for t in texts if t]
        return texts, len(texts)
    # Any other iterable (generator, dataset column, ...): strings to train on.
    return (t.strip() for t in paths_or_texts if isinstance(t, str) and t.strip()), None


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _special_added_tokens():
    from tokenizers import AddedToken

    out = []
    for tok in SPECIAL_TOKEN_ORDER:
        # Like XLM-R: "<mask>" swallows the space before it, so "the <mask> of" masks one word.
        out.append(AddedToken(tok, special=True, normalized=False, lstrip=tok == "<mask>"))
    return out


def build_backend(model: str = "unigram", lowercase: bool = False, split_cjk: bool = True):
    """An untrained ``tokenizers.Tokenizer`` with our normaliser / pre-tokeniser / decoder.

    ``split_cjk`` isolates every Han ideograph as its own pre-token (mBERT's
    ``tokenize_chinese_chars``). Without it the subword model learns pieces that span word
    boundaries in unsegmented Chinese/Japanese text (e.g. "shape+'is at'+left" as one piece), so
    each sentence becomes a rare compound and models generalise poorly to new combinations.
    Kana runs are left to the subword model.

    The post-processor is attached after training (it needs the special token ids).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = model.lower() if isinstance(model, str) else model
    if model == "unigram":
        backend = Tokenizer(models.Unigram())
    elif model == "bpe":
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
    else:
        raise ValueError(f"unknown tokenizer model {model!r}; expected one of {MODELS}")
    norm = [normalizers.NFKC()]
    if lowercase:
        norm.append(normalizers.Lowercase())
    # SentencePiece-like "remove extra whitespace": collapse runs, strip the ends.
    norm += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    backend.normalizer = normalizers.Sequence(norm)
    # Punctuation is isolated (as BERT's pre-tokenizer does), so "left." and "left" are the same
    # word to the subword model; without it BPE learns "▁left." as its own token and the meaning
    # of sentence-final words is split across two tokens.
    steps = [pre_tokenizers.Punctuation(behavior="isolated")]
    if split_cjk:
        steps.insert(0, pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"))
    # "first": only the start of the text gets the "▁" prefix, not every isolated piece (words
    # after a space still carry it), so decoding puts no spaces before "." or between characters
    steps.append(pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")
    return backend


def _attach_post_processor(backend) -> None:
    from tokenizers import processors

    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKEN_ORDER}
    if ids != SPECIAL_TOKEN_IDS:  # the trainer puts special tokens first, in order
        raise RuntimeError(f"special token ids came out as {ids}, expected {SPECIAL_TOKEN_IDS}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids[bos]), (eos, ids[eos])],
    )


def train_tokenizer(
    paths_or_texts,
    vocab_size: int = 8000,
    model: str = "bpe",
    min_frequency: int = 2,
    lowercase: bool = False,
    max_length: int = 64,
    *,
    split_cjk: bool = True,
    show_progress: bool = False,
) -> "PreTrainedTokenizerFast":
    """Train a multilingual subword tokenizer and return it as a ``PreTrainedTokenizerFast``.

    Args:
        paths_or_texts: a list of file/directory paths (read with :func:`iter_texts`), a single
            path, or an iterable of training strings.  A list of ``str`` counts as paths when
            every entry exists, or when some exist and all are path-shaped (no whitespace, with a
            ``/`` or a .txt/.jsonl/.json/... suffix; the missing ones then raise
            ``FileNotFoundError``); when all entries are path-shaped and none exists,
            ``FileNotFoundError`` is raised too.  Otherwise the strings are the training text.
        vocab_size: target vocabulary size including special tokens; passed straight to the
            trainer.  The result may be smaller on tiny corpora.  Every character seen in
            training is kept: when the alphabet alone exceeds ``vocab_size`` BPE returns a larger
            vocabulary, while Unigram refuses (``ValueError``).
        model: ``"bpe"`` (default; character BPE on Metaspace words, no byte fallback) or
            ``"unigram"`` (SentencePiece-style Unigram LM). BPE is the default because HF's Unigram
            trainer keeps frequent short words split into letters on caption-sized corpora.  Anything else raises ``ValueError``.
        min_frequency: minimum pair frequency for a BPE merge (the Unigram trainer has no such
            option and ignores it).
        lowercase: lowercase after NFKC normalisation.
        max_length: ``model_max_length`` of the returned tokenizer (used by ``truncation=True``).
        split_cjk: isolate Han ideographs before subword training (see :func:`build_backend`).
        show_progress: show the trainer's progress bars.

    Both models use NFKC normalisation (whitespace collapsed), a Metaspace pre-tokenizer and
    decoder (so Chinese/Japanese without spaces are segmented by the subword model), fixed
    special token ids ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3 ``<mask>``=4, and an XLM-R
    style post-processor: ``<s> A </s>`` and ``<s> A </s> </s> B </s>``.  Save the result with
    ``tok.save_pretrained(dir)`` and reload it with :func:`load_tokenizer`.
    """
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(model, str) or model.lower() not in MODELS:
        raise ValueError(f"unknown tokenizer model {model!r}; expected one of {MODELS}")
    model = model.lower()
    backend = build_backend(model, lowercase=lowercase, split_cjk=split_cjk)
    texts, length = _resolve_inputs(paths_or_texts)

    specials = _special_added_tokens()
    if model == "unigram":
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            unk_token=SPECIAL_TOKENS["unk_token"],
            show_progress=show_progress,
            max_piece_length=16,
        )
    else:
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=show_progress,
        )
    try:
        backend.train_from_iterator(texts, trainer=trainer, length=length)
    except Exception as e:  # the Rust trainer raises a bare Exception
        if "not large enough" in str(e):
            raise ValueError(
                f"vocab_size={vocab_size} is too small for the {model} tokenizer: it must hold the "
                f"{len(SPECIAL_TOKEN_ORDER)} special tokens plus every character of the training "
                f"text ({e})"
            ) from e
        raise
    if backend.get_vocab_size(with_added_tokens=False) <= len(SPECIAL_TOKEN_ORDER):
        raise ValueError("train_tokenizer: no training text found (vocabulary is empty)")
    _attach_post_processor(backend)

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=max_length,
        padding_side="right",
        **SPECIAL_TOKENS,
    )
    return tok


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_tokenizer(
    path_or_name,
    max_length: Optional[int] = None,
    *,
    require_mask: bool = False,
) -> "PreTrainedTokenizerBase":
    """Load a tokenizer with ``AutoTokenizer.from_pretrained(path, trust_remote_code=False)``.

    ``path_or_name`` is a local tokenizer directory (anything written by ``save_pretrained``,
    e.g. one from :func:`train_tokenizer` or a copied XLM-R/mBERT tokenizer dir) or a hub name
    that is already in the user's local HF cache (nothing is downloaded when offline).  An
    already constructed tokenizer object is checked and returned as is.

    Checks: the tokenizer must have a pad token (``ValueError`` otherwise, with a hint), and should
    have a mask token (a warning, or ``ValueError`` when ``require_mask=True``; masked language
    modelling needs it).  ``max_length`` overrides ``model_max_length`` when given.
    """
    if isinstance(path_or_name, (str, os.PathLike)):
        from transformers import AutoTokenizer

        name = os.path.expanduser(os.fspath(path_or_name))
        is_local_ref = name.startswith((".", "/", "~")) or os.path.isabs(name) or os.sep in name[:1]
        if is_local_ref and not os.path.exists(name):
            raise FileNotFoundError(f"tokenizer directory not found: {os.fspath(path_or_name)}")
        if os.path.isfile(name):
            raise ValueError(
                f"load_tokenizer expects a tokenizer directory (from save_pretrained), got the file "
                f"{name}"
            )
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        where = name
    else:
        tok = path_or_name
        where = getattr(tok, "name_or_path", type(tok).__name__)

    if getattr(tok, "pad_token", None) is None or getattr(tok, "pad_token_id", None) is None:
        raise ValueError(
            f"tokenizer {where!r} has no pad token; batching needs one. Set it before use "
            f"(e.g. tok.pad_token = tok.eos_token, or tok.add_special_tokens({{'pad_token': '<pad>'}}) "
            f"and resize the embeddings) and save it again, or train one with train_tokenizer()."
        )
    if getattr(tok, "mask_token", None) is None or getattr(tok, "mask_token_id", None) is None:
        msg = f"tokenizer {where!r} has no mask token; masked language modelling will not work"
        if require_mask:
            raise ValueError(msg)
        logger.warning(msg)
    if max_length is not None:
        if int(max_length) <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        tok.model_max_length = int(max_length)
    return tok


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m xvl.data.tokenizer OUT_DIR INPUT [INPUT ...]``: train and save a tokenizer."""
    import argparse
    import time

    p = argparse.ArgumentParser(prog="python -m xvl.data.tokenizer", description=main.__doc__)
    p.add_argument("out_dir")
    p.add_argument("inputs", nargs="+", help="text / .jsonl files or directories")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model", choices=MODELS, default="unigram")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args(argv)

    t0 = time.time()
    tok = train_tokenizer(
        iter_texts(args.inputs),
        vocab_size=args.vocab_size,
        model=args.model,
        min_frequency=args.min_frequency,
        lowercase=args.lowercase,
        max_length=args.max_length,
        show_progress=True,
    )
    tok.save_pretrained(args.out_dir)
    print(f"trained {args.model} tokenizer, vocab {len(tok)}, in {time.time() - t0:.1f}s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
