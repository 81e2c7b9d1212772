"""Training from streamed sources (data.sources): webdataset shards made from the demo data, mixed
with parallel text by weight; a damaged shard is counted and the run goes on; a killed run resumes
on the same trajectory without replaying consumed samples."""
from __future__ import annotations

import io
import json
import math
import os
import tarfile

import pytest

from xvl.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xvl.data.demo import generate_demo

    return generate_demo(str(tmp_path_factory.mktemp("demo")), n_train=48, n_val=16, image_size=32, seed=0)


@pytest.fixture(scope="module")
def shards(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "train"
    assert main(["data", "make-shards", "--jsonl", demo.train, "--out", str(out), "--max-samples", "12",
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    root = tmp_path_factory.mktemp("par")
    en = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")]
    de = [f"ein {c} {s}" for c in ("rot", "blau", "grün") for s in ("Kreis", "Quadrat", "Stern")]
    (root / "train.en").write_text("\n".join(en) + "\n")
    (root / "train.de").write_text("\n".join(de) + "\n")
    return root


def _args(demo, out, sources, *extra):
    return ["train", TINY, "data.train=null", f"data.val={demo.val}", f"data.sources={sources}",
            f"train.output_dir={out}", "train.log_every=1", "data.stream.shuffle_buffer=8", *extra]


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def test_mixed_shards_and_text_train_and_resume_without_replay(demo, shards, parallel, tmp_path):
    out = tmp_path / "mixed"
    sources = (f"[{{type: shards, path: {shards}, weight: 2}}, "
               f"{{type: aligned, path: {parallel}/train, languages: [en, de], weight: 1}}]")
    args = _args(demo, out, sources, "train.max_steps=12", "train.ckpt_every=6",
                 "objectives=[{name: itc}, {name: itc, args: {view_b: pair_embeds}}, {name: ttc}]")
    assert main(args) == 0
    rows = _rows(out)
    assert len(rows) == 12 and all(math.isfinite(r["loss"]) for r in rows)
    assert any("itc_loss" in r for r in rows) and any("itc_loss" not in r for r in rows)  # both sources used
    with open(out / "checkpoint-00000006" / "trainer_state.json") as f:
        state = json.load(f)["data_state"]
    assert state["world"] == 1 and state["num_workers"] == 1
    pos = state["positions"]["0"]["0"]
    # 6 batches of 8: image-caption and text batches together consumed at least 48 raw samples
    assert sum(pos.values()) >= 48 and set(pos) == {f"shards:{shards}", f"aligned:{parallel}/train"}

    # killed after step 6: resume from that checkpoint reproduces steps 7..12 exactly
    killed = tmp_path / "killed"
    killed.mkdir()
    import shutil

    for part in ("checkpoint-00000006", "tokenizer"):
        shutil.copytree(out / part, killed / part)
    (killed / "latest").write_text("checkpoint-00000006\n")
    resumed_args = [a if not a.startswith("train.output_dir=") else f"train.output_dir={killed}" for a in args]
    assert main(resumed_args + ["--resume"]) == 0
    full = {r["step"]: r["loss"] for r in _rows(out)}
    again = {r["step"]: r["loss"] for r in _rows(killed)}
    for step in range(7, 13):
        assert again[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step


def test_damaged_shard_is_counted_and_the_run_goes_on(demo, shards, tmp_path):
    """One shard truncated mid-way and one image's bytes corrupted: the run finishes and reports both."""
    damaged = tmp_path / "damaged"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(shards, damaged)
    names = sorted(p for p in os.listdir(damaged) if p.endswith(".tar"))
    # corrupt the first image of shard 0 (rewrite the tar with bad bytes for that member)
    first = damaged / names[0]
    with tarfile.open(first) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    img_member = next(i for i, (m, _) in enumerate(members) if not m.name.endswith(".json"))
    with tarfile.open(first, "w") as tf:
        for i, (m, data) in enumerate(members):
            if i == img_member:
                data = b"not an image at all"
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    # truncate shard 1 in the middle
    second = damaged / names[1]
    raw = second.read_bytes()
    second.write_bytes(raw[: len(raw) // 2 + 100])
    out = tmp_path / "run"
    assert main(_args(demo, out, f"[{{type: shards, path: {damaged}}}]", "train.max_steps=16",
                      "train.ckpt_every=0", "data.stream.shuffle_buffer=0")) == 0
    with open(out / "checkpoint-00000016" / "trainer_state.json") as f:
        skipped = json.load(f)["skipped"]
    # 16 steps x 8 = 128 draws over ~3 epochs of the 48 images
    assert skipped.get("bad_image", 0) >= 1 and skipped.get("truncated_shard", 0) >= 1
    assert len(_rows(out)) == 16


def test_bad_sources_fail_before_training(demo, shards, tmp_path, capsys):
    out = tmp_path / "bad"
    # data.train left at a path together with data.sources
    assert main(["train", TINY, f"data.sources=[{{type: shards, path: {shards}}}]",
                 f"train.output_dir={out}"]) == 2
    assert "data.sources replaces data.train" in capsys.readouterr().err
    # shards whose languages the model does not know
    assert main(_args(demo, out, f"[{{type: shards, path: {shards}}}]", "model.languages=[en, de]")) == 2
    assert "not in model.languages" in capsys.readouterr().err
    # a missing shard path
    assert main(_args(demo, out, f"[{{type: shards, path: {tmp_path}/nope-{{000..003}}.tar}}]")) == 2
    # task ratios of the map-style mixing, which streamed sources would silently ignore
    assert main(_args(demo, out, f"[{{type: shards, path: {shards}}}]", "data.task_ratios={image_text: 4}")) == 2
    assert "set data.sources[i].weight" in capsys.readouterr().err
    assert not os.path.exists(out / "checkpoint-00000001")


def test_hf_dataset_source_trains(demo, tmp_path):
    """An HF dataset (parquet with an Image column, one caption and a lang column per row) feeds the
    same batches as the shards."""
    import datasets

    rows = {"image": [], "caption": [], "lang": []}
    with open(demo.train) as f:
        for line in f:
            rec = json.loads(line)
            for cap in rec["captions"][:2]:
                rows["image"].append(os.path.join(os.path.dirname(demo.train), rec["image"]))
                rows["caption"].append(cap["text"])
                rows["lang"].append(cap["lang"])
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "run"
    sources = f"[{{type: hf, path: {tmp_path}/hf, lang_column: lang}}]"
    assert main(_args(demo, out, sources, "train.max_steps=6", "train.ckpt_every=3")) == 0
    assert len(_rows(out)) == 6
    with open(out / "checkpoint-00000006" / "trainer_state.json") as f:
        assert json.load(f)["data_state"]["positions"]["0"]["0"][f"hf:{tmp_path}/hf"] == 48
    # a column that does not exist fails before training
    assert main(_args(demo, tmp_path / "bad", f"[{{type: hf, path: {tmp_path}/hf, caption_column: text}}]")) == 2


def test_vqa_source_mixed_into_pretraining(demo, shards, tmp_path):
    """Image samples with questions (make-shards --vqa) feed the vqa objective; caption objectives
    skip those batches and the vqa objective skips the caption batches."""
    qshards = tmp_path / "q"
    assert main(["data", "make-shards", "--vqa", demo.questions_train, "--out", str(qshards),
                 "--max-samples", "12", "--no-progress"]) == 0
    answers = os.path.join(os.path.dirname(demo.train), "answers.json")
    out = tmp_path / "run"
    sources = (f"[{{type: shards, path: {shards}, weight: 1}}, "
               f"{{type: shards, path: {qshards}, task: vqa, answers: {answers}, weight: 1}}]")
    assert main(_args(demo, out, sources, "train.max_steps=12", "train.ckpt_every=0", "model.fusion.layers=1",
                      "objectives=[{name: itc}, {name: vqa}]")) == 0
    rows = _rows(out)
    vqa_rows = [r for r in rows if "vqa_loss" in r]
    itc_rows = [r for r in rows if "itc_loss" in r]
    assert vqa_rows and itc_rows and not [r for r in rows if "vqa_loss" in r and "itc_loss" in r]
    import xvl

    model = xvl.load(str(out / "model"))
    with open(answers) as f:
        assert len(model.cfg.vqa_answers) == len(json.load(f)) and model.answer_head is not None
    # a vqa source without the vqa objective is an error before training
    assert main(_args(demo, tmp_path / "bad", sources, "model.fusion.layers=1", "objectives=[{name: itc}]")) == 2


def test_make_from_writes_the_shards_once_then_reads_them(demo, tmp_path):
    auto = tmp_path / "auto"
    sources = f"[{{type: shards, path: {auto}, make_from: {demo.train}}}]"
    assert main(_args(demo, tmp_path / "r1", sources, "train.max_steps=2", "train.ckpt_every=0")) == 0
    index = json.loads((auto / "index.json").read_text())
    assert index["n_samples"] == 48
    stamp = os.path.getmtime(auto / "index.json")
    assert main(_args(demo, tmp_path / "r2", sources, "train.max_steps=2", "train.ckpt_every=0")) == 0
    assert os.path.getmtime(auto / "index.json") == stamp  # not rewritten


def test_parallel_text_shards_feed_text_pair_batches(demo, parallel, tmp_path):
    """make-shards --aligned -> parallel shards -> translation-pair batches (text-only run)."""
    pshards = tmp_path / "pshards"
    assert main(["data", "make-shards", "--aligned", f"{parallel}/train", "--out", str(pshards),
                 "--max-samples", "4", "--no-progress"]) == 0
    out = tmp_path / "text"
    assert main(_args(demo, out, f"[{{type: shards, path: {pshards}, pairs: 'pivot:en'}}]", "data.val=null",
                      "train.max_steps=4", "train.ckpt_every=0", "data.stream.shuffle_buffer=0",
                      "objectives=[{name: itc, args: {view_a: text_embeds, view_b: pair_embeds}}]")) == 0
    rows = _rows(out)
    assert len(rows) == 4 and all("ttc_loss" in r for r in rows)  # itc with text views logs as ttc
    with open(out / "checkpoint-00000004" / "trainer_state.json") as f:
        state = json.load(f)
    assert state["data_state"]["positions"]["0"]["0"][f"shards:{pshards}"] == 32  # 4 steps x 8 pairs
