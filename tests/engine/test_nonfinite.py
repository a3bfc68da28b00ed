"""The non-finite guard (issue 23, item 1): a NaN reaching the loss never reaches the weights.

A NaN is injected into the real loss of one step (the rest of the path runs as is): the update is
skipped and counted, or, after ``trainer.nonfinite_stop_after`` such steps in a row, the run stops
``failed``; either way no file under the run holds a non-finite weight. The decision is the same
on every process, and nothing non-finite is ever saved.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cat_framework.engine import grpo, sft
from cat_framework.engine.checkpoint import CHECKPOINTS, save_checkpoint
from cat_framework.engine.finite import NonfiniteError, NonfiniteGuard
from cat_framework.engine.grpo_step import GRPOStep
from cat_framework.errors import CatError
from tests.engine.test_async_rollouts import PLUGIN
from tests.engine.test_checkpoint import make_training, one_process
from tests.engine.test_sft import sft_pipeline
from tests.engine.test_trainer import read_jsonl, run, write_pipeline

TRAINER = (
    "{steps: 4, prompts_per_step: 2, learning_rate: 0.01, beta: 0.01, save_every: 1, "
    "keep_checkpoints: 10%s}"
)


def train_pipeline(tmp: Path, model: Path, data: Path, extra: str = "") -> Path:
    """4 steps whose every update moves the weights (the even-token reward always spreads)."""
    path = write_pipeline(tmp, model, data, TRAINER % extra)
    path.write_text(
        path.read_text().replace(
            "reward: {name: programmatic, fallback: number}", "reward: even_tokens"
        )
    )
    return path


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """The real GRPO loss, times NaN during ``steps`` (its gradient is NaN too)."""
    current = {"step": 0}
    step_call, loss = GRPOStep.__call__, grpo.grpo_loss

    def call(self: Any, prompts: Any, seeds: Any, step: int) -> Any:
        current["step"] = step
        return step_call(self, prompts, seeds, step)

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        out = loss(*args, **kwargs)
        if current["step"] in steps:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(GRPOStep, "__call__", call)
    monkeypatch.setattr(grpo, "grpo_loss", poisoned)


def assert_every_weight_finite(run_dir: Path) -> list[Path]:
    """Every safetensors file under the run holds finite values only; returns them."""
    files = sorted(run_dir.rglob("*.safetensors"))
    for file in files:
        for name, tensor in load_file(str(file)).items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{file}: {name}"
    return files


def test_a_nan_loss_is_skipped_and_the_run_ends_with_finite_weights(
    monkeypatch, tmp_path, tiny_policy, toy_data
):
    nan_loss_at(monkeypatch, {2})
    run(train_pipeline(tmp_path, tiny_policy, toy_data), tmp_path / "run", PLUGIN)
    files = assert_every_weight_finite(tmp_path / "run")
    assert tmp_path / "run" / "final" / "model.safetensors" in files
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "completed"
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["train/nonfinite_steps"] for m in metrics] == [0.0, 1.0, 0.0, 0.0]
    assert "loss" not in metrics[1] and all(math.isfinite(metrics[i]["loss"]) for i in (0, 2, 3))
    ckpt = tmp_path / "run" / CHECKPOINTS
    one, two, three = (
        load_file(str(ckpt / f"step-00000{s}" / "trainable.safetensors")) for s in (1, 2, 3)
    )
    assert all(torch.equal(one[n], two[n]) for n in one)  # the skipped step moved nothing
    assert not all(torch.equal(two[n], three[n]) for n in two)  # the next one trains again
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [e["where"] for e in log if e["event"].startswith("non-finite")] == ["step 2, pass 1"]


def test_nan_steps_in_a_row_stop_the_run_failed_with_nothing_non_finite_saved(
    monkeypatch, tmp_path, tiny_policy, toy_data
):
    nan_loss_at(monkeypatch, {2, 3, 4})
    pipeline = train_pipeline(tmp_path, tiny_policy, toy_data, ", nonfinite_stop_after: 2")
    with pytest.raises(NonfiniteError, match=r"step 3, pass 1: the loss or gradient was NaN"):
        run(pipeline, tmp_path / "run", PLUGIN)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed"
    assert (
        "2 update(s) in a row" in status["error"] and "nonfinite_stop_after: 2" in status["error"]
    )
    assert not (tmp_path / "run" / "final").exists()
    steps = sorted(p.name for p in (tmp_path / "run" / CHECKPOINTS).iterdir())
    assert steps == ["step-000001", "step-000002"]  # step 2 was skipped: step 1's weights
    assert_every_weight_finite(tmp_path / "run")


def test_sft_skips_a_nan_step(monkeypatch, tmp_path, tiny_policy, toy_data):
    """CaT-SFT's update has the same guard (NaN log-probs of the policy at step 2)."""
    current = {"step": 0}
    update, logps = sft.sft_update, sft.completion_logps

    def tracked(run: Any, pairs: Any, step: int, *rest: Any) -> Any:
        current["step"] = step
        return update(run, pairs, step, *rest)

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        logp, ent = logps(*args, **kwargs)
        return (logp * float("nan"), ent) if current["step"] == 2 else (logp, ent)

    monkeypatch.setattr(sft, "sft_update", tracked)
    monkeypatch.setattr(sft, "completion_logps", poisoned)
    pipeline = sft_pipeline(tmp_path, tiny_policy, toy_data)
    pipeline.write_text(pipeline.read_text().replace("steps: 100", "steps: 3"))
    run(pipeline, tmp_path / "run")
    metrics = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "tokens" in m]
    assert [m["train/nonfinite_steps"] for m in metrics] == [0.0, 1.0, 0.0]
    assert [("loss" in m) for m in metrics] == [True, False, True]
    assert_every_weight_finite(tmp_path / "run")


