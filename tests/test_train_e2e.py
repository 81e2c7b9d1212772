"""End to end through the CLI (in-process, to keep the suite fast): train, evaluate, resume, and
the bad-input paths (config typos, missing files, corrupt images, empty captions, killed runs)."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from xvl.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from xvl.data.demo import generate_demo

    return generate_demo(str(tmp_path_factory.mktemp("demo")), n_train=48, n_val=16, image_size=32, seed=0)


def _train_args(data, out, *extra):
    return ["train", TINY, f"data.train={data.train}", f"data.val={data.val}", f"train.output_dir={out}",
            "train.log_every=1", *extra]


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _assert_resume_reproduces(args, out, killed, ckpt_step: int, last_step: int):
    """Simulate a run of ``args`` (into ``out``) killed after its ``ckpt_step`` checkpoint: copy that
    checkpoint and the tokenizer into ``killed``, resume there, and require the uninterrupted run's
    losses for every later step."""
    killed.mkdir()
    name = f"checkpoint-{ckpt_step:08d}"
    for part in (name, "tokenizer"):
        shutil.copytree(out / part, killed / part)
    (killed / "latest").write_text(name + "\n")
    args = list(args)
    args[args.index(f"train.output_dir={out}")] = f"train.output_dir={killed}"
    assert main(args + ["--resume"]) == 0
    full, resumed = _losses(str(out)), _losses(str(killed))
    for step in range(ckpt_step + 1, last_step + 1):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step


@pytest.fixture(scope="module")
def full_run(demo_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "full")
    assert main(_train_args(demo_data, out)) == 0
    return out


def test_train_writes_run_dir(full_run):
    files = set(os.listdir(full_run))
    assert {"config.yaml", "metrics.jsonl", "tb", "model", "tokenizer", "latest", "eval_retrieval.json"} <= files
    ckpts = sorted(f for f in files if f.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-00000010", "checkpoint-00000020"]
    losses = _losses(full_run)
    assert sorted(losses) == list(range(1, 21))
    with open(os.path.join(full_run, "eval_retrieval.json")) as f:
        ev = json.load(f)
    assert set(ev["per_language"]) == {"en", "de", "fr", "es", "ru", "ja", "zh"}


def test_resume_after_kill_continues_the_same_trajectory(full_run, demo_data, tmp_path):
    """A run killed after its step-10 checkpoint (and mid-way through writing another) resumes
    and logs exactly the losses of the uninterrupted run for steps 11..20."""
    killed = tmp_path / "killed"
    killed.mkdir()
    for name in ("checkpoint-00000010", "tokenizer"):
        shutil.copytree(os.path.join(full_run, name), killed / name)
    shutil.copy(os.path.join(full_run, "config.yaml"), killed / "config.yaml")
    (killed / "latest").write_text("checkpoint-00000010\n")
    (killed / ".tmp-ckpt-half-written").mkdir()  # what a kill during a checkpoint write leaves
    with open(os.path.join(full_run, "metrics.jsonl")) as f:  # it had logged up to step 14
        (killed / "metrics.jsonl").write_text("".join(line for line in f if json.loads(line)["step"] <= 14))

    assert main(_train_args(demo_data, str(killed), "--resume")) == 0
    full, resumed = _losses(full_run), _losses(str(killed))
    with open(killed / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if "loss" in line]
    assert steps == list(range(1, 21))  # the killed run's steps 11-14 were dropped, then redone
    for step in range(11, 21):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step


def test_eval_retrieval_cli(full_run, demo_data, tmp_path, capsys):
    out = tmp_path / "ret.json"
    assert main(["eval", "retrieval", "--model", os.path.join(full_run, "model"), "--data", demo_data.val,
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"per_language", "average"}
    m = res["per_language"]["de"]
    assert set(m) >= {"i2t", "t2i", "mean_recall", "n_images", "n_captions"}
    assert m["n_images"] == 16 and set(m["t2i"]) == {"r1", "r5", "r10"}
    assert all(0 <= v <= 1 for v in m["t2i"].values())
    # the model dir evaluated from disk reproduces the trainer's own end-of-run evaluation
    with open(os.path.join(full_run, "eval_retrieval.json")) as f:
        own = json.load(f)["per_language"]["de"]
    for direction in ("i2t", "t2i"):
        assert own[direction] == pytest.approx(m[direction])
    assert own["mean_recall"] == pytest.approx(m["mean_recall"])
    assert "de" in capsys.readouterr().out


def test_existing_run_needs_resume(full_run, demo_data, capsys):
    assert main(_train_args(demo_data, full_run)) == 2
    assert "--resume" in capsys.readouterr().err


def test_config_typo_is_a_clear_error_before_work(demo_data, tmp_path, capsys):
    out = tmp_path / "typo"
    assert main(_train_args(demo_data, str(out), "train.max_stpes=3")) == 2
    assert "did you mean 'train.max_steps'" in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_path_is_a_clear_error_before_work(tmp_path, capsys):
    out = tmp_path / "missing"
    assert main(["train", TINY, f"data.train={tmp_path}/nope.jsonl", f"train.output_dir={out}"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_objective_is_a_clear_error(demo_data, tmp_path, capsys):
    assert main(_train_args(demo_data, str(tmp_path / "o"), "objectives=[{name: itcc}]")) == 2
    assert "did you mean 'itc'" in capsys.readouterr().err


def test_bad_samples_are_skipped_counted_and_the_run_goes_on(demo_data, tmp_path):
    """A missing image, an undecodable image and an empty caption: the run finishes and counts them."""
    root = tmp_path / "bad"
    shutil.copytree(demo_data.root, root)
    with open(root / "train.jsonl") as f:
        recs = [json.loads(line) for line in f]
    recs[0]["image"] = "images/does_not_exist.png"
    (root / recs[1]["image"]).write_bytes(b"this is not a png")
    recs[2]["captions"][0]["text"] = "   "
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "run"
    assert main(["train", TINY, f"data.train={root}/train.jsonl", f"data.val={demo_data.val}",
                 f"train.output_dir={out}", "train.max_steps=12", "train.ckpt_every=0"]) == 0
    with open(out / "checkpoint-00000012" / "trainer_state.json") as f:
        skipped = json.load(f)["skipped"]
    assert skipped["missing_image"] == 1 and skipped["empty_caption"] == 1
    # 12 steps x 8 = 96 draws over 47 images: the corrupt one is drawn (and replaced) at least once
    assert skipped["bad_image"] >= 1


def test_gradient_accumulation_counts_samples(demo_data, tmp_path):
    out = tmp_path / "accum"
    assert main(_train_args(demo_data, str(out), "train.grad_accum_steps=2", "train.max_steps=3",
                            "train.ckpt_every=0", "data.val=null")) == 0
    with open(out / "metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    assert last["step"] == 3 and last["samples_seen"] == 3 * 2 * 8


def test_tokenizer_and_data_demo_commands(demo_data, tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    assert main(["tokenizer", "train", demo_data.train, "--out", str(tok_dir), "--vocab-size", "500"]) == 0
    from xvl.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    assert tok.mask_token == "<mask>" and tok("zwei rote Kreise")["input_ids"][0] == tok.bos_token_id
    assert main(["data", "demo", "--out", str(tmp_path / "d"), "--n-train", "10", "--n-val", "5",
                 "--image-size", "32"]) == 0
    assert (tmp_path / "d" / "val.jsonl").exists()
    assert main(["tokenizer", "train", str(tmp_path / "missing.txt"), "--out", str(tok_dir)]) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_eval_bitext_cli(full_run, tmp_path, capsys):
    src, tgt = tmp_path / "x.de", tmp_path / "x.en"
    src.write_text("zwei rote Kreise\nein blaues Quadrat\n")
    tgt.write_text("two red circles\na blue square\n")
    out = tmp_path / "bitext.json"
    assert main(["eval", "bitext", "--model", os.path.join(full_run, "model"), "--src", str(src), "--tgt", str(tgt),
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"per_pair", "average"} and list(res["per_pair"].values())[0]["n"] == 2
    (tmp_path / "bad.en").write_text("only one line\n")
    assert main(["eval", "bitext", "--model", "unused", "--src", str(src), "--tgt", str(tmp_path / "bad.en")]) == 2
    assert "bad.en" in capsys.readouterr().err


@pytest.fixture(scope="module")
def parallel_files(tmp_path_factory):
    """A tiny Multi30K-style corpus (line i is the same sentence in en/de/fr) and a Tatoeba dir."""
    root = tmp_path_factory.mktemp("parallel")
    words = {"en": ["red", "blue", "green", "circle", "square", "star"],
             "de": ["rot", "blau", "grün", "Kreis", "Quadrat", "Stern"],
             "fr": ["rouge", "bleu", "vert", "cercle", "carré", "étoile"]}
    lines = {lang: [f"{w[c]} {w[3 + s]} {n}" for c in range(3) for s in range(3) for n in range(4)]
             for lang, w in words.items()}
    for lang, ls in lines.items():
        (root / f"train.{lang}").write_text("\n".join(ls) + "\n")
    tat = root / "tatoeba"
    tat.mkdir()
    (tat / "tatoeba.deu-eng.deu").write_text("\n".join(lines["de"][:10]) + "\n")
    (tat / "tatoeba.deu-eng.eng").write_text("\n".join(lines["en"][:10]) + "\n")
    return root


@pytest.mark.parametrize("objectives", [
    "[{name: xtr}, {name: itc, weight: 2.0, args: {view_a: text_embeds, view_b: pair_embeds, temperature: 0.1}}]",
    "[{name: tlm}, {name: xlco, args: {queue_size: 16, pooling: mean}}, {name: token_contrastive}]",
])
def test_text_only_training_with_bitext_eval(parallel_files, tmp_path, objectives):
    out = tmp_path / "text"
    args = ["train", TINY, "data.train=null", "data.val=null", f"data.root={parallel_files}",
            "data.parallel.sources=[{type: aligned, path: train, languages: [en, de, fr], pairs: 'pivot:en'}]",
            "eval.tatoeba=tatoeba", f"objectives={objectives}", f"train.output_dir={out}", "train.max_steps=12",
            "train.log_every=1", "train.ckpt_every=6"]
    assert main(args) == 0
    with open(out / "eval_bitext.json") as f:
        res = json.load(f)
    assert res["per_pair"]["deu-eng"]["n"] == 10
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert any("val/bitext_mean" in r for r in rows)
    # the image tower stays fixed in text-only training
    import xvl
    from safetensors.torch import load_file

    trained = xvl.load(str(out / "model"))
    ckpt6 = load_file(str(out / "checkpoint-00000006" / "model.safetensors"))
    key = next(k for k in ckpt6 if k.startswith("model.vision."))
    assert torch.equal(trained.state_dict()[key[len("model."):]], ckpt6[key])
    # and a killed run resumes to the same losses (XLCo queue and momentum copy included)
    _assert_resume_reproduces(args, out, tmp_path / "killed", ckpt_step=6, last_step=12)


def test_mixed_caption_and_parallel_run_resumes_on_the_same_trajectory(demo_data, parallel_files, tmp_path):
    """Image-caption and parallel-text micro-batches by ratio (CCLM-style): image-text terms skip the
    text batches, the caption pairs feed TTC/TLM, and a killed run picks up both tasks' positions."""
    out = tmp_path / "mixed"
    args = _train_args(demo_data, out, f"data.parallel.sources=[{{type: aligned, path: {parallel_files}/train, "
                                       "languages: [en, de], pairs: 'pivot:en'}]",
                       "data.task_ratios={image_text: 2, text_pair: 1}", "train.max_steps=12", "train.ckpt_every=6",
                       "objectives=[{name: itc}, {name: itc, args: {view_b: pair_embeds}}, {name: ttc}, {name: tlm}]")
    assert main(args) == 0
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    assert len(rows) == 12 and all(math.isfinite(r["loss"]) for r in rows)
    # some steps were text-only (no itc), some image-text (with itc, itc_pair and the caption-pair ttc)
    assert any("itc_loss" not in r for r in rows) and any("itc_pair_loss" in r for r in rows)
    assert all("ttc_loss" in r and "tlm_loss" in r for r in rows)
    _assert_resume_reproduces(args, out, tmp_path / "killed", ckpt_step=6, last_step=12)


