"""Writing webdataset shards (xvl.data.shards, xvl.data.shard_sources, `xvl data make-shards`)."""
from __future__ import annotations

import glob
import json
import os
import tarfile

import pytest
from PIL import Image

from xvl.data.shard_format import FORMAT, INDEX_NAME, Example, decode_sample
from xvl.data.shard_sources import AlignedTextSource, ImageFolderSource, JsonlImageSource
from xvl.data.shards import read_index, shard_paths, tar_member_size, write_shards


# --------------------------------------------------------------------------------------------
# tiny data
# --------------------------------------------------------------------------------------------
def _image(path, color, fmt):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path, format=fmt)


def _jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


@pytest.fixture()
def jsonl_data(tmp_path):
    """captions.jsonl + vqa.jsonl + images/: 4 usable samples (a, b, c, v) and 3 unusable ones."""
    root = tmp_path / "data"
    img = root / "images"
    _image(str(img / "a.jpg"), "red", "JPEG")
    _image(str(img / "b.png"), "blue", "PNG")
    _image(str(img / "c.jpeg"), "green", "JPEG")
    _image(str(img / "empty.jpg"), "white", "JPEG")
    _image(str(img / "v.jpg"), "black", "JPEG")
    (img / "bad.jpg").write_bytes(os.urandom(300))  # not an image
    box = {"box": [1, 2, 8, 9], "labels": {"en": "dog", "de": "Hund"}}
    _jsonl(root / "captions.jsonl", [
        {"image_id": "A", "image": "images/a.jpg", "objects": [box], "split": "train",
         "captions": [{"lang": "en", "text": "a red square", "kind": "original", "source": "s1"},
                      {"lang": "de", "text": " ein rotes Quadrat ", "kind": "human_translation", "source": "s1"}]},
        {"image_id": "B", "image": "images/b.png",
         "captions": [{"lang": "en", "text": "a blue square"}, {"lang": "fr", "text": "   "}]},
        {"image": "images/c.jpeg", "captions": [{"lang": "zh", "text": "绿色的正方形"}]},
        {"image_id": "BAD", "image": "images/bad.jpg", "captions": [{"lang": "en", "text": "corrupt"}]},
        {"image_id": "MISSING", "image": "images/missing.jpg", "captions": [{"lang": "en", "text": "gone"}]},
        {"image_id": "EMPTY", "image": "images/empty.jpg",
         "captions": [{"lang": "en", "text": ""}, {"lang": "de", "text": "  "}]},
    ])
    _jsonl(root / "vqa.jsonl", [
        {"qid": "q1", "image": "images/a.jpg", "question": {"en": "What color?", "de": "Welche Farbe?"},
         "answers": {"red": 1.0}},
        {"qid": "q2", "image": "images/v.jpg", "question": {"en": "Is it dark?", "de": ""},
         "answers": {"yes": 1}},
        {"qid": "q3", "image": "images/a.jpg", "question": {"en": "How many?"}, "answers": {"1": 1.0, "one": 0.3}},
    ])
    return root


def read_shards(out_dir):
    """[(shard file, key, record, (ext, bytes) or None)] in written order, via tarfile."""
    samples = []
    for path in shard_paths(out_dir):
        with tarfile.open(path) as tar:
            groups = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                groups.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
        for key, raw in groups.items():
            record, _ = decode_sample(raw, with_image=False)
            image = next(((e, raw[e]) for e in raw if e not in ("__key__", "json")), None)
            samples.append((os.path.basename(path), key, record, image))
    return samples


