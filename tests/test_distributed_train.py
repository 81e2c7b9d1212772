"""The whole trainer across two processes (torchrun, gloo on CPU): with gathered negatives, two ranks
of batch B log exactly the losses of one process with batch 2B on the same samples."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from xvl.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
NO_DROPOUT = ("model.text.config={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
              "intermediate_size: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.multiprocess
def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    from xvl.data.demo import generate_demo

    data = generate_demo(str(tmp_path / "demo"), n_train=48, n_val=8, image_size=32, seed=0)
    common = [f"data.train={data.train}", "data.val=null", NO_DROPOUT, "train.max_steps=4", "train.log_every=1",
              "train.ckpt_every=0"]
    single = tmp_path / "single"
    assert main(["train", TINY, *common, "train.batch_size=8", f"train.output_dir={single}"]) == 0

    double = tmp_path / "double"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "xvl.cli", "train", TINY, *common, "train.batch_size=4",
           f"train.output_dir={double}", "train.progress=false"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _losses(str(single)), _losses(str(double))
    assert sorted(two) == [1, 2, 3, 4]
    for step in range(1, 5):  # same samples, same gradients: same trajectory
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), (step, one, two)


@pytest.mark.multiprocess
def test_two_processes_stream_their_own_shards_and_save_both_positions(tmp_path, caplog):
    """Streamed shards under torchrun: each rank reads its own slot of the shards, the checkpoint's
    data position holds both ranks' positions, and resuming with another process count reseeds."""
    from xvl.data.demo import generate_demo

    data = generate_demo(str(tmp_path / "demo"), n_train=48, n_val=8, image_size=32, seed=0)
    shards = tmp_path / "shards"
    assert main(["data", "make-shards", "--jsonl", data.train, "--out", str(shards), "--max-samples", "12",
                 "--no-progress"]) == 0
    out = tmp_path / "run"
    common = ["data.train=null", "data.val=null", f"data.sources=[{{type: shards, path: {shards}}}]",
              "train.batch_size=4", "train.log_every=1", "train.ckpt_every=3", "data.stream.shuffle_buffer=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "xvl.cli", "train", TINY, *common, "train.max_steps=6",
           f"train.output_dir={out}", "train.progress=false"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "checkpoint-00000006" / "trainer_state.json") as f:
        state = json.load(f)["data_state"]
    assert state["world"] == 2 and set(state["positions"]) == {"0", "1"}
    key = f"shards:{shards}"
    assert [state["positions"][r]["0"][key] for r in ("0", "1")] == [24, 24]  # 6 steps x 4, no skips
    # one process cannot take over two ranks' positions: it reseeds (with a warning) and goes on
    import logging

    with caplog.at_level(logging.WARNING):
        assert main(["train", TINY, *common, "train.max_steps=8", f"train.output_dir={out}", "--resume"]) == 0
    assert "reseeded" in caplog.text
    assert sorted(_losses(str(out)))[-1] == 8
