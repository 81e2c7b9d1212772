"""Tests for xvl.data.tokenizer: training our own multilingual tokenizer, saving and loading."""
from __future__ import annotations

import itertools
import json
import logging
import unicodedata

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from xvl.data.tokenizer import (  # noqa: E402
    SPECIAL_TOKENS,
    iter_texts,
    load_tokenizer,
    train_tokenizer,
)

EXPECTED_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}

# (subjects, actions, places, builder) per language; Chinese and Japanese are written without spaces.
_LANGS = {
    "en": (
        ["A man", "A woman", "A child", "A dog", "Two people"],
        ["is riding a bicycle", "is running", "is eating lunch", "is reading a book"],
        ["in the park.", "on the street.", "at the beach.", "at home."],
        lambda s, a, p: f"{s} {a} {p}",
    ),
    "de": (
        ["Ein Mann", "Eine Frau", "Ein Kind", "Ein Hund", "Zwei Menschen"],
        ["fährt Fahrrad", "läuft schnell", "isst zu Mittag", "liest ein Buch"],
        ["im Park.", "auf der Straße.", "am Strand.", "zu Hause."],
        lambda s, a, p: f"{s} {a} {p}",
    ),
    "fr": (
        ["Un homme", "Une femme", "Un enfant", "Un chien", "Deux personnes"],
        ["fait du vélo", "court vite", "mange le déjeuner", "lit un livre"],
        ["dans le parc.", "dans la rue.", "à la plage.", "à la maison."],
        lambda s, a, p: f"{s} {a} {p}",
    ),
    "ru": (
        ["Мужчина", "Женщина", "Ребёнок", "Собака", "Два человека"],
        ["едет на велосипеде", "бежит", "ест обед", "читает книгу"],
        ["в парке.", "на улице.", "на пляже.", "дома."],
        lambda s, a, p: f"{s} {a} {p}",
    ),
    "ja": (
        ["男性が", "女性が", "子供が", "犬が", "二人が"],
        ["自転車に乗っています。", "走っています。", "昼ごはんを食べています。", "本を読んでいます。"],
        ["公園で", "通りで", "浜辺で", "家で"],
        lambda s, a, p: f"{s}{p}{a}",
    ),
    "zh": (
        ["一个男人", "一个女人", "一个孩子", "一只狗", "两个人"],
        ["骑自行车。", "跑步。", "吃午饭。", "看书。"],
        ["在公园里", "在街上", "在海边", "在家里"],
        lambda s, a, p: f"{s}{p}{a}",
    ),
}


def make_corpus() -> dict[str, list[str]]:
    """80 sentences per language (480 in all), deterministic."""
    out = {}
    for lang, (subj, act, place, build) in _LANGS.items():
        out[lang] = [build(s, a, p) for s, a, p in itertools.product(subj, act, place)]
    return out


CORPUS = make_corpus()
ALL_TEXTS = [t for lines in CORPUS.values() for t in lines]


def _nows(s: str) -> str:
    return "".join(unicodedata.normalize("NFKC", s).split())


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(ALL_TEXTS, vocab_size=500, max_length=16)


# ------------------------------------------------------------------------------------------------
# iter_texts
# ------------------------------------------------------------------------------------------------
def _write_files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "sents.txt").write_text("Hello world.\n\n   \nHallo Welt.\n", encoding="utf-8")
    caps = [
        {"image": "a.jpg", "captions": [{"lang": "en", "text": "A red circle."},
                                        {"lang": "zh", "text": "一个红色的圆。"}]},
        {"image": "b.jpg", "captions": [{"lang": "ru", "text": "Синий квадрат."},
                                        {"lang": "de", "text": ""}]},
    ]
    (d / "captions.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in caps) + "\n\n", encoding="utf-8"
    )
    vqa = [
        {"image": "a.jpg", "question": {"en": "What color is it?", "ja": "何色ですか？"}, "answer": "red"},
        {"image": "b.jpg", "question": {"fr": "Quelle forme ?"}, "answer": "square"},
    ]
    (tmp_path / "vqa.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in vqa) + "\n", encoding="utf-8"
    )
    (tmp_path / "train.de").write_text("Ein Hund läuft.\nZwei Katzen schlafen.\n", encoding="utf-8")
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"text": "plain record"}) + "\n" + json.dumps({"id": 3}) + "\n", encoding="utf-8"
    )
    (d / "ignored.csv").write_text("not,read\n", encoding="utf-8")
    sub = d / "nested"
    sub.mkdir()
    (sub / "deep.txt").write_text("not read either\n", encoding="utf-8")
    return d


