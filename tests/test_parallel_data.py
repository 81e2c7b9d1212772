"""Parallel text data: language codes, readers, temperature-sampled dataset, collator."""
import collections
import json
import os

import pytest
import torch

from conftest import SHARED_DATA
from xvl.data.images import SkipCounter
from xvl.data.languages import (TATOEBA_LANGUAGES, normalize_lang, tatoeba_code, to_iso639_3)
from xvl.data.parallel import (ParallelCollator, ParallelPair, ParallelTextDataset,
                               group_by_lang_pair, pairs_from_captions, read_aligned_files,
                               read_hf_pairs, read_pairs_file, read_tatoeba)

FLICKR8K_ML = os.path.join(SHARED_DATA, "flickr8k-ml", "train.jsonl")


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ languages
def test_normalize_lang_forms():
    assert normalize_lang("deu") == normalize_lang("de") == normalize_lang("ger") == "de"
    assert normalize_lang("DE_de") == normalize_lang("de-AT") == "de"
    assert normalize_lang("zh-CN") == normalize_lang("chi") == normalize_lang("zho") == "zh"
    assert normalize_lang("cmn") == "zh" and normalize_lang("zh_Hant_TW") == "zh"
    assert normalize_lang("en_US") == "en" and normalize_lang("pt-BR") == "pt"
    assert normalize_lang("fre") == normalize_lang("fra") == "fr"
    assert normalize_lang("cze") == normalize_lang("ces") == "cs"
    assert normalize_lang("dut") == normalize_lang("nld") == "nl"
    assert normalize_lang("yue") == "yue" and normalize_lang("pes") == "fa"
    assert to_iso639_3("de") == "deu" and to_iso639_3("ger") == "deu"
    assert to_iso639_3("zh-CN") == "zho" and to_iso639_3("yue") == "yue"
    assert tatoeba_code("zh") == "cmn" and tatoeba_code("de") == "deu"
    assert len(TATOEBA_LANGUAGES) >= 110
    for code in TATOEBA_LANGUAGES:  # every LASER Tatoeba code is known and round-trips
        assert normalize_lang(to_iso639_3(code)) == normalize_lang(code)


def test_normalize_lang_unknown():
    with pytest.raises(ValueError, match="'xq'"):
        normalize_lang("xq")
    with pytest.raises(ValueError, match="deuu.*did you mean 'deu'"):
        normalize_lang("deuu")


# ------------------------------------------------------------------ aligned files
def test_aligned_files_all_and_pivot(tmp_path):
    write(tmp_path / "train.en", ["a dog", "a cat", "a bird"])
    write(tmp_path / "train.de", ["ein Hund", "eine Katze", "ein Vogel"])
    write(tmp_path / "train.fr", ["un chien", "un chat", "un oiseau"])
    prefix = str(tmp_path / "train")
    allp = read_aligned_files(prefix, ["en", "de", "fr"])
    assert len(allp) == 9
    assert allp[0] == ParallelPair("a dog", "ein Hund", "en", "de")
    assert {(p.src_lang, p.tgt_lang) for p in allp} == {("en", "de"), ("en", "fr"), ("de", "fr")}
    piv = read_aligned_files(prefix, ["en", "de", "fr"], pairs="pivot:eng")
    assert len(piv) == 6 and all(p.tgt_lang == "en" for p in piv)
    assert ParallelPair("un oiseau", "a bird", "fr", "en") in piv
    by_dict = read_aligned_files({"en": tmp_path / "train.en", "de": tmp_path / "train.de"})
    assert [p.tgt_text for p in by_dict] == ["ein Hund", "eine Katze", "ein Vogel"]
    with pytest.raises(ValueError, match="pivot"):
        read_aligned_files(prefix, ["en", "de"], pairs="pivot:fr")


def test_aligned_files_misaligned(tmp_path):
    en = write(tmp_path / "train.en", ["a", "b", "c"])
    de = write(tmp_path / "train.de", ["a", "b"])
    with pytest.raises(ValueError) as e:
        read_aligned_files({"en": en, "de": de})
    msg = str(e.value)
    assert en in msg and de in msg and "3" in msg and "2" in msg


def test_aligned_files_empty_lines_counted(tmp_path):
    write(tmp_path / "t.en", ["a dog", "", "a bird", "a fish"])
    write(tmp_path / "t.de", ["ein Hund", "eine Katze", "  ", "ein Fisch"])
    skips = SkipCounter("test")
    pairs = read_aligned_files(str(tmp_path / "t"), ["en", "de"], skips=skips)
    assert [p.src_text for p in pairs] == ["a dog", "a fish"]
    assert skips.as_dict() == {"empty_line": 2}


