"""scripts/bench_data.py on a tiny synthetic dataset (workers=0: spawned workers are slow to start).

Checks the report's structure and arithmetic, not speed: both pipelines timed, the conversion
figures match the shard index on disk, the ratio is shards / baseline.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_data.py")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xvl.data.demo import generate_demo

    return generate_demo(str(tmp_path_factory.mktemp("demo")), n_train=40, n_val=8, image_size=32, seed=0)


def test_bench_reports_both_pipelines_and_conversion(demo, tmp_path, capsys):
    bench = _bench()
    out, shards = tmp_path / "bench.json", tmp_path / "shards"
    rc = bench.main(["--jsonl", demo.train, "--workers", "0", "--batches", "3", "--warmup", "1",
                     "--batch-size", "8", "--image-size", "32", "--max-length", "16", "--shard-size", "16",
                     "--vocab-size", "300", "--shuffle-buffer", "8", "--make-shards-into", str(shards),
                     "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())

    rows = {(r["pipeline"], r["workers"]): r for r in report["results"]}
    assert set(rows) == {("baseline", 0), ("shards", 0)}
    for r in rows.values():
        assert r["samples_per_s"] > 0 and r["startup_s"] > 0 and r["seconds"] > 0
        assert r["samples_per_s"] == pytest.approx(3 * 8 / r["seconds"])
        assert r["batch_size"] == 8 and r["batches"] == 3 and len(r["runs"]) == 1
        assert r["peak_rss_main_mib"] > 0 and r["ru_maxrss_self_mib"] > 0
        assert r["peak_rss_workers_mib"] == []  # no worker processes at workers=0
    assert rows[("shards", 0)]["data_skips"] == {}  # the demo data is clean
    ratio = rows[("shards", 0)]["samples_per_s"] / rows[("baseline", 0)]["samples_per_s"]
    assert rows[("shards", 0)]["ratio_shards_over_baseline"] == pytest.approx(ratio)
    assert report["ratios"] == {"0": pytest.approx(ratio)}
    assert rows[("baseline", 0)]["ratio_shards_over_baseline"] is None

    # conversion: 40 samples at 16 per shard -> 3 shards, the index's byte count
    conv = report["conversion"]
    index = json.loads((shards / "index.json").read_text())
    assert conv["made"] is True and conv["seconds"] > 0
    assert conv["n_shards"] == 3 == len(index["shards"])
    assert conv["n_samples"] == 40 and conv["n_bytes"] == index["n_bytes"] > 0
    assert conv["n_bytes"] == sum(os.path.getsize(shards / s["file"]) for s in index["shards"])
    assert report["data"]["n_records"] == 40 and report["data"]["source_bytes"] > 0
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch_threads"] >= 1
    assert report["tokenizer"]["source"] == "trained" and report["tokenizer"]["n_texts"] > 0

    table = capsys.readouterr().out
    assert "| baseline | 0 |" in table and "| shards | 0 |" in table and f"{ratio:.2f}" in table

    # the kept shards are read back with --shards: counts from the index, no conversion timed
    out2 = tmp_path / "again.json"
    assert bench.main(["--jsonl", demo.train, "--shards", str(shards), "--workers", "0", "--batches", "1",
                       "--warmup", "1", "--batch-size", "8", "--image-size", "32", "--max-length", "16",
                       "--vocab-size", "300", "--shuffle-buffer", "0", "--out", str(out2)]) == 0
    conv2 = json.loads(out2.read_text())["conversion"]
    assert conv2["made"] is False and conv2["seconds"] is None
    assert (conv2["n_shards"], conv2["n_samples"], conv2["n_bytes"]) == (3, 40, conv["n_bytes"])


def test_missing_inputs_exit_2(demo, tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--jsonl", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert bench.main(["--jsonl", demo.train, "--shards", str(tmp_path / "noshards")]) == 2
    assert "noshards" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "captions": []}\nnot json\n')
    assert bench.main(["--jsonl", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err