def test_iter_texts_schemas(tmp_path):
    d = _write_files(tmp_path)
    assert list(iter_texts([d / "sents.txt"])) == ["Hello world.", "Hallo Welt."]
    assert list(iter_texts([str(d / "captions.jsonl")])) == [
        "A red circle.", "一个红色的圆。", "Синий квадрат."
    ]
    assert list(iter_texts([tmp_path / "vqa.jsonl"])) == [
        "What color is it?", "何色ですか？", "Quelle forme ?"
    ]
    assert list(iter_texts([tmp_path / "train.de"])) == ["Ein Hund läuft.", "Zwei Katzen schlafen."]
    assert list(iter_texts([tmp_path / "records.jsonl"])) == ["plain record"]
    # directory: *.jsonl and *.txt inside, non-recursive, sorted by name
    assert list(iter_texts([d])) == [
        "A red circle.", "一个红色的圆。", "Синий квадрат.", "Hello world.", "Hallo Welt."
    ]
    # a single path works too
    assert list(iter_texts(str(tmp_path / "train.de")))[0] == "Ein Hund läuft."


def test_iter_texts_missing_file(tmp_path):
    missing = tmp_path / "nope" / "captions.jsonl"
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        iter_texts([tmp_path, missing])  # raised eagerly, before iterating


def test_iter_texts_bad_json_names_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(iter_texts([p]))


# ------------------------------------------------------------------------------------------------
# Training and encoding
# ------------------------------------------------------------------------------------------------
def test_special_token_ids(tok):
    for token, i in EXPECTED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == i
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tok.unk_token_id, tok.mask_token_id) == (3, 4)
    assert (tok.cls_token_id, tok.sep_token_id) == (0, 2)
    for name, value in SPECIAL_TOKENS.items():
        assert getattr(tok, name) == value
    assert tok.padding_side == "right"
    assert tok.model_max_length == 16
    assert 100 < len(tok) <= 500


def test_encoding_adds_bos_eos(tok):
    ids = tok("A man is riding a bicycle in the park.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert 0 not in ids[1:-1] and 2 not in ids[1:-1]
    no_special = tok("A man is riding", add_special_tokens=False)["input_ids"]
    assert 0 not in no_special and 2 not in no_special


def test_pair_encoding_xlmr_style(tok):
    a, b = "A dog is running.", "Ein Hund läuft schnell."
    ids_a = tok(a, add_special_tokens=False)["input_ids"]
    ids_b = tok(b, add_special_tokens=False)["input_ids"]
    assert tok(a, b)["input_ids"] == [0, *ids_a, 2, 2, *ids_b, 2]


def test_mask_token_in_text(tok):
    ids = tok("A man is <mask> in the park.")["input_ids"]
    assert ids.count(4) == 1
    # like XLM-R, <mask> swallows the space before it (no lone "▁" piece in front of it)
    before = tok.convert_ids_to_tokens(ids[ids.index(4) - 1])
    assert before != "\u2581"


def test_padding_batch_with_attention_mask(tok):
    batch = tok(["A dog.", "Ein Mann fährt Fahrrad im Park.", "一个孩子在家里看书。"], padding=True)
    lengths = [len(x) for x in batch["input_ids"]]
    assert len(set(lengths)) == 1
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)  # right padding
        assert ids[n - 1] == 2 and all(i == 1 for i in ids[n:])
    assert min(sum(m) for m in batch["attention_mask"]) < lengths[0]


def test_padding_returns_tensors(tok):
    torch = pytest.importorskip("torch")
    batch = tok(["A dog.", "Eine Frau liest ein Buch am Strand."], padding=True, return_tensors="pt")
    assert isinstance(batch["input_ids"], torch.Tensor)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].dtype == torch.long