def test_init_from_copies_the_text_tower_of_a_model_dir(full_run, demo_data, tmp_path, capsys):
    """Warm start (e.g. from the text recipe): the text tower and tokenizer come from the model dir;
    a missing dir or a mismatched architecture fails before training."""
    import xvl

    src = os.path.join(full_run, "model")
    out = tmp_path / "warm"
    assert main(_train_args(demo_data, out, f"train.init_from={src}", "train.max_steps=1", "train.lr=0.0",
                            "train.warmup_steps=0", "model.fusion.layers=1")) == 0
    warm, base = xvl.load(str(out / "model")), xvl.load(src)
    for k, v in base.state_dict().items():
        if k.startswith(("text.", "text_proj.")):
            assert torch.equal(warm.state_dict()[k], v), k
    assert warm.fusion is not None and warm.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    assert main(_train_args(demo_data, tmp_path / "x", f"train.init_from={tmp_path}/nothing")) == 2
    assert "init_from" in capsys.readouterr().err
    assert main(_train_args(demo_data, tmp_path / "y", f"train.init_from={src}",
                            "model.text.config.hidden_size=48")) == 2
    assert "shape" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["cclm-tiny", "uc2-tiny", "rc3-tiny"])
def test_cross_view_recipes_train_and_resume_on_the_same_trajectory(recipe, demo_data, tmp_path):
    """Each cross-view recipe runs end to end on the demo data (pairs, boxes, fusion objectives),
    logs every objective, and a killed run resumes to the same losses (momentum copies, masking
    and hard-negative sampling included)."""
    out = tmp_path / recipe
    args = ["train", os.path.join(ROOT, "configs", f"{recipe}.yaml"), f"data.train={demo_data.train}",
            f"data.val={demo_data.val}", f"train.output_dir={out}", "train.max_steps=6", "train.ckpt_every=3",
            "train.log_every=1"]
    assert main(args) == 0
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    from xvl import config as C

    names = {s.name for s in C.load(args[1]).objectives}
    logged = {k[: -len("_loss")] for r in rows for k in r if k.endswith("_loss")}
    assert {n for n in names if n not in ("itc",)} <= logged | {"itc"}, (names, logged)
    assert all(math.isfinite(r["loss"]) for r in rows)
    _assert_resume_reproduces(args, out, tmp_path / "killed", ckpt_step=3, last_step=6)
