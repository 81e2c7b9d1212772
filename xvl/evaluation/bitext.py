"""Bitext retrieval (Tatoeba-style parallel sentence matching) with the text encoder.

Library behind ``xvl eval bitext --model DIR (--tatoeba DIR | --src FILE --tgt FILE) [--out FILE.json]``.

Input: LASER Tatoeba v1 files, one sentence per line, line ``i`` of one side the translation of
line ``i`` of the other::

    tatoeba.deu-eng.deu    tatoeba.deu-eng.eng    tatoeba.fra-eng.fra    tatoeba.fra-eng.eng

(or any two aligned files given with ``src`` / ``tgt``). For every sentence on one side the
nearest neighbour among all sentences on the other side is looked up; it is a hit when that is
its translation (the same line number).

Output (``evaluate_bitext``)::

    {"per_pair": {"deu-eng": {"src2tgt": acc, "tgt2src": acc, "n": N}, ...},
     "average": {"src2tgt": acc, "tgt2src": acc, "mean": acc}}

The pair is named as in the Tatoeba file names; ``src`` is its first language, ``tgt`` the
second, so for LASER's ``xxx-eng`` files ``src2tgt`` is xx->en and ``tgt2src`` en->xx.
Accuracies are fractions in [0, 1]; ``average`` is the unweighted mean over pairs and ``mean``
the mean of its two directions.

Scoring (see :func:`bitext_accuracy`): plain cosine, or LASER's ratio margin (Artetxe &
Schwenk 2019), which discounts "hub" sentences that are close to everything. Ties count
AGAINST the query (pessimistic).

Embeddings: the model's final projected, normalized text embedding (``encode_text``), or with
``layer=L`` the attention-masked mean of the hidden states of layer ``L`` of the text encoder
(0 = the embedding layer), see :func:`encode_sentences`.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from xvl.data.languages import normalize_lang
from xvl.evaluation.common import batches, lang_kwargs, mean, pct, render_table
from xvl.evaluation.common import progress as progress_bar
from xvl.models.text import mean_pool

logger = logging.getLogger(__name__)

__all__ = ["bitext_accuracy", "encode_sentences", "read_parallel_files", "find_tatoeba_pairs",
           "evaluate_bitext", "format_bitext_table"]

SCORINGS = ("cosine", "margin")
DEFAULT_K = 4
_TATOEBA_RE = re.compile(r"^tatoeba\.([^.\-]+)-([^.\-]+)\.([^.]+)$")


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------
def _poison_nonfinite_rows(emb: Tensor, what: str) -> Tensor:
    """Replace rows holding any NaN/inf by all-NaN rows (their scores then count as misses)."""
    bad = ~torch.isfinite(emb).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        logger.warning(
            "bitext_accuracy: %d of %d %s embeddings are not finite; they are scored "
            "pessimistically (never a hit, always ranked ahead of the true translation)",
            n_bad, emb.shape[0], what)
        emb = emb.clone()
        emb[bad] = float("nan")
    return emb


def _knn_mean(query: Tensor, cand: Tensor, k: int, chunk_size: int) -> Tensor:
    """``[Q]``: mean cosine of each query row to its ``k`` nearest rows of ``cand`` (chunked).

    NaN similarities (non-finite embeddings) are left out of the neighbourhoods; a query with
    NaN similarities only gets ``-inf`` (its margins are then NaN or 0, never a hit).
    """
    out = torch.empty(query.shape[0], dtype=query.dtype, device=query.device)
    for start in range(0, query.shape[0], chunk_size):
        end = min(start + chunk_size, query.shape[0])
        sims = query[start:end] @ cand.T                                   # [c, N]
        sims = sims.masked_fill(torch.isnan(sims), float("-inf"))
        out[start:end] = sims.topk(k, dim=1).values.mean(dim=1)
    return out


def _hits(query: Tensor, cand: Tensor, chunk_size: int, query_knn: Optional[Tensor] = None,
          cand_knn: Optional[Tensor] = None) -> Tensor:
    """``[Q]`` bool: is query row ``i``'s best-scoring candidate row ``i``, strictly?

    Scores are ``query @ cand.T`` (cosine for normalized rows), or the ratio margin
    ``cos / ((query_knn[i] + cand_knn[j]) / 2)`` when the kNN means are given. A wrong
    candidate scoring ``>=`` the true one, or NaN, makes a miss; a NaN true score is a miss.
    """
    n = query.shape[0]
    hit = torch.empty(n, dtype=torch.bool, device=query.device)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        scores = query[start:end] @ cand.T                                 # [c, N]
        if query_knn is not None:
            scores = scores / ((query_knn[start:end].unsqueeze(1) + cand_knn.unsqueeze(0)) / 2)
        true_idx = torch.arange(start, end, device=query.device).unsqueeze(1)
        true = scores.gather(1, true_idx)                                  # [c, 1]
        ahead = (scores >= true) | torch.isnan(scores)                     # ties/NaN count against
        ahead.scatter_(1, true_idx, False)                                 # the translation itself
        hit[start:end] = (ahead.sum(1) == 0) & ~torch.isnan(true.squeeze(1))
    return hit


@torch.no_grad()
def bitext_accuracy(src_emb: Tensor, tgt_emb: Tensor, scoring: str = "cosine", k: int = DEFAULT_K,
                    chunk_size: int = 1024) -> dict:
    """Nearest-neighbour translation accuracy in both directions.

    Args:
        src_emb: ``[N, D]`` source sentence embeddings; row ``i`` is aligned with row ``i`` of
            ``tgt_emb``.
        tgt_emb: ``[N, D]`` target sentence embeddings (moved to ``src_emb``'s device).
        scoring: ``"cosine"`` (rows are L2-normalized here, so any scale is fine) or
            ``"margin"``: LASER's ratio margin (Artetxe & Schwenk 2019)::

                margin(x, y) = cos(x, y) / (sum_{z in NN_k(x)} cos(x, z) / 2k
                                            + sum_{z in NN_k(y)} cos(y, z) / 2k)

            where ``NN_k(x)`` are the ``k`` nearest neighbours of ``x`` on the other side
            (all of them, the true translation included, as in LASER).
        k: neighbourhood size for ``"margin"`` (capped at ``N``); ignored for ``"cosine"``.
        chunk_size: scores are computed ``chunk_size`` query rows at a time (a chunk x all
            ``N`` candidates), so memory is ``O(chunk_size * N)`` and the full ``N x N`` matrix
            is never materialised for ``N > chunk_size``. The result does not depend on it.

    Returns:
        ``{"src2tgt": acc, "tgt2src": acc, "n": N}``: the fraction of source sentences whose
        nearest target is their translation, and the reverse.

    Ties are pessimistic: query ``i`` is a hit only when its translation scores STRICTLY
    higher than every other candidate; a wrong candidate scoring exactly as high counts against
    it. So a degenerate model (e.g. constant embeddings) gets 0 for ``N > 1``, never the 1.0
    that "first index wins" tie-breaking would report -- and two identical sentences on the
    candidate side (identical embeddings) make a miss for both of their translations. With
    ``N == 1`` there is no wrong candidate and the accuracy is trivially 1.0.

    Non-finite embeddings (NaN/inf rows) are scored pessimistically too, with a warning: such
    a query is never a hit, such a candidate always ranks ahead of the translation.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if scoring == "margin" and int(k) < 1:
        raise ValueError(f"k must be >= 1 for margin scoring, got {k}")
    if src_emb.dim() != 2 or tgt_emb.dim() != 2:
        raise ValueError(f"src_emb and tgt_emb must be 2-D, got shapes "
                         f"{tuple(src_emb.shape)} and {tuple(tgt_emb.shape)}")
    if src_emb.shape != tgt_emb.shape:
        raise ValueError(f"src_emb and tgt_emb must have the same shape (row i of one aligned "
                         f"with row i of the other), got {tuple(src_emb.shape)} and "
                         f"{tuple(tgt_emb.shape)}")
    n = src_emb.shape[0]
    if n == 0:
        raise ValueError("need at least one sentence pair, got N=0")

    dtype = src_emb.dtype if src_emb.dtype in (torch.float32, torch.float64) else torch.float32
    src = _poison_nonfinite_rows(src_emb.to(dtype), "source")
    tgt = _poison_nonfinite_rows(tgt_emb.to(device=src.device, dtype=dtype), "target")
    src = F.normalize(src, dim=-1)   # NaN rows stay NaN; all-zero rows stay zero (score 0)
    tgt = F.normalize(tgt, dim=-1)

    if scoring == "margin":
        kk = min(int(k), n)
        src_knn = _knn_mean(src, tgt, kk, chunk_size)                  # r(x) for x in src
        tgt_knn = _knn_mean(tgt, src, kk, chunk_size)                  # r(y) for y in tgt
        s2t = _hits(src, tgt, chunk_size, src_knn, tgt_knn)
        t2s = _hits(tgt, src, chunk_size, tgt_knn, src_knn)
    else:
        s2t = _hits(src, tgt, chunk_size)
        t2s = _hits(tgt, src, chunk_size)
    return {"src2tgt": float(s2t.double().mean()), "tgt2src": float(t2s.double().mean()), "n": n}


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
def encode_sentences(model, texts: Sequence[str], batch_size: int = 128, layer: Optional[int] = None,
                     progress: bool = False, desc: str = "sentences", lang: Optional[str] = None) -> Tensor:
    """Encode ``texts`` to ``[N, D]`` L2-normalized float32 embeddings (on the model's device).

    Args:
        model: provides ``tokenize(list[str]) -> {"input_ids", "attention_mask"}``,
            ``parameters()``, and ``encode_text(input_ids=, attention_mask=, normalize=True)``
            (``layer=None``) or ``text(input_ids, attention_mask) -> {"text_hidden_states"}``
            (``layer`` given).
        texts: the sentences, encoded in order ``batch_size`` at a time.
        layer: ``None``: the model's final projected embedding (``encode_text``). An int: the
            hidden states of that layer of the text encoder (0 = embedding layer, ``L`` = layer
            ``L``; negative values count from the last, as Python indexing), mean-pooled over
            the attention mask (padding excluded) and normalized; ``D`` is then the encoder
            width. ``ValueError`` when the encoder has no such layer.
        progress: show a tqdm progress bar (``desc`` is its label).

    Runs under ``torch.no_grad`` in eval mode; the model's previous train/eval mode is restored.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise ValueError(f"layer must be None or an int, got {layer!r}")
    device = next(model.parameters()).device
    was_training = getattr(model, "training", False)
    model.eval()
    embs = []
    try:
        with torch.no_grad():
            bar = progress_bar(batches(texts, batch_size), progress, desc=desc,
                            total=math.ceil(len(texts) / batch_size), unit="batch")
            for batch in bar:
                tok = model.tokenize(list(batch))
                input_ids = tok["input_ids"].to(device)
                attention_mask = tok["attention_mask"].to(device)
                if layer is None:
                    emb = model.encode_text(input_ids=input_ids, attention_mask=attention_mask,
                                            normalize=True, **lang_kwargs(model, lang))
                else:
                    lang_ids = None
                    if lang in getattr(model, "lang_to_id", {}):
                        lang_ids = torch.full((input_ids.shape[0],), model.lang_to_id[lang], device=device)
                    hidden = model.text(input_ids, attention_mask, lang=lang_ids)["text_hidden_states"]
                    n_states = len(hidden)
                    if not -n_states <= layer < n_states:
                        raise ValueError(
                            f"layer {layer} out of range: the text encoder has {n_states} hidden "
                            f"states (0 = embeddings, 1..{n_states - 1} = layers)")
                    emb = F.normalize(mean_pool(hidden[layer], attention_mask), dim=-1)
                embs.append(emb.detach().float())
    finally:
        model.train(was_training)
    return torch.cat(embs)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _read_lines(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"parallel text file not found: {path}")
    # universal newlines: \n, \r\n and \r end a line (but not U+2028 etc., which str.splitlines
    # would split on and so misalign the two sides); a UTF-8 BOM is dropped
    with open(path, encoding="utf-8-sig") as f:
        return [line.strip() for line in f]


def read_parallel_files(src_path, tgt_path) -> tuple:
    """Read two line-aligned text files; returns ``(src_lines, tgt_lines)``, stripped.

    ``FileNotFoundError`` for a missing file; ``ValueError`` naming both files and their line
    counts when the counts differ. A line pair where either side is empty (after stripping) is
    dropped from both lists, keeping the rest aligned; how many were dropped is logged as a
    warning.
    """
    src_path, tgt_path = os.fspath(src_path), os.fspath(tgt_path)
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(f"parallel files are not aligned: {src_path} has {len(src)} lines, "
                         f"{tgt_path} has {len(tgt)} lines")
    keep = [i for i in range(len(src)) if src[i] and tgt[i]]
    n_dropped = len(src) - len(keep)
    if n_dropped:
        logger.warning("read_parallel_files: dropped %d of %d line pairs with an empty side "
                       "(%s, %s)", n_dropped, len(src), src_path, tgt_path)
        src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    return src, tgt


def find_tatoeba_pairs(directory) -> dict:
    """Find LASER Tatoeba v1 pairs in ``directory``: ``{pair: (src_path, tgt_path)}``, sorted.

    ``tatoeba.deu-eng.deu`` + ``tatoeba.deu-eng.eng`` -> ``"deu-eng": (deu file, eng file)``:
    the source is the first language of the pair name. Other files are ignored; a pair with
    only one side present is left out with a warning. ``FileNotFoundError`` when the directory
    does not exist, ``ValueError`` when it holds no complete pair.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Tatoeba directory not found: {directory}")
    names = set(os.listdir(directory))
    found, incomplete = {}, set()
    for name in sorted(names):
        m = _TATOEBA_RE.match(name)
        if not m or not os.path.isfile(os.path.join(directory, name)):
            continue
        a, b, side = m.groups()
        if side not in (a, b) or a == b:
            continue
        pair = f"{a}-{b}"
        src, tgt = f"tatoeba.{pair}.{a}", f"tatoeba.{pair}.{b}"
        if src in names and tgt in names:
            found[pair] = (os.path.join(directory, src), os.path.join(directory, tgt))
        else:
            incomplete.add(pair)
    for pair in sorted(incomplete):
        logger.warning("find_tatoeba_pairs: %s has only one side of pair %s; left out",
                       directory, pair)
    if not found:
        raise ValueError(f"no Tatoeba pairs (tatoeba.xxx-yyy.xxx + tatoeba.xxx-yyy.yyy) "
                         f"in {directory}")
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------------------------
# End-to-end evaluation
# --------------------------------------------------------------------------------------------
def _lang_of(code: str) -> Optional[str]:
    """ISO 639-1 code of a Tatoeba file-name language ("deu" -> "de"), None if unknown."""
    try:
        return normalize_lang(code)
    except ValueError:
        return None


def _encode_unique(model, texts: list, batch_size: int, layer, progress: bool, desc: str,
                   lang: Optional[str] = None) -> Tensor:
    """Encode each distinct text once; rows in the order of ``texts``."""
    uniq = list(dict.fromkeys(texts))
    if len(uniq) < len(texts):
        logger.warning("bitext eval: %s has %d repeated sentences; identical sentences tie, "
                       "which counts against their translations", desc, len(texts) - len(uniq))
    emb = encode_sentences(model, uniq, batch_size=batch_size, layer=layer, progress=progress,
                           desc=desc, lang=lang)
    if len(uniq) == len(texts):
        return emb
    row = {t: j for j, t in enumerate(uniq)}
    return emb[torch.tensor([row[t] for t in texts], device=emb.device)]


def evaluate_bitext(model, tatoeba_dir=None, src=None, tgt=None, scoring: str = "cosine",
                    k: int = DEFAULT_K, layer: Optional[int] = None, batch_size: int = 128,
                    progress: bool = True, pair_name: Optional[str] = None,
                    chunk_size: int = 1024) -> dict:
    """Bitext retrieval accuracy per pair and averaged (see the module docstring for the output).

    Args:
        model: see :func:`encode_sentences`.
        tatoeba_dir: a directory of LASER Tatoeba v1 files (:func:`find_tatoeba_pairs`); every
            pair in it is evaluated. Give either this or ``src`` and ``tgt``.
        src, tgt: two line-aligned files (:func:`read_parallel_files`), evaluated as one pair
            named ``pair_name`` or ``"<src basename>-<tgt basename>"``.
        scoring, k: ``"cosine"`` or ``"margin"`` (ratio margin, ``k`` neighbours), see
            :func:`bitext_accuracy`.
        layer: ``None`` for the final embedding, or an encoder layer to mean-pool, see
            :func:`encode_sentences`.
        batch_size: sentences per forward pass.
        progress: show tqdm progress bars.
        chunk_size: rows per similarity chunk, see :func:`bitext_accuracy`.

    Each distinct sentence is encoded once per side and pair; ties are pessimistic.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if tatoeba_dir is not None:
        if src is not None or tgt is not None:
            raise ValueError("give either tatoeba_dir or src and tgt, not both")
        pairs = find_tatoeba_pairs(tatoeba_dir)
    elif src is not None and tgt is not None:
        src, tgt = os.fspath(src), os.fspath(tgt)
        name = pair_name or f"{os.path.basename(src)}-{os.path.basename(tgt)}"
        pairs = {name: (src, tgt)}
    else:
        raise ValueError("give either tatoeba_dir, or both src and tgt")

    per_pair = {}
    for name, (src_path, tgt_path) in pairs.items():
        src_lines, tgt_lines = read_parallel_files(src_path, tgt_path)
        if not src_lines:
            raise ValueError(f"no non-empty line pairs in {src_path} / {tgt_path}")
        src_code, _, tgt_code = name.partition("-")
        src_emb = _encode_unique(model, src_lines, batch_size, layer, progress, f"{name} [src]", _lang_of(src_code))
        tgt_emb = _encode_unique(model, tgt_lines, batch_size, layer, progress, f"{name} [tgt]", _lang_of(tgt_code))
        res = bitext_accuracy(src_emb, tgt_emb, scoring=scoring, k=k, chunk_size=chunk_size)
        del src_emb, tgt_emb
        per_pair[name] = res
        logger.info("bitext [%s] (%s%s): n=%d, src2tgt %.4f, tgt2src %.4f", name, scoring,
                    f", layer {layer}" if layer is not None else "", res["n"], res["src2tgt"],
                    res["tgt2src"])

    names = list(per_pair)
    average = {d: mean(per_pair[p][d] for p in names) for d in ("src2tgt", "tgt2src")}
    average["mean"] = (average["src2tgt"] + average["tgt2src"]) / 2
    return {"per_pair": per_pair, "average": average}


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------
def format_bitext_table(result: dict) -> str:
    """Plain-text table of an :func:`evaluate_bitext` result; accuracies shown in percent.

    Columns: pair, n, src2tgt, tgt2src, mean (of the two directions); one row per pair
    (sorted), last row ``avg`` (the unweighted mean over pairs; ``n`` shown as ``-``).
    """
    header = ["pair", "n", "src2tgt", "tgt2src", "mean"]

    def cells(name: str, r: dict, n) -> list:
        s2t, t2s = r.get("src2tgt"), r.get("tgt2src")
        mean = r.get("mean")
        if mean is None and s2t is not None and t2s is not None:
            mean = (float(s2t) + float(t2s)) / 2
        return [name, str(n), pct(s2t), pct(t2s), pct(mean)]

    rows = [cells(pair, r, r.get("n", "-"))
            for pair, r in sorted(result.get("per_pair", {}).items())]
    rows.append(cells("avg", result.get("average", {}), "-"))
    return render_table(header, rows)