def test_truncation_to_max_length(tok):
    long = " ".join(CORPUS["en"][:10])
    enc = tok(long, truncation=True)["input_ids"]
    assert len(enc) == 16 and enc[0] == 0 and enc[-1] == 2
    enc = tok(long, truncation=True, max_length=8)["input_ids"]
    assert len(enc) == 8 and enc[-1] == 2
    batch = tok([long, "A dog."], truncation=True, padding="max_length")
    assert all(len(x) == 16 for x in batch["input_ids"])


@pytest.mark.parametrize("lang", ["zh", "ja"])
def test_cjk_without_spaces_splits_and_round_trips(tok, lang):
    for text in CORPUS[lang][::7]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len([i for i in ids if i != tok.convert_tokens_to_ids("\u2581")]) >= 3, text
        assert tok.unk_token_id not in ids
        assert _nows(tok.decode(ids)) == _nows(text)


@pytest.mark.parametrize("lang", sorted(_LANGS))
def test_decode_round_trips_all_languages(tok, lang):
    for text in CORPUS[lang][::9]:
        ids = tok(text)["input_ids"]
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert _nows(decoded) == _nows(text)
        if lang not in ("zh", "ja"):
            assert decoded.strip() == text  # spaces are preserved too


def test_unk_is_rare(tok):
    ids = tok(ALL_TEXTS, add_special_tokens=False)["input_ids"]
    flat = [i for seq in ids for i in seq]
    assert flat.count(tok.unk_token_id) == 0
    # unseen recombinations of seen words: still (almost) no unk
    unseen = ["Собака читает книгу дома.", "两个人在海边看书。", "犬が家で走っています。", "Un chien lit un livre."]
    flat = [i for seq in tok(unseen)["input_ids"] for i in seq]
    assert flat.count(tok.unk_token_id) == 0
    # characters never seen are unk, not a crash
    assert tok.unk_token_id in tok("\U0001F600")["input_ids"]


def test_lowercase_option():
    t = train_tokenizer(ALL_TEXTS[:160], vocab_size=200, lowercase=True)
    assert t("A MAN")["input_ids"] == t("a man")["input_ids"]


def test_nfkc_normalization(tok):
    # full-width latin letters normalise to ASCII
    assert tok("Ａ ｍａｎ")["input_ids"] == tok("A man")["input_ids"]
    # whitespace runs are collapsed
    assert tok("A   man \t is  running")["input_ids"] == tok("A man is running")["input_ids"]