def test_read_tatoeba(tmp_path):
    write(tmp_path / "tatoeba.deu-eng.deu", ["Ich bin hier.", "Danke."])
    write(tmp_path / "tatoeba.deu-eng.eng", ["I am here.", "Thanks."])
    write(tmp_path / "tatoeba.cmn-eng.cmn", ["谢谢。", ""])
    write(tmp_path / "tatoeba.cmn-eng.eng", ["Thanks.", "Hello."])
    skips = SkipCounter("tatoeba")
    got = read_tatoeba(tmp_path, skips=skips)
    assert list(got) == ["cmn-eng", "deu-eng"]
    assert got["deu-eng"][1] == ParallelPair("Danke.", "Thanks.", "de", "en")
    assert got["cmn-eng"] == [ParallelPair("谢谢。", "Thanks.", "zh", "en")]
    assert skips.as_dict() == {"empty_line": 1}
    assert list(read_tatoeba(tmp_path, languages=["de"])) == ["deu-eng"]
    write(tmp_path / "tatoeba.fra-eng.fra", ["Merci.", "Bonjour."])
    write(tmp_path / "tatoeba.fra-eng.eng", ["Thanks."])
    with pytest.raises(ValueError, match=r"tatoeba\.fra-eng\.fra.*2.*tatoeba\.fra-eng\.eng.*1"):
        read_tatoeba(tmp_path)


# ------------------------------------------------------------------ pair files
def test_pairs_tsv_two_and_four_columns(tmp_path):
    p2 = write(tmp_path / "p2.tsv", ["a dog\tein Hund", "", "a cat\t", "a bird\tein Vogel"])
    skips = SkipCounter("tsv")
    pairs = read_pairs_file(p2, src_lang="en", tgt_lang="deu", skips=skips)
    assert pairs == [ParallelPair("a dog", "ein Hund", "en", "de"),
                     ParallelPair("a bird", "ein Vogel", "en", "de")]
    assert skips.total == 2
    with pytest.raises(ValueError, match="src_lang"):
        read_pairs_file(p2)
    p4 = write(tmp_path / "p4.tsv", ["eng\ta dog\tfra\tun chien", "zh-CN\t狗\ten_US\ta dog"])
    assert read_pairs_file(p4) == [ParallelPair("a dog", "un chien", "en", "fr"),
                                   ParallelPair("狗", "a dog", "zh", "en")]
    bad = write(tmp_path / "bad.tsv", ["a\tb\tc"])
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        read_pairs_file(bad, "en", "de")


def test_pairs_jsonl(tmp_path):
    recs = [{"src": "a dog", "tgt": "un chien", "src_lang": "en", "tgt_lang": "fr"},
            {"src": "a cat", "tgt": "eine Katze", "tgt_lang": "de"},
            {"src": "", "tgt": "x", "src_lang": "en", "tgt_lang": "fr"}]
    path = write(tmp_path / "p.jsonl", [json.dumps(r) for r in recs])
    skips = SkipCounter("jsonl")
    pairs = read_pairs_file(path, src_lang="eng", skips=skips)
    assert pairs == [ParallelPair("a dog", "un chien", "en", "fr"),
                     ParallelPair("a cat", "eine Katze", "en", "de")]
    assert skips.as_dict() == {"empty_text": 1}


# ------------------------------------------------------------------ HF datasets
def test_hf_pairs_from_dataset_object():
    from datasets import Dataset

    flat = Dataset.from_dict({"en": ["a dog", "a cat", None], "de": ["ein Hund", "eine Katze", "x"]})
    skips = SkipCounter("hf")
    pairs = read_hf_pairs(flat, "en", "de", "en", "de", skips=skips)
    assert pairs == [ParallelPair("a dog", "ein Hund", "en", "de"),
                     ParallelPair("a cat", "eine Katze", "en", "de")]
    assert skips.total == 1
    with pytest.raises(ValueError, match="columns"):
        read_hf_pairs(flat, "english", "de", "en", "de")
    tr = Dataset.from_dict({"translation": [{"de": "ein Hund", "en": "a dog"},
                                            {"de": "eine Katze", "en": "a cat"}]})
    pairs = read_hf_pairs(tr, src_lang="eng", tgt_lang="ger")
    assert pairs[0] == ParallelPair("a dog", "ein Hund", "en", "de")
    assert len(read_hf_pairs(tr)) == 2  # exactly two keys: taken in order


