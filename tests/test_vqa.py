"""Tests for VQA: the gqa-schema reader, answer vocabulary, soft targets, the dataset, the loss,
accuracy bookkeeping (a monkeypatched predictor), batched prediction vs a one-by-one reference,
fine-tuning (loss goes down, the saved model reloads and predicts identically) and the CLI."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import SHARED_DATA, TINY_TEXTS, tiny_model_config
from xvl.data.images import SkipCounter
from xvl.data.vqa import (
    VQACollator,
    VQADataset,
    VQARecord,
    dense_target,
    load_answer_vocabulary,
    read_vqa_jsonl,
    soft_target,
)
from xvl.evaluation.vqa import answer_logits, evaluate_vqa, format_vqa_table, vqa_accuracy
from xvl.train.finetune_vqa import finetune_vqa, vqa_loss

DEMO_LANGS = ["de", "en", "es", "fr", "ja", "ru", "zh"]


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n")
    return str(path)


def _q(qid, question, answers, image="images/a.png"):
    return {"qid": qid, "image": image, "question": question, "answers": answers}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# --------------------------------------------------------------------------------------------
# fixtures: a tiny demo dataset, a tokenizer that knows its words, a tiny fused model directory
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xvl.data.demo import generate_demo

    return generate_demo(str(tmp_path_factory.mktemp("vqa_demo")), n_train=12, n_val=4, image_size=32)


@pytest.fixture(scope="module")
def vqa_tokenizer(demo):
    from xvl.data.tokenizer import train_tokenizer

    texts = [t for rec in read_vqa_jsonl(demo.questions_train) for t in rec.questions.values()]
    return train_tokenizer(TINY_TEXTS + texts, vocab_size=400, max_length=24)


def _fused_model(tokenizer, seed=0):
    from xvl.config import FusionConfig
    from xvl.models.model import XVLModel

    torch.manual_seed(seed)
    cfg = tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0))
    cfg.text.max_length = 24
    return XVLModel(cfg, tokenizer).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vqa_tokenizer):
    d = str(tmp_path_factory.mktemp("vqa_model") / "model")
    _fused_model(vqa_tokenizer).save_pretrained(d)
    return d


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------
def test_reader_reads_and_counts_empty_questions(tmp_path):
    path = _write_lines(tmp_path / "q.jsonl", [
        _q("1", {"en": " What colour? ", "de": "Welche Farbe?"}, {"red": 1.0}),
        "",
        _q(2, {"en": "   ", "de": "Form?"}, {"circle": 1}),   # empty en text: skipped, counted
        _q("3", {"en": ""}, {"no": 1.0}),                      # nothing left: the record is skipped
    ])
    skips = SkipCounter("t")
    recs = read_vqa_jsonl(path, skips=skips)
    assert [r.qid for r in recs] == ["1", "2"]
    assert recs[0].questions == {"en": "What colour?", "de": "Welche Farbe?"}
    assert recs[1].questions == {"de": "Form?"} and recs[1].answers == {"circle": 1.0}
    assert (recs[0].line, recs[1].line) == (1, 3)
    assert skips.as_dict() == {"empty_question": 2, "no_question": 1}
    # a language filter is not a skip
    skips = SkipCounter("t")
    recs = read_vqa_jsonl(path, languages=["de"], skips=skips)
    assert [r.questions for r in recs] == [{"de": "Welche Farbe?"}, {"de": "Form?"}]
    assert skips.as_dict() == {}


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"bad\.jsonl, line 2: invalid JSON"),
    ("[1, 2]", r"bad\.jsonl, line 2: expected a JSON object"),
    (json.dumps({"image": "a.png", "question": {"en": "q"}, "answers": {"a": 1}}), r"line 2: record has no \"qid\""),
    (json.dumps({"qid": "9", "question": {"en": "q"}, "answers": {"a": 1}}), r"line 2: record 9 has no \"image\""),
    (json.dumps({"qid": "9", "image": "a.png", "question": "q", "answers": {"a": 1}}), r"line 2: .*\"question\""),
    (json.dumps({"qid": "9", "image": "a.png", "question": {"en": "q"}}), r"line 2: .*\"answers\""),
    (json.dumps(_q("9", {"en": "q"}, {"a": -1})), r"line 2: .*score -1"),
    (json.dumps(_q("1", {"en": "q"}, {"a": 1})), r"line 2: qid '1' already used on line 1"),
])
def test_reader_errors_name_file_and_line(tmp_path, bad, message):
    path = _write_lines(tmp_path / "bad.jsonl", [_q("1", {"en": "q"}, {"a": 1.0}), bad])
    with pytest.raises(ValueError, match=message):
        read_vqa_jsonl(path)


def test_reader_unknown_language_and_missing_file(tmp_path):
    path = _write_lines(tmp_path / "langs.jsonl", [
        _q("1", {"en": "q", "de": "f"}, {"a": 1.0}),
        _q("2", {"en": "q", "xx": "?"}, {"a": 1.0}),
    ])
    with pytest.raises(ValueError, match=r"langs\.jsonl, line 2: question language 'xx' is not in"):
        read_vqa_jsonl(path, known_languages=["en", "de"])
    # filtered out: no error
    assert len(read_vqa_jsonl(path, languages=["en"], known_languages=["en"])) == 2
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_vqa_jsonl(tmp_path / "nope.jsonl")


def test_answer_vocabulary_forms(tmp_path):
    as_dict = tmp_path / "d.json"
    as_dict.write_text(json.dumps({"no": 1, "yes": 0, "red": 2}))
    as_list = tmp_path / "l.json"
    as_list.write_text(json.dumps(["yes", "no", "red"]))
    assert load_answer_vocabulary(as_dict) == load_answer_vocabulary(as_list) == ["yes", "no", "red"]
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"no": 0, "yes": 2}))
    with pytest.raises(ValueError, match=r"gap\.json: answer indices must be exactly 0\.\.1"):
        load_answer_vocabulary(gap)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps(["a", "a"]))
    with pytest.raises(ValueError, match="dup.json.*duplicates"):
        load_answer_vocabulary(dup)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_answer_vocabulary(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------
# soft targets, dataset, collator, loss
# --------------------------------------------------------------------------------------------
def test_soft_target_exact():
    vocab = {"b": 0, "a": 1, "c": 2, "d": 3}
    sparse, n_oov = soft_target({"a": 0.3, "b": 1.0, "zzz": 0.6, "c": 1.7}, vocab)
    assert sparse == {1: 0.3, 0: 1.0, 2: 1.0} and n_oov == 1  # scores clipped to [0, 1]
    assert dense_target(sparse, 4).tolist() == pytest.approx([1.0, 0.3, 1.0, 0.0])
    assert soft_target({"zzz": 1.0}, vocab) == ({}, 1)  # out of vocabulary


def test_dataset_excludes_oov_and_collates_exact_targets(tmp_path, demo, vqa_tokenizer):
    from xvl.data.transforms import build_image_transform

    answers = ["yes", "no", "red", "blue"]
    img = "images/train_00000.png"
    recs = [
        VQARecord("1", img, {"en": "Is it red?", "de": "Ist es rot?"}, {"yes": 1.0}),
        VQARecord("2", img, {"en": "What colour?"}, {"no such answer": 1.0}),             # OOV: excluded
        VQARecord("3", img, {"de": "Welche Farbe?"}, {"red": 0.6, "blue": 0.3}),  # no English question
        VQARecord("4", img, {"en": "Which colour?"}, {"blue": 1.0, "teal": 0.3}),  # partly OOV: kept
    ]
    model = _fused_model(vqa_tokenizer)
    transform = build_image_transform(model.vision.data_config())
    ds = VQADataset(recs, demo.root, transform, model.lang_to_id, answers, languages=["en"])
    assert ds.n_out_of_vocabulary == 1 and ds.n_oov_answers == 2
    assert ds.items == [(0, "en"), (3, "en")]
    ds_all = VQADataset(recs, demo.root, transform, model.lang_to_id, answers)
    assert ds_all.items == [(0, "de"), (0, "en"), (2, "de"), (3, "en")]
    batch = VQACollator(vqa_tokenizer, 24, len(answers))([ds_all[i] for i in range(len(ds_all))])
    expected = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0.6, 0.3], [0, 0, 0, 1.0]])
    assert torch.allclose(batch["targets"], expected)
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["lang"].tolist() == [model.lang_to_id[x] for x in ("de", "en", "de", "en")]
    assert batch["index"].tolist() == [0, 1, 2, 3] and int(batch["n_skipped"]) == 0
    # a missing image is skipped and counted at construction
    skips = SkipCounter("t")
    ds = VQADataset([VQARecord("5", "images/none.png", {"en": "q"}, {"yes": 1.0})] + recs[:1], demo.root,
                    transform, model.lang_to_id, answers, languages=["en"], skips=skips)
    assert ds.items == [(1, "en")] and skips.as_dict() == {"missing_image": 1}


def test_vqa_loss_is_bce_summed_over_answers_mean_over_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    targets = torch.tensor([[1, 0, 0, 0, 0], [0, 0.3, 0.6, 0, 0], [0, 0, 0, 0, 1.0]])
    p = torch.sigmoid(logits.double())
    ref = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum() / 3
    assert float(vqa_loss(logits, targets)) == pytest.approx(float(ref), rel=1e-5)


# --------------------------------------------------------------------------------------------
# accuracy bookkeeping with a monkeypatched predictor
# --------------------------------------------------------------------------------------------
class _FakeModel:
    """Only what evaluate_vqa touches besides the (patched) predictor."""

    def __init__(self):
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(vqa_answers=["yes", "no", "red", "blue"])
        self.answer_head = object()
        self.lang_to_id = {"en": 0, "de": 1, "ru": 2}
        self.training = True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode


def test_accuracy_exact_on_monkeypatched_predictor(monkeypatch):
    import xvl.evaluation.vqa as V

    recs = [
        VQARecord("1", "i1.png", {"en": "q", "de": "q", "ru": "q"}, {"yes": 1.0}),
        VQARecord("2", "i1.png", {"en": "q", "de": "q"}, {"red": 0.6, "blue": 1.0}),
        VQARecord("3", "i2.png", {"en": "q", "de": "q", "ru": "q"}, {"no such answer": 1.0}),  # OOV: always wrong
        VQARecord("4", "i2.png", {"en": "q", "ru": "q"}, {"no": 1.7}),                 # score capped at 1
    ]
    answer = {("1", "en"): "yes", ("1", "de"): "no", ("1", "ru"): "yes",
              ("2", "en"): "blue", ("2", "de"): "red",
              ("3", "en"): "red", ("3", "de"): "yes", ("3", "ru"): "no",
              ("4", "en"): "no", ("4", "ru"): "no"}
    seen = {}

    def fake_predict(model, records, items, image_root, batch_size, skips, progress=False):
        seen["training"] = model.training
        return [answer[(records[r].qid, lang)] for r, lang in items]

    monkeypatch.setattr(V, "predict_answers", fake_predict)
    model = _FakeModel()
    res = evaluate_vqa(model, recs, "", batch_size=2, return_predictions=True)
    assert seen["training"] is False and model.training is True  # eval mode inside, restored after
    per = res["per_language"]
    # en: 1 + 1 + 0 + 1 = 3 / 4;  de: 0 + 0.6 + 0 = 0.6 / 3;  ru: 1 + 0 + 1 = 2 / 3
    assert per["en"] == {"accuracy": pytest.approx(0.75), "n": 4, "n_out_of_vocabulary": 1}
    assert per["de"] == {"accuracy": pytest.approx(0.2), "n": 3, "n_out_of_vocabulary": 1}
    assert per["ru"] == {"accuracy": pytest.approx(2 / 3), "n": 3, "n_out_of_vocabulary": 1}
    assert res["average_non_en"] == pytest.approx((0.2 + 2 / 3) / 2)
    assert res["n_out_of_vocabulary"] == 1 and res["n_questions"] == 4
    assert res["predictions"]["2"] == {"en": "blue", "de": "red"}
    # a language filter
    res = evaluate_vqa(model, recs, "", languages=["ru"])
    assert list(res["per_language"]) == ["ru"] and res["average_non_en"] == pytest.approx(2 / 3)
    table = format_vqa_table(evaluate_vqa(model, recs, ""))
    assert table.splitlines()[2].split() == ["en", "4", "1", "75.0"]
    assert table.splitlines()[-1].split()[-1] == f"{100 * (0.2 + 2 / 3) / 2:.1f}"
    # unknown language: an error naming the record's file and line, before any prediction
    bad = recs + [VQARecord("5", "i2.png", {"ko": "q"}, {"no": 1.0}, path="x.jsonl", line=7)]
    with pytest.raises(ValueError, match=r"x\.jsonl, line 7: question language 'ko'"):
        evaluate_vqa(model, bad, "")
    assert vqa_accuracy({"a": 0.3}, "a") == 0.3 and vqa_accuracy({"a": 3.0}, "a") == 1.0
    assert vqa_accuracy({"a": 1.0}, "b") == 0.0 and vqa_accuracy({"a": 1.0}, None) == 0.0


# --------------------------------------------------------------------------------------------
# fine-tuning
# --------------------------------------------------------------------------------------------
def _train_set_loss(model, demo, records):
    from xvl.data.transforms import build_image_transform

    answers = model.cfg.vqa_answers
    ds = VQADataset(records, demo.root, build_image_transform(model.vision.data_config()), model.lang_to_id,
                    answers, languages=["en"])
    batch = VQACollator(model.tokenizer, model.cfg.text.max_length, len(answers))([ds[i] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        logits = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["lang"], image=batch["image"])
    return float(vqa_loss(logits, batch["targets"])), logits


STEPS = 100  # enough to beat the input-blind predictor by a wide margin (~2.2 vs 3.6)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, demo, model_dir):
    """One fine-tuning run (English questions of 6 demo images + an OOV question + untrained German
    texts; a 2-question val file in 7 languages), shared by the tests below."""
    import xvl
    from types import SimpleNamespace

    tmp = tmp_path_factory.mktemp("vqa_ft")
    recs = read_vqa_jsonl(demo.questions_train, languages=["en"])[:24]
    train = _write_lines(tmp / "train.jsonl", [
        _q(r.qid, {"en": r.questions["en"], "de": "nicht trainiert"}, r.answers, r.image) for r in recs
    ] + [_q("oov", {"en": "what?"}, {"no such answer": 1.0}, recs[0].image)])
    answers = load_answer_vocabulary(demo.answers)
    before = xvl.load(model_dir)
    torch.manual_seed(0)  # finetune_vqa creates the head after seeding with `seed`: same init
    before.set_answer_vocabulary(answers)
    loss_before, _ = _train_set_loss(before, demo, recs)
    val_recs = read_vqa_jsonl(demo.questions_val)[::8]
    val = _write_lines(tmp / "val.jsonl", [_q(r.qid, r.questions, r.answers, r.image) for r in val_recs])
    out = str(tmp / "ft")
    res = finetune_vqa(model_dir, train, out, demo.answers, image_root=demo.root, max_steps=STEPS, batch_size=8,
                       lr=2e-3, warmup_ratio=0.1, val_file=val, progress=False)
    return SimpleNamespace(res=res, out=out, recs=recs, val_recs=val_recs, answers=answers,
                           loss_before=loss_before)


def test_finetune_reduces_loss_and_saved_model_reloads(demo, finetuned):
    import xvl

    res, out, recs, answers = finetuned.res, finetuned.out, finetuned.recs, finetuned.answers
    assert res["steps"] == STEPS and res["n_train_items"] == 24  # English only; the OOV question left out
    assert res["n_out_of_vocabulary"] == 1
    loss_after, logits = _train_set_loss(res["model"], demo, recs)
    # below half the initial loss, and below the best input-blind predictor (constant logits = the
    # answers' training frequencies): the model learned from the questions and images, not just the prior
    freq = torch.zeros(len(answers))
    for r in recs:
        freq[answers.index(next(iter(r.answers)))] += 1 / len(recs)
    freq = freq.clamp(1e-9, 1 - 1e-9)
    blind = float(-(freq * freq.log() + (1 - freq) * (1 - freq).log()).sum())
    assert loss_after < 0.5 * finetuned.loss_before and loss_after < blind, (finetuned.loss_before, loss_after, blind)
    assert res["loss_last"] < res["loss_first"]

    reloaded = xvl.load(os.path.join(out, "model"))
    assert reloaded.cfg.vqa_answers == answers and reloaded.answer_head is not None
    loss_reloaded, logits_reloaded = _train_set_loss(reloaded, demo, recs)
    assert torch.allclose(logits, logits_reloaded, atol=1e-6) and loss_reloaded == pytest.approx(loss_after)
    val_recs = finetuned.val_recs
    assert evaluate_vqa(reloaded, val_recs, demo.root, return_predictions=True)["predictions"] == \
        evaluate_vqa(res["model"], val_recs, demo.root, return_predictions=True)["predictions"]
    with open(os.path.join(out, "eval_vqa.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(res["eval"]))
    assert sorted(written["per_language"]) == DEMO_LANGS and written["per_language"]["de"]["n"] == 2
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == list(range(10, STEPS + 1, 10))


def test_finetune_errors_before_work(tmp_path, demo, model_dir, vqa_tokenizer):
    from xvl.models.model import XVLModel

    out = str(tmp_path / "ft")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        finetune_vqa(model_dir, str(tmp_path / "nope.jsonl"), out, demo.answers, progress=False)
    with pytest.raises(ValueError, match=r"training languages \['xx'\]"):
        finetune_vqa(model_dir, demo.questions_train, out, demo.answers, languages=["xx"], progress=False)
    bad_val = _write_lines(tmp_path / "val.jsonl", [_q("1", {"en": "q", "tlh": "?"}, {"yes": 1.0})])
    with pytest.raises(ValueError, match=r"val\.jsonl, line 1: question language 'tlh'"):
        finetune_vqa(model_dir, demo.questions_train, out, demo.answers, val_file=bad_val, progress=False)
    dual = str(tmp_path / "dual")
    torch.manual_seed(0)
    XVLModel(tiny_model_config(), vqa_tokenizer).save_pretrained(dual)
    with pytest.raises(ValueError, match=r"no fusion encoder.*model\.fusion\.layers > 0"):
        finetune_vqa(dual, demo.questions_train, out, demo.answers, progress=False)
    assert not os.path.exists(os.path.join(out, "model"))


# --------------------------------------------------------------------------------------------
# the real predictor: batched with shared image encodings == one question at a time
# --------------------------------------------------------------------------------------------
def test_batched_prediction_matches_one_by_one_reference(demo, finetuned):
    from PIL import Image

    from xvl.evaluation.vqa import _collect, iter_answer_logits

    model = finetuned.res["model"]
    # 3 images x 4 questions x 3 languages; batches of 5 straddle images
    recs = read_vqa_jsonl(demo.questions_val, languages=["en", "de", "zh"])[:12]
    # an OOV question: predicted like any other, necessarily wrong
    recs.append(VQARecord("oov", recs[0].image, {"en": recs[0].questions["en"]}, {"no such answer": 1.0}))
    ref_logits, ref = {}, {}
    with torch.no_grad():
        for rec in recs:
            pixels = model.preprocess(Image.open(os.path.join(demo.root, rec.image)).convert("RGB"))[None]
            for lang, text in rec.questions.items():
                tok = model.tokenize([text])
                logits = answer_logits(model, tok["input_ids"], tok["attention_mask"],
                                       torch.tensor([model.lang_to_id[lang]]), image=pixels)[0]
                ref_logits[(rec.qid, lang)] = logits
                ref.setdefault(rec.qid, {})[lang] = model.cfg.vqa_answers[int(logits.argmax())]
    # logits of the batched path (images encoded once per batch, padded questions) == one by one
    items = _collect(recs, None)
    seen = 0
    for rows, logits in iter_answer_logits(model, recs, items, demo.root, 5, SkipCounter("t")):
        for i, row in zip(rows, logits):
            r, lang = items[i]
            assert torch.allclose(row, ref_logits[(recs[r].qid, lang)], atol=1e-5), (recs[r].qid, lang)
            seen += 1
    assert seen == len(ref_logits) == 37
    res = evaluate_vqa(model, recs, demo.root, batch_size=5, return_predictions=True)
    assert res["predictions"] == ref
    for lang in ("en", "de", "zh"):
        items = [(rec, ref[rec.qid][lang]) for rec in recs if lang in rec.questions]
        expected = sum(min(1.0, r.answers.get(a, 0.0)) for r, a in items) / len(items)
        assert res["per_language"][lang]["accuracy"] == pytest.approx(expected)
        assert res["per_language"][lang]["n"] == len(items)
    assert res["n_out_of_vocabulary"] == 1 and res["per_language"]["en"]["n_out_of_vocabulary"] == 1
    assert res["predictions"]["oov"]["en"] != "no such answer"


# --------------------------------------------------------------------------------------------
# CLI round trip
# --------------------------------------------------------------------------------------------
def test_cli_finetune_then_eval(tmp_path, demo, model_dir, capsys):
    from xvl.cli import main

    out = str(tmp_path / "ft")
    assert main(["finetune", "vqa", "--model", model_dir, "--train", demo.questions_train,
                 "--answers", demo.answers, "--out", out, "--steps", "3", "--batch-size", "4"]) == 0
    assert "model saved to" in capsys.readouterr().out
    result_file = str(tmp_path / "res" / "vqa.json")
    assert main(["eval", "vqa", "--model", os.path.join(out, "model"), "--data", demo.questions_val,
                 "--out", result_file, "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "avg non-en" in printed
    with open(result_file) as f:
        res = json.load(f)
    assert {"per_language", "average_non_en", "n_out_of_vocabulary"} <= set(res)
    assert sorted(res["per_language"]) == DEMO_LANGS
    for r in res["per_language"].values():
        assert r["n"] == 16 and 0.0 <= r["accuracy"] <= 1.0  # 4 images x 4 questions
    non_en = [r["accuracy"] for lang, r in res["per_language"].items() if lang != "en"]
    assert res["average_non_en"] == pytest.approx(sum(non_en) / len(non_en))
    assert res["n_out_of_vocabulary"] == 0
    # a model without an answer head: one clear error line, exit code 2
    assert main(["eval", "vqa", "--model", model_dir, "--data", demo.questions_val]) == 2
    assert "no VQA answer head" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the real xGQA files (skipped when ../shared/data is absent): the reader and vocabulary only
# --------------------------------------------------------------------------------------------
GQA = os.path.join(SHARED_DATA, "gqa")


@pytest.mark.skipif(not os.path.isdir(GQA), reason="../shared/data/gqa not present")
def test_real_xgqa_files_parse():
    from xvl.config import ModelConfig

    answers = load_answer_vocabulary(os.path.join(GQA, "answers.json"))
    assert len(answers) == 1842
    dev = read_vqa_jsonl(os.path.join(GQA, "xgqa_dev.jsonl"), known_languages=ModelConfig().languages)
    assert len(dev) == 1422
    assert {lang for r in dev for lang in r.questions} == {"en", "de", "pt", "ru", "id", "bn", "ko", "zh"}
    train = read_vqa_jsonl(os.path.join(GQA, "train_en.jsonl"), languages=["en"])
    vocab = {a: i for i, a in enumerate(answers)}
    n_oov = sum(not soft_target(r.answers, vocab)[0] for r in train)
    assert len(train) == 9666 and n_oov == 2


def test_vqa_pretraining_objective_matches_the_finetuning_loss(vqa_tokenizer):
    """The `vqa` objective (VQA batches mixed into pre-training) computes exactly the fine-tuning
    loss on the same model and batch, reads only the vqa_* keys, and skips caption batches."""
    from xvl.objectives.base import build_objective

    model = _fused_model(vqa_tokenizer)
    model.set_answer_vocabulary(["yes", "no", "red"])
    enc = vqa_tokenizer(["is it red?", "what color?"], padding=True, return_tensors="pt")
    image = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.6]])
    batch = {"image": image, "vqa_input_ids": enc["input_ids"], "vqa_attention_mask": enc["attention_mask"],
             "vqa_lang": torch.tensor([0, 0]), "vqa_targets": targets}
    obj = build_objective("vqa", {}, model=model)
    outputs = model(batch)
    assert "text_embeds" not in outputs  # the question is not a caption
    got = obj(outputs, batch)
    logits = answer_logits(model, enc["input_ids"], enc["attention_mask"], torch.tensor([0, 0]), image=image)
    torch.testing.assert_close(got["vqa_loss"], vqa_loss(logits, targets))
    expected_acc = targets[torch.arange(2), logits.argmax(1)].mean()
    torch.testing.assert_close(got["vqa_acc"], expected_acc)
    caption_batch = {"image": image, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    assert obj.applies(outputs, batch) and not obj.applies(model(caption_batch), caption_batch)