# ------------------------------------------------------------------------------------------------
# Inputs: files, directories, errors
# ------------------------------------------------------------------------------------------------
def test_train_from_files_and_directory(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "en_de.txt").write_text("\n".join(CORPUS["en"] + CORPUS["de"]) + "\n", encoding="utf-8")
    with open(d / "captions.jsonl", "w", encoding="utf-8") as f:
        for fr, ru in zip(CORPUS["fr"], CORPUS["ru"]):
            rec = {"image": "x.jpg", "captions": [{"lang": "fr", "text": fr}, {"lang": "ru", "text": ru}]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    vqa = tmp_path / "vqa.jsonl"
    with open(vqa, "w", encoding="utf-8") as f:
        for ja, zh in zip(CORPUS["ja"], CORPUS["zh"]):
            f.write(json.dumps({"question": {"ja": ja, "zh": zh}, "answer": "x"}, ensure_ascii=False) + "\n")
    m30k = tmp_path / "train.de"
    m30k.write_text("\n".join(CORPUS["de"]) + "\n", encoding="utf-8")

    files = [str(d / "en_de.txt"), str(d / "captions.jsonl"), str(vqa), str(m30k)]
    t_files = train_tokenizer(files, vocab_size=500)
    t_dir = train_tokenizer([d, vqa], vocab_size=500)  # Path objects and a directory
    for t in (t_files, t_dir):
        assert t.convert_tokens_to_ids("<pad>") == 1 and t.convert_tokens_to_ids("<mask>") == 4
        for lang in ("en", "fr", "ru", "ja", "zh"):
            ids = t(CORPUS[lang][3], add_special_tokens=False)["input_ids"]
            assert t.unk_token_id not in ids, lang
    # the file contents were trained on (not the path strings): Cyrillic / kana are in the vocab
    vocab = t_files.get_vocab()
    assert "Ж" in vocab and "読" in vocab and "ß" in vocab
    assert not any("/" in piece for piece in vocab if piece != "</s>")

    # a single path (str) is accepted as well
    single = train_tokenizer(str(vqa), vocab_size=200)
    assert single.unk_token_id not in single(CORPUS["zh"][0])["input_ids"]


def test_train_missing_file_names_it(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("hello world\n", encoding="utf-8")
    missing = str(tmp_path / "missing_captions.jsonl")
    with pytest.raises(FileNotFoundError, match="missing_captions.jsonl"):
        train_tokenizer([str(good), missing], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="missing_captions.jsonl"):
        train_tokenizer([missing], vocab_size=100)


def test_train_from_generator():
    t = train_tokenizer((s for s in ALL_TEXTS[:200]), vocab_size=200)
    assert t("A man is running.")["input_ids"][0] == 0


@pytest.mark.parametrize("model", ["bpe", "unigram"])
@pytest.mark.parametrize("split_cjk", [True, False])
def test_both_models_train_and_round_trip(model, split_cjk):
    t = train_tokenizer(ALL_TEXTS, vocab_size=500, model=model, min_frequency=2, split_cjk=split_cjk)
    for token, i in EXPECTED_IDS.items():
        assert t.convert_tokens_to_ids(token) == i
    for lang in _LANGS:
        text = CORPUS[lang][5]
        ids = t(text)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2 and t.unk_token_id not in ids
        assert _nows(t.decode(ids, skip_special_tokens=True)) == _nows(text)
    zh = t(CORPUS["zh"][0], add_special_tokens=False)["input_ids"]
    assert len(zh) >= 2
    a, b = CORPUS["en"][0], CORPUS["de"][0]
    assert t(a, b)["input_ids"].count(2) == 3


def test_split_cjk_isolates_han_characters():
    zh = CORPUS["zh"][0]
    t = train_tokenizer(ALL_TEXTS, vocab_size=500)
    pieces = [p.lstrip("\u2581") for p in t.tokenize(zh)]
    han = [p for p in pieces if any("\u4e00" <= ch <= "\u9fff" for ch in p)]
    assert han and all(len(p) == 1 for p in han), pieces
    # and no spurious word-boundary markers between characters: decoding restores the text
    assert t.decode(t(zh)["input_ids"], skip_special_tokens=True).replace(" ", "") == zh.replace(" ", "")


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_punctuation_is_its_own_token(model):
    """'park.' and 'park' must share the word token, or sentence-final words get split meanings."""
    t = train_tokenizer(ALL_TEXTS, vocab_size=500, model=model)
    end, mid = t.tokenize("in the park."), t.tokenize("in the park today")
    assert end[-1] == "." and end[:-1] == mid[: len(end) - 1]
    assert t.decode(t("A man is in the park.")["input_ids"], skip_special_tokens=True) == "A man is in the park."


def test_unknown_model_raises():
    with pytest.raises(ValueError, match="wordpiece"):
        train_tokenizer(ALL_TEXTS[:10], model="wordpiece")


def test_tiny_vocab_size():
    # smaller than specials + alphabet: BPE keeps the alphabet anyway, Unigram refuses clearly
    t = train_tokenizer(ALL_TEXTS[:50], vocab_size=10, model="bpe")
    assert t.convert_tokens_to_ids("<mask>") == 4
    assert t(CORPUS["en"][0])["input_ids"][0] == 0
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(ALL_TEXTS[:50], vocab_size=10, model="unigram")


# ------------------------------------------------------------------------------------------------
# Saving / loading
# ------------------------------------------------------------------------------------------------
def _assert_same_encodings(a, b):
    singles = [CORPUS[l][i] for l in _LANGS for i in (0, 33)] + ["A man is <mask> in the park.", "\U0001F600 x"]
    assert a(singles)["input_ids"] == b(singles)["input_ids"]
    pairs = list(zip(CORPUS["en"][:5], CORPUS["zh"][:5]))
    ea = a([p[0] for p in pairs], [p[1] for p in pairs], padding=True)
    eb = b([p[0] for p in pairs], [p[1] for p in pairs], padding=True)
    assert ea["input_ids"] == eb["input_ids"]
    assert ea["attention_mask"] == eb["attention_mask"]
    long = " ".join(CORPUS["fr"][:10])
    assert a(long, truncation=True)["input_ids"] == b(long, truncation=True)["input_ids"]
    for token, i in EXPECTED_IDS.items():
        assert b.convert_tokens_to_ids(token) == i
    assert a.get_vocab() == b.get_vocab()
    ids = a(singles[3])["input_ids"]
    assert a.decode(ids, skip_special_tokens=True) == b.decode(ids, skip_special_tokens=True)


def test_save_and_load_round_trip(tok, tmp_path):
    out = tmp_path / "tok"
    tok.save_pretrained(out)
    loaded = load_tokenizer(str(out))
    _assert_same_encodings(tok, loaded)
    assert loaded.model_max_length == 16
    assert loaded.padding_side == "right"
    assert (loaded.pad_token, loaded.mask_token, loaded.cls_token, loaded.sep_token) == (
        "<pad>", "<mask>", "<s>", "</s>"
    )
    # override max length on load (Path objects accepted)
    loaded32 = load_tokenizer(out, max_length=32)
    assert loaded32.model_max_length == 32
    long = " ".join(CORPUS["en"][:10])
    assert len(loaded32(long, truncation=True)["input_ids"]) == 32


def test_bpe_save_and_load_round_trip(tmp_path):
    t = train_tokenizer(ALL_TEXTS, vocab_size=400, model="bpe")
    t.save_pretrained(tmp_path / "bpe")
    _assert_same_encodings(t, load_tokenizer(tmp_path / "bpe"))


def _write_hf_dir(tok, d, config):
    """A tokenizer directory as other tools / older transformers write it."""
    d.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def test_local_hf_tokenizer_directory(tok, tmp_path):
    added = {
        str(i): {"content": t, "lstrip": t == "<mask>", "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for t, i in EXPECTED_IDS.items()
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
              "added_tokens_decoder": added, **SPECIAL_TOKENS}
    d = tmp_path / "hf_tok"
    _write_hf_dir(tok, d, config)
    loaded = load_tokenizer(str(d))
    assert loaded.model_max_length == 512
    assert loaded.pad_token_id == 1 and loaded.mask_token_id == 4
    assert loaded(CORPUS["de"][0], CORPUS["ru"][0])["input_ids"] == tok(CORPUS["de"][0], CORPUS["ru"][0])["input_ids"]
    assert load_tokenizer(str(d), max_length=24).model_max_length == 24

    # the same directory saved via save_pretrained also loads
    d2 = tmp_path / "saved"
    loaded.save_pretrained(d2)
    assert load_tokenizer(str(d2))(CORPUS["ja"][0])["input_ids"] == tok(CORPUS["ja"][0])["input_ids"]


def test_load_without_pad_token_raises(tok, tmp_path):
    d = tmp_path / "nopad"
    _write_hf_dir(tok, d, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                           "eos_token": "</s>", "unk_token": "<unk>"})
    with pytest.raises(ValueError, match="pad token"):
        load_tokenizer(str(d))


def test_load_without_mask_token_warns(tok, tmp_path, caplog):
    d = tmp_path / "nomask"
    _write_hf_dir(tok, d, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                           "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    with caplog.at_level(logging.WARNING, logger="xvl.data.tokenizer"):
        loaded = load_tokenizer(str(d))
    assert loaded.pad_token_id == 1
    assert "mask token" in caplog.text
    with pytest.raises(ValueError, match="mask token"):
        load_tokenizer(str(d), require_mask=True)


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_tok"):
        load_tokenizer(str(tmp_path / "no_such_tok"))


def test_load_accepts_tokenizer_object(tok):
    assert load_tokenizer(tok) is tok