def test_hf_pairs_from_local_json(tmp_path):
    rows = [{"translation": {"de": "ein Hund", "en": "a dog"}},
            {"translation": {"de": "eine Katze", "en": ""}}]
    path = write(tmp_path / "tr.jsonl", [json.dumps(r) for r in rows])
    skips = SkipCounter("hf")
    pairs = read_hf_pairs(path, src_lang="de", tgt_lang="en", skips=skips,
                          cache_dir=str(tmp_path / "cache"))
    assert pairs == [ParallelPair("ein Hund", "a dog", "de", "en")]
    assert skips.total == 1
    with pytest.raises(FileNotFoundError, match="never downloads"):
        read_hf_pairs(str(tmp_path / "nope.json"), "a", "b", "en", "de")


# ------------------------------------------------------------------ captions jsonl
def _cap(lang, text, kind, source):
    return {"lang": lang, "text": text, "kind": kind, "source": source}


def test_pairs_from_captions(tmp_path):
    recs = [
        {"image_id": "1", "image": "images/1.jpg", "captions": [
            _cap("en", "A dog runs .", "original", "flickr8k"),
            _cap("en", "A brown dog runs.", "original", "m30k"),
            _cap("de", "Ein brauner Hund rennt.", "human_translation", "m30k"),
            _cap("fr", "Un chien brun court.", "human_translation", "m30k"),
            _cap("zh", "狗在跑。", "native", "cn")]},
        # original not identifiable (no caption of the translations' source): no English pair
        {"image_id": "2", "image": "images/2.jpg", "captions": [
            _cap("en", "A cat sleeps .", "original", "flickr8k"),
            _cap("en", "A cat is sleeping .", "original", "flickr8k"),
            _cap("de", "Eine Katze schläft.", "human_translation", "m30k"),
            _cap("cs", "", "human_translation", "m30k"),
            _cap("fr", "Un chat dort.", "human_translation", "m30k")]},
    ]
    path = write(tmp_path / "caps.jsonl", [json.dumps(r) for r in recs])
    skips = SkipCounter("caps")
    pairs = pairs_from_captions(path, skips=skips)
    assert set(pairs) == {
        ParallelPair("Ein brauner Hund rennt.", "Un chien brun court.", "de", "fr"),
        ParallelPair("Ein brauner Hund rennt.", "A brown dog runs.", "de", "en"),
        ParallelPair("Un chien brun court.", "A brown dog runs.", "fr", "en"),
        ParallelPair("Eine Katze schläft.", "Un chat dort.", "de", "fr"),
    }
    assert skips.as_dict() == {"empty_text": 1, "original_unidentified": 2}
    assert len(pairs_from_captions(path, kinds=("human_translation",))) == 2

    # a reference (Multi30K-style aligned files) identifies the original of image 2
    write(tmp_path / "ref.en", ["A cat is sleeping .", "Something else"])
    write(tmp_path / "ref.de", ["Eine Katze schläft.", "Etwas"])
    pairs = pairs_from_captions(path, reference={"en": str(tmp_path / "ref.en"),
                                                 "de": str(tmp_path / "ref.de")})
    assert ParallelPair("Eine Katze schläft.", "A cat is sleeping .", "de", "en") in pairs
    assert not any(p.src_lang == "fr" and p.tgt_lang == "en" and p.src_text == "Un chat dort."
                   for p in pairs)


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.exists(FLICKR8K_ML), reason=f"{FLICKR8K_ML} not present")
def test_pairs_from_flickr8k_ml():
    skips = SkipCounter("flickr8k-ml")
    by_pair = group_by_lang_pair(pairs_from_captions(FLICKR8K_ML, skips=skips))
    # every image with Multi30K translations has one de, fr, cs and the English original
    assert set(by_pair) == {"cs-de", "cs-fr", "de-fr", "cs-en", "de-en", "en-fr"}
    n = len(by_pair["de-fr"])
    assert n == 6993 and all(len(v) == n for v in by_pair.values())
    # the five zh flickr8kcn_zhm translations per image are not paired with a guessed original
    assert set(skips.as_dict()) <= {"original_unidentified", "empty_text"}
    de_en = by_pair["de-en"][0]
    assert de_en.src_lang == "de" and de_en.tgt_lang == "en"


# ------------------------------------------------------------------ dataset
LANG_IDS = {"en": 0, "de": 1, "fr": 2}


def _corpus(n, a="de", b="en", tag=""):
    return [ParallelPair(f"{tag}{a}{i}", f"{tag}{b}{i}", a, b) for i in range(n)]