def read_report(out_dir):
    with open(os.path.join(out_dir, "report.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def shard_bytes(out_dir):
    return {os.path.basename(p): file_bytes(p) for p in sorted(glob.glob(os.path.join(out_dir, "*.tar")))}


# --------------------------------------------------------------------------------------------
# image + captions jsonl (+ VQA)
# --------------------------------------------------------------------------------------------
def test_jsonl_source_contents_skips_and_index(jsonl_data, tmp_path):
    src = JsonlImageSource(str(jsonl_data / "captions.jsonl"), vqa_path=str(jsonl_data / "vqa.jsonl"))
    out = str(tmp_path / "shards")
    index = write_shards(src, out, seed=0, progress=False)

    samples = read_shards(out)
    by_id = {rec["image_id"]: (key, rec, img) for _, key, rec, img in samples}
    assert sorted(by_id) == ["A", "B", "images/c.jpeg", "images/v.jpg"]
    assert [key for _, key, _, _ in samples] == ["000000000", "000000001", "000000002", "000000003"]

    _, a, (ext, data) = by_id["A"]
    assert ext == "jpg" and data == (jsonl_data / "images" / "a.jpg").read_bytes()
    assert a["captions"] == [{"lang": "en", "text": "a red square", "kind": "original", "source": "s1"},
                             {"lang": "de", "text": "ein rotes Quadrat", "kind": "human_translation", "source": "s1"}]
    assert a["objects"] == [{"box": [1, 2, 8, 9], "labels": {"en": "dog", "de": "Hund"}}]
    assert a["split"] == "train" and "image" not in a
    assert (a["width"], a["height"]) == (16, 12)
    assert a["questions"] == [
        {"qid": "q1", "question": {"en": "What color?", "de": "Welche Farbe?"}, "answers": {"red": 1.0}},
        {"qid": "q3", "question": {"en": "How many?"}, "answers": {"1": 1.0, "one": 0.3}}]
    _, b, (ext, data) = by_id["B"]
    assert ext == "png" and data == (jsonl_data / "images" / "b.png").read_bytes()
    assert b["captions"] == [{"lang": "en", "text": "a blue square"}] and "questions" not in b
    assert by_id["images/c.jpeg"][2][0] == "jpg"  # jpeg -> jpg
    _, v, (ext, _) = by_id["images/v.jpg"]
    assert v["captions"] == [] and v["questions"] == [
        {"qid": "q2", "question": {"en": "Is it dark?"}, "answers": {"yes": 1.0}}]
    # webdataset reads the same samples (one json + one image member each)
    import webdataset as wds

    ws = list(wds.WebDataset(shard_paths(out), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in ws] == [key for _, key, _, _ in samples]
    assert [sorted(k for k in s if not k.startswith("__")) for s in ws] == [
        sorted(["json", img[0]]) for _, _, _, img in samples]
    assert [json.loads(s["json"]) for s in ws] == [rec for _, _, rec, _ in samples]
    # decodable by the shared reader
    raw = {"__key__": "x", "json": json.dumps(a).encode(), "jpg": (jsonl_data / "images" / "a.jpg").read_bytes()}
    assert decode_sample(raw)[1].size == (16, 12)

    expected_skips = {"bad_image": 1, "empty_caption": 1, "empty_question": 1, "missing_image": 1, "no_caption": 1}
    assert index["skipped"] == expected_skips
    report = read_report(out)
    assert sorted(r["reason"] for r in report) == sorted(r for r, n in expected_skips.items() for _ in range(n))
    by_reason = {r["reason"]: r for r in report}
    assert by_reason["bad_image"]["source_id"] == "BAD"
    assert by_reason["missing_image"]["source_id"] == "MISSING"
    assert by_reason["missing_image"]["detail"].endswith(os.path.join("images", "missing.jpg"))
    assert by_reason["no_caption"]["source_id"] == "EMPTY"
    assert by_reason["empty_caption"] == {"source_id": "B", "reason": "empty_caption", "detail": "lang fr"}
    assert "q2" in by_reason["empty_question"]["detail"]
    assert by_reason["bad_image"]["detail"].startswith("undecodable image") and "0x" not in by_reason["bad_image"]["detail"]

    assert index["format"] == FORMAT and index["kind"] == "image_text" and index["report"] == "report.jsonl"
    assert index["n_samples"] == 4 and index["n_questions"] == 3
    assert index["languages"] == {"de": 1, "en": 2, "zh": 1}
    assert index["seed"] == 0 and index["shuffled"] is True
    assert index["shards"] == [{"file": "shard-000000.tar", "n_samples": 4, "languages": {"de": 1, "en": 2, "zh": 1},
                                "n_questions": 3, "n_bytes": os.path.getsize(os.path.join(out, "shard-000000.tar"))}]
    assert index["n_bytes"] == index["shards"][0]["n_bytes"]
    assert "captions.jsonl" in index["source"] and "vqa.jsonl" in index["source"]
    assert read_index(out) == index
    with open(os.path.join(out, INDEX_NAME)) as f:
        assert json.load(f) == index
    # only the final files: no temporaries left behind
    assert sorted(os.listdir(out)) == ["index.json", "report.jsonl", "shard-000000.tar"]


def test_jsonl_source_is_lazy_and_ordered(jsonl_data):
    src = JsonlImageSource(str(jsonl_data / "captions.jsonl"), vqa_path=str(jsonl_data / "vqa.jsonl"))
    items = src.items()
    ids = [src.load(i).source_id for i in items]
    # caption records in file order, then VQA-only images
    assert ids == ["A", "B", "images/c.jpeg", "BAD", "MISSING", "EMPTY", "images/v.jpg"]
    assert src.items() == items and src.kind == "image_text"
    # bytes are read when an item is loaded, not when the source is built
    os.remove(jsonl_data / "images" / "b.png")
    ex = src.load(items[1])
    assert ex.image is None and ex.error.startswith("missing_image: ") and ex.error.endswith("b.png")
    assert src.load(items[0]).image == (jsonl_data / "images" / "a.jpg").read_bytes()


def test_jsonl_source_bad_input(tmp_path, jsonl_data):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        JsonlImageSource(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="image root"):
        JsonlImageSource(str(jsonl_data / "captions.jsonl"), image_root=str(tmp_path / "no_images"))
    _jsonl(tmp_path / "bad.jsonl", [{"image": "x.jpg"}])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1.*captions"):
        JsonlImageSource(str(tmp_path / "bad.jsonl"))


# --------------------------------------------------------------------------------------------
# image folder + captions table
# --------------------------------------------------------------------------------------------
def test_image_folder_source(tmp_path):
    folder = tmp_path / "imgs"
    _image(str(folder / "x.jpg"), "red", "JPEG")
    _image(str(folder / "sub" / "y.png"), "blue", "PNG")
    _image(str(folder / "z.jpg"), "green", "JPEG")  # no caption
    (folder / "notes.txt").write_text("not an image")
    caps = tmp_path / "caps.tsv"
    caps.write_text("image\ttext\tlang\n"
                    "x.jpg\ta red square\ten\n"
                    "x.jpg\tein rotes Quadrat\tde_DE\n"
                    "sub/y.png\tun carré bleu\t\n"
                    "w.jpg\tmissing file\ten\n", encoding="utf-8")
    with pytest.raises(ValueError, match="caps.tsv, line 4: caption has no language"):
        ImageFolderSource(str(folder), str(caps))
    src = ImageFolderSource(str(folder), str(caps), lang="fr")
    assert src.items() == ["sub/y.png", "w.jpg", "x.jpg", "z.jpg"]
    out = str(tmp_path / "out")
    index = write_shards(src, out, shuffle=False, progress=False)
    samples = read_shards(out)
    assert [(rec["image_id"], img[0]) for _, _, rec, img in samples] == [("sub/y.png", "png"), ("x.jpg", "jpg")]
    assert samples[1][2]["captions"] == [{"lang": "en", "text": "a red square", "kind": "native"},
                                         {"lang": "de", "text": "ein rotes Quadrat", "kind": "native"}]
    assert samples[0][2]["captions"] == [{"lang": "fr", "text": "un carré bleu", "kind": "native"}]
    assert index["skipped"] == {"missing_image": 1, "no_caption": 1}
    assert {(r["source_id"], r["reason"]) for r in read_report(out)} == {("w.jpg", "missing_image"),
                                                                         ("z.jpg", "no_caption")}
    assert index["shuffled"] is False and index["languages"] == {"de": 1, "en": 1, "fr": 1}


def test_image_folder_source_csv_jsonl_and_errors(tmp_path):
    folder = tmp_path / "imgs"
    _image(str(folder / "x.jpg"), "red", "JPEG")
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text('image,caption\nx.jpg,"a red, square"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="no 'lang' column"):
        ImageFolderSource(str(folder), str(csv_file))
    src = ImageFolderSource(str(folder), str(csv_file), lang="en")
    assert src.load("x.jpg").record["captions"] == [{"lang": "en", "text": "a red, square", "kind": "native"}]
    jl = tmp_path / "caps.jsonl"
    _jsonl(jl, [{"image": "x.jpg", "text": "rot", "lang": "deu"}])
    assert ImageFolderSource(str(folder), str(jl)).load("x.jpg").record["captions"] == [
        {"lang": "de", "text": "rot", "kind": "native"}]
    bad = tmp_path / "bad.tsv"
    bad.write_text("file\ttext\nx.jpg\tred\n")
    with pytest.raises(ValueError, match=r"bad.tsv.*'image' column"):
        ImageFolderSource(str(folder), str(bad), lang="en")
    with pytest.raises(FileNotFoundError, match="image folder"):
        ImageFolderSource(str(tmp_path / "none"), str(csv_file), lang="en")


# --------------------------------------------------------------------------------------------
# aligned text
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def aligned(tmp_path):
    d = tmp_path / "mt"
    d.mkdir()
    lines = {"en": ["one", "two", "three", "four", ""],
             "de": ["eins", "zwei", " ", "vier", ""],
             "fr": ["un", "", "", "quatre", ""]}
    for lang, ls in lines.items():
        (d / f"train.{lang}").write_text("\n".join(ls) + "\n", encoding="utf-8")
    (d / "train.notalanguage").write_text("x\n")
    return str(d / "train")


def test_aligned_source(aligned, tmp_path):
    src = AlignedTextSource(aligned, ["en", "de", "fr"])
    assert src.kind == "parallel" and src.items() == [0, 1, 2, 3, 4]
    out = str(tmp_path / "out")
    index = write_shards(src, out, shuffle=False, progress=False)
    records = [rec for _, _, rec, img in read_shards(out) if img is None]
    assert records == [{"id": "1", "texts": {"en": "one", "de": "eins", "fr": "un"}},
                       {"id": "2", "texts": {"en": "two", "de": "zwei"}},
                       {"id": "4", "texts": {"en": "four", "de": "vier", "fr": "quatre"}}]
    assert index["kind"] == "parallel" and index["n_samples"] == 3 and "n_questions" not in index
    assert index["languages"] == {"de": 3, "en": 3, "fr": 2}
    assert index["skipped"] == {"too_few_texts": 2}
    assert [r["source_id"] for r in read_report(out)] == ["line 3", "line 5"]
    # languages found from the prefix's files (suffixes that are language codes), as dict, too
    assert list(AlignedTextSource(aligned).paths) == ["de", "en", "fr"]
    assert AlignedTextSource({"en": aligned + ".en", "fr": aligned + ".fr"}).load(1).record == {
        "id": "2", "texts": {"en": "two"}}


def test_aligned_source_errors(aligned, tmp_path):
    with open(aligned + ".fr", "a") as f:
        f.write("extra\n")
    with pytest.raises(ValueError, match="misaligned"):
        AlignedTextSource(aligned, ["en", "fr"])
    with pytest.raises(FileNotFoundError, match="train.es"):
        AlignedTextSource(aligned, ["en", "es"])
    with pytest.raises(FileNotFoundError, match="need at least two"):
        AlignedTextSource(str(tmp_path / "nothing"))


# --------------------------------------------------------------------------------------------
# splitting, determinism, overwrite
# --------------------------------------------------------------------------------------------
def test_max_samples_splitting(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    for lang in ("en", "de"):
        (d / f"x.{lang}").write_text("".join(f"{lang} {i}\n" for i in range(10)))
    out = str(tmp_path / "out")
    index = write_shards(AlignedTextSource(str(d / "x"), ["en", "de"]), out, max_samples=3, prefix="mt",
                         shuffle=False, progress=False)
    assert [s["file"] for s in index["shards"]] == [f"mt-{i:06d}.tar" for i in range(4)]
    assert [s["n_samples"] for s in index["shards"]] == [3, 3, 3, 1]
    assert [s["languages"] for s in index["shards"]] == [{"de": 3, "en": 3}] * 3 + [{"de": 1, "en": 1}]
    samples = read_shards(out)
    assert [(f, k, r["id"]) for f, k, r, _ in samples][3:5] == [("mt-000001.tar", "000000003", "4"),
                                                               ("mt-000001.tar", "000000004", "5")]
    assert [k for _, k, _, _ in samples] == [f"{i:09d}" for i in range(10)]
    assert sum(os.path.getsize(p) for p in shard_paths(out)) == index["n_bytes"]


def test_max_bytes_splitting(tmp_path):
    def ex(i, n):
        return Example(f"s{i}", {"id": str(i), "texts": {"en": "e" * n, "de": "d" * n}})

    small = ex(0, 600)
    from xvl.data.shard_format import encode_record
    size_small = tar_member_size(len(encode_record(small.record)))
    assert size_small == 2048
    examples = [ex(0, 600), ex(1, 600), ex(2, 600), ex(3, 5000), ex(4, 600)]
    out = str(tmp_path / "out")
    # 2 small samples fit (4096 <= 5000), a third would not; the big one exceeds the limit alone
    index = write_shards(examples, out, max_bytes=5000, progress=False)
    assert [s["n_samples"] for s in index["shards"]] == [2, 1, 1, 1]
    assert [r["id"] for _, _, r, _ in read_shards(out)] == ["0", "1", "2", "3", "4"]
    assert index["kind"] == "parallel" and index["source"] == "examples" and index["shuffled"] is False
    # the limit is inclusive: exactly two small samples fit 4096 bytes, not 4095
    index = write_shards(examples, out, max_bytes=4096, overwrite=True, progress=False)
    assert [s["n_samples"] for s in index["shards"]] == [2, 1, 1, 1]
    index = write_shards(examples, out, max_bytes=4095, overwrite=True, progress=False)
    assert [s["n_samples"] for s in index["shards"]] == [1, 1, 1, 1, 1]


def test_deterministic_output_and_seed(jsonl_data, tmp_path):
    def run(name, **kw):
        src = JsonlImageSource(str(jsonl_data / "captions.jsonl"), vqa_path=str(jsonl_data / "vqa.jsonl"))
        out = str(tmp_path / name)
        write_shards(src, out, max_samples=2, progress=False, **kw)
        return out

    one, two, other, plain = run("one", seed=1), run("two", seed=1), run("other", seed=3), run("plain", shuffle=False)
    assert shard_bytes(one) == shard_bytes(two) and len(shard_bytes(one)) == 2
    for path in shard_paths(one):  # fixed member metadata, whenever it is written
        with tarfile.open(path) as tar:
            assert {(m.mtime, m.uname, m.gname, m.mode) for m in tar.getmembers()} == {(0, "xvl", "xvl", 0o444)}
    for name in (INDEX_NAME, "report.jsonl"):
        assert file_bytes(os.path.join(one, name)) == file_bytes(os.path.join(two, name))

    def order(d):
        return [r["image_id"] for _, _, r, _ in read_shards(d)]

    assert sorted(order(one)) == sorted(order(other)) == sorted(order(plain))
    assert order(one) != order(other)
    assert order(plain) == ["A", "B", "images/c.jpeg", "images/v.jpg"]


def test_refuses_existing_output_unless_overwrite(aligned, tmp_path):
    src = AlignedTextSource(aligned, ["en", "de"])
    out = str(tmp_path / "out")
    write_shards(src, out, max_samples=1, progress=False)
    assert len(shard_paths(out)) == 3  # lines 3 and 5 have fewer than two texts
    before = shard_bytes(out)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(src, out, progress=False)
    assert shard_bytes(out) == before
    # shards without an index (an interrupted conversion) are refused too
    os.remove(os.path.join(out, INDEX_NAME))
    with pytest.raises(FileExistsError, match="shard"):
        write_shards(src, out, progress=False)
    index = write_shards(src, out, overwrite=True, progress=False)
    assert sorted(os.listdir(out)) == ["index.json", "report.jsonl", "shard-000000.tar"]
    assert index["n_samples"] == 3 and len(read_report(out)) == 2


def test_no_usable_samples_is_an_error(tmp_path):
    out = str(tmp_path / "out")
    examples = [Example("a", {"id": "1", "texts": {"en": "x"}}, ), Example("b", {}, error="missing_image: /b.jpg")]
    with pytest.raises(ValueError, match="no usable samples"):
        write_shards(examples, out, kind="parallel", progress=False)
    assert not os.path.exists(os.path.join(out, INDEX_NAME))
    assert [(r["source_id"], r["reason"], r["detail"]) for r in read_report(out)] == [
        ("a", "too_few_texts", "texts in ['en'] only"), ("b", "missing_image", "/b.jpg")]


def test_failure_leaves_no_partial_files(aligned, tmp_path):
    class Broken(AlignedTextSource):
        def load(self, item):
            if item == 3:
                raise RuntimeError("disk on fire")
            return super().load(item)

    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(Broken(aligned, ["en", "de"]), out, max_samples=1, shuffle=False, progress=False)
    # the shard finished before the failure is there (line 1), the open one (line 2) is not, nor an
    # index (incomplete conversion), a report or temporaries
    assert sorted(os.listdir(out)) == ["shard-000000.tar"]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_index(out)


def test_read_index_errors(aligned, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard index"):
        read_index(str(tmp_path))
    out = str(tmp_path / "out")
    write_shards(AlignedTextSource(aligned, ["en", "de"]), out, max_samples=2, progress=False)
    path = os.path.join(out, INDEX_NAME)
    index = json.loads(file_bytes(path))
    os.remove(os.path.join(out, "shard-000001.tar"))
    with pytest.raises(FileNotFoundError, match="shard-000001.tar"):
        read_index(out)
    with open(path, "w") as f:
        json.dump({**index, "format": "other/9"}, f)
    with pytest.raises(ValueError, match="other/9"):
        read_index(path)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_make_shards(jsonl_data, aligned, tmp_path, capsys):
    from xvl.cli import main

    out = str(tmp_path / "cli")
    rc = main(["data", "make-shards", "--out", out, "--jsonl", str(jsonl_data / "captions.jsonl"),
               "--vqa", str(jsonl_data / "vqa.jsonl"), "--max-bytes", "1MB", "--max-samples", "3", "--seed", "1",
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote 4 image_text samples, 3 questions in 2 shard(s)" in text
    assert "missing_image: 1" in text and "bad_image: 1" in text
    # the same conversion through the API gives the same bytes
    api = str(tmp_path / "api")
    write_shards(JsonlImageSource(str(jsonl_data / "captions.jsonl"), vqa_path=str(jsonl_data / "vqa.jsonl")),
                 api, max_samples=3, max_bytes=10**6, seed=1, progress=False)
    assert shard_bytes(out) == shard_bytes(api)

    # again without --overwrite: refused; with it: replaced
    args = ["data", "make-shards", "--out", out, "--aligned", aligned, "--languages", "en,de", "--no-shuffle",
            "--no-progress"]
    assert main(args) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert read_index(out)["kind"] == "parallel" and len(read_shards(out)) == 3


@pytest.mark.parametrize("extra, message", [
    (["--jsonl", "MISSING.jsonl"], "not found"),
    (["--image-folder", "NO_DIR", "--captions", "x.tsv"], "image folder not found"),
    (["--image-folder", "IMGS"], "needs --captions"),
    (["--jsonl", "CAPS", "--languages", "en,de"], "--languages cannot be used with --jsonl"),
    (["--image-folder", "IMGS", "--captions", "CAPS_NO_LANG"], "no 'lang' column"),
])
def test_cli_bad_input_writes_nothing(jsonl_data, tmp_path, capsys, extra, message):
    from xvl.cli import main

    caps = tmp_path / "nolang.tsv"
    caps.write_text("image\ttext\na.jpg\tred\n")
    subst = {"MISSING.jsonl": str(tmp_path / "missing.jsonl"), "NO_DIR": str(tmp_path / "nodir"),
             "IMGS": str(jsonl_data / "images"), "CAPS": str(jsonl_data / "captions.jsonl"),
             "CAPS_NO_LANG": str(caps)}
    out = tmp_path / "out"
    assert main(["data", "make-shards", "--out", str(out), "--no-progress"] + [subst.get(a, a) for a in extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_size_parsing():
    from xvl.cli import _parse_size

    assert _parse_size("1000000") == 1_000_000
    assert _parse_size("500MB") == 500_000_000
    assert _parse_size("1GB") == 10**9
    assert _parse_size("1gib") == 1 << 30
    assert _parse_size("64 KiB") == 65536
    assert _parse_size("1.5G") == 1_500_000_000
    import argparse

    for bad in ("", "MB", "10 parsecs", "-5", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _parse_size(bad)