def test_non_finite_weights_are_never_saved(tmp_path):
    model, optimizer, scheduler = make_training()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(CatError, match="NaN or infinite values: checkpoint step-000003 is not"):
        save_checkpoint(tmp_path, 3, model, optimizer, scheduler, one_process(), {}, 2)
    assert not (tmp_path / CHECKPOINTS).exists()  # nothing written, not even a temporary folder


def test_the_guard_counts_only_consecutive_skips():
    model = torch.nn.Linear(2, 1)
    guard = NonfiniteGuard(2, one_process())
    model(torch.ones(1, 2)).sum().backward()
    assert guard.allow(True, model.parameters(), "step 1")
    model.weight.grad.fill_(float("nan"))
    assert not guard.allow(True, model.parameters(), "step 2")
    assert model.weight.grad is None  # dropped: no optimizer step can apply it
    model(torch.ones(1, 2)).sum().backward()
    assert guard.allow(True, model.parameters(), "step 3")  # the streak ends
    assert not guard.allow(False, model.parameters(), "step 4")  # a NaN loss alone
    with pytest.raises(NonfiniteError, match="step 5"):
        guard.allow(False, model.parameters(), "step 5")


WORKER = textwrap.dedent("""\
    import json, os, sys
    import torch
    from accelerate import Accelerator
    from cat_framework.engine.finite import NonfiniteGuard
    from cat_framework.engine.process_group import leave_process_group

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    if acc.process_index == 1:  # a NaN on one process only
        model.bias.grad.fill_(float("nan"))
    guard = NonfiniteGuard(3, acc)
    decisions = [guard.allow(True, model.parameters(), "step 1")]
    model(torch.ones(1, 2)).sum().backward()
    decisions.append(guard.allow(True, model.parameters(), "step 2"))
    with open(os.path.join(sys.argv[1], f"{acc.process_index}.json"), "w") as f:
        json.dump(decisions, f)
    leave_process_group()  # as the CLI does on its way out
    """)


@pytest.mark.timeout(300)
def test_every_process_takes_the_same_decision(tmp_path):
    """A NaN gradient on one of two processes: both skip (one stepping alone would diverge the
    replicas, and a process ahead of the others would hang in the next collective)."""
    import subprocess

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true",
        }  # fmt: skip
        cmd = [sys.executable, str(script), str(tmp_path)]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    decisions = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert decisions == [[False, True], [False, True]]


def test_under_an_fp16_loss_scaler_overflowing_gradients_are_left_to_the_scaler():
    """fp16's GradScaler skips an overflowing step and lowers its scale: dropping those
    gradients here would keep the scale, and the overflow, forever (and stop the run)."""
    from types import SimpleNamespace

    model = torch.nn.Linear(2, 1)
    acc = SimpleNamespace(num_processes=1, scaler=object())
    guard = NonfiniteGuard(1, acc)
    model(torch.ones(1, 2)).sum().backward()
    model.weight.grad.fill_(float("inf"))
    assert guard.allow(True, model.parameters(), "step 1")  # the scaler's call, not ours
    assert model.weight.grad is not None
    with pytest.raises(NonfiniteError):  # a NaN loss is still skipped, and counted
        guard.allow(False, model.parameters(), "step 2")
