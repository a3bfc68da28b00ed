"""``accelerate launch`` with 2 CPU processes: groups are sharded by whole prompts, the loss uses
global normalisers, so two processes end with the weights of one process on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_trainer import read_jsonl, run, write_pipeline

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pipelines" / "accelerate" / "cpu_2proc.yaml"

pytestmark = pytest.mark.timeout(600)


def test_two_processes_agree_and_match_one_process(tmp_path, tiny_policy, toy_data):
    trainer = (
        "{steps: 2, prompts_per_step: 4, micro_batch_size: 3, learning_rate: 0.01, beta: 0.01}"
    )
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG)]
    cmd += ["-m", "cat_framework", "run", str(pipeline), "--run-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "ddp" / "log.jsonl")
    agree = [e for e in log if e["event"] == "replicas agree"]
    assert len(agree) == 2 and all(e["processes"] == 2 for e in agree)
    metrics = read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]  # written once, by the main process
    assert len(read_jsonl(tmp_path / "ddp" / "records.jsonl")) == 2 * 4  # both shards' groups

    run(pipeline, tmp_path / "single")
    one = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    start = load_file(str(tiny_policy / "model.safetensors"))
    for name, tensor in one.items():
        assert not torch.equal(tensor, start[name])
        # Adam normalises each coordinate, so a gradient that is ~0 up to float summation order
        # can move by up to one lr-sized step: allow that on a tiny share of coordinates only
        diff = (two[name] - tensor).abs()
        close = diff <= 1e-5 + 1e-4 * tensor.abs()
        assert close.float().mean() >= 0.999, name
        assert float(diff.max()) <= 2 * 0.01, name
    single_metrics = read_jsonl(tmp_path / "single" / "metrics.jsonl")
    for a, b in zip(metrics, single_metrics, strict=True):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
