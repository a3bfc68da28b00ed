"""The GPU check (``benchmarks/gpu_check.py``) on the CPU, so the script a lent GPU runs never rots.

``--dry-run`` runs every item of the check for real on the CPU (bf16 autocast, FSDP2 on gloo),
checks what each run wrote, and validates the vLLM item's pipeline without starting an engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_runs_every_item_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run"]
    cmd += ["--out", str(tmp_path), "--hidden", "64", "--layers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check-cpu-dry-run.json").read_text())
    items = report["items"]
    trained = ("grpo-bf16", "grpo-lora-bf16", "grpo-bf16-rollouts", "fsdp2-1proc")
    for name in ("generate-bf16", *trained):
        assert items[name]["status"] == "pass", items[name]
        assert items[name]["peak_gib"] > 0
    for name in trained:  # the check read the exported weights and found them trained
        assert "tensors changed" in items[name]["detail"]
    assert items["vllm-engine"]["status"] in ("validated", "skip")
    assert items["server-placement"]["status"] == "skip"
    table = (tmp_path / "gpu_check-cpu-dry-run.md").read_text()
    assert all(f"| {name} |" in table for name in items)


def test_real_run_refuses_a_machine_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--dry-run" in proc.stderr