def _freqs(ds, epochs=range(3)):
    c = collections.Counter(ds.locate((e, i))[0] for e in epochs for i in range(len(ds)))
    total = sum(c.values())
    return {k: v / total for k, v in c.items()}


def test_alpha_sampling_frequencies():
    corpora = {"big": _corpus(900, tag="b"), "small": _corpus(100, "fr", "en", tag="s")}
    f0 = _freqs(ParallelTextDataset(corpora, LANG_IDS, alpha=0.0))
    assert f0["big"] == pytest.approx(0.5, abs=0.02) and f0["small"] == pytest.approx(0.5, abs=0.02)
    f1 = _freqs(ParallelTextDataset(corpora, LANG_IDS, alpha=1.0))
    assert f1["big"] == pytest.approx(0.9, abs=0.02)
    fh = _freqs(ParallelTextDataset(corpora, LANG_IDS, alpha=0.5))
    assert fh["small"] == pytest.approx(10 / 40, abs=0.02)  # 100^.5 / (900^.5 + 100^.5)
    # up-sampled small corpus: every item once before any twice within an epoch
    ds = ParallelTextDataset(corpora, LANG_IDS, alpha=0.0)
    items = [ds.locate((0, i))[1] for i in range(len(ds)) if ds.locate((0, i))[0] == "small"]
    assert set(collections.Counter(items).values()) == {5}


def test_dataset_determinism_and_swap():
    corpora = {"a": _corpus(50), "b": _corpus(30, "fr", "en")}
    d1 = ParallelTextDataset(corpora, LANG_IDS, seed=3, alpha=0.3)
    d2 = ParallelTextDataset(corpora, LANG_IDS, seed=3, alpha=0.3)
    assert [d1[(1, i)] for i in range(len(d1))] == [d2[(1, i)] for i in range(len(d2))]
    assert [d1[(0, i)]["text"] for i in range(20)] != [d1[(1, i)]["text"] for i in range(20)]
    assert d1[5] == d1[(0, 5)]
    sides = [d1[(0, i)]["lang"] for i in range(len(d1))]
    assert LANG_IDS["en"] in sides and LANG_IDS["de"] in sides  # swapped some, not all
    no_swap = ParallelTextDataset(corpora, LANG_IDS, swap=False)
    assert all(no_swap[(0, i)]["pair_lang"] == LANG_IDS["en"] for i in range(len(no_swap)))
    item = d1[(2, 7)]
    name, j = d1.locate((2, 7))
    pair = corpora[name][j]
    assert {item["text"], item["pair_text"]} == {pair.src_text, pair.tgt_text}
    with pytest.raises(IndexError):
        d1[(0, len(d1))]


def test_dataset_unknown_language():
    with pytest.raises(ValueError, match=r"cs.*Known languages: \['de', 'en', 'fr'\]"):
        ParallelTextDataset({"x": _corpus(3, "cs", "en")}, LANG_IDS)


# ------------------------------------------------------------------ collator
@pytest.fixture(scope="module")
def tokenizer():
    from xvl.data.tokenizer import train_tokenizer

    texts = ["a dog runs in the park", "ein Hund rennt im Park", "un chien court dans le parc",
             "a cat sleeps on the sofa", "eine Katze schläft auf dem Sofa"] * 4
    return train_tokenizer(texts, vocab_size=300)


def test_collator_keys_shapes_and_truncation(tokenizer):
    corpora = {"de-en": [ParallelPair("ein Hund rennt im Park " * 10, "a dog", "de", "en"),
                         ParallelPair("eine Katze", "a cat sleeps", "de", "en")],
               "fr-en": [ParallelPair("un chien", "a dog runs", "fr", "en")]}
    ds = ParallelTextDataset(corpora, LANG_IDS, swap=False, alpha=1.0)
    batch = ParallelCollator(tokenizer, max_length=8)([ds[(0, i)] for i in range(len(ds))])
    assert set(batch) == {"input_ids", "attention_mask", "lang", "pair_input_ids",
                          "pair_attention_mask", "pair_lang", "n_skipped"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == batch["pair_input_ids"].shape[0] == 3
    assert batch["input_ids"].shape[1] == 8  # the long sentence is truncated at max_length
    assert batch["pair_input_ids"].shape == batch["pair_attention_mask"].shape
    assert batch["pair_input_ids"].shape[1] <= 8
    assert batch["lang"].dtype == torch.long and batch["pair_lang"].tolist() == [0, 0, 0]
    assert sorted(batch["lang"].tolist()) == [1, 1, 2]
    assert batch["n_skipped"].item() == 0 and batch["n_skipped"].dim() == 0
