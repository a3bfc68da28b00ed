"""LoRA under FSDP2 on CPU (2 processes, gloo): the sharded PEFT model trains like one process
(``mode: train`` and ``mode: sft``), and writes the same final adapter folder.

Rollouts come from a whole PEFT copy that receives only the adapters after each step; the KL
reference is the sharded model with adapters off; pi_0 generating is the copy with adapters off.

Tolerance: metrics equal to 1e-5 relative (as test_fsdp.py); final adapters within
1e-5 + 1e-4 x |w| on >= 99.9% of coordinates and within 2 x lr everywhere (Adam moves a
coordinate whose gradient is ~0 up to float summation order by up to one lr-sized step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_fsdp import (
    assert_same_run,
    launch,
    sft_matches_one_process,
    straight_and_resumed,
)
from tests.engine.test_trainer import read_jsonl, run, write_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LR = 0.01
LORA = "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}"
TRAINER = (
    f"{{steps: 3, prompts_per_step: 4, micro_batch_size: 3, learning_rate: {LR}, beta: 0.01, "
    f"{LORA}}}"
)
ADAPTERS = Path("final") / "adapter_model.safetensors"


def assert_same_adapters(one: Path, two: Path) -> None:
    a, b = load_file(str(one / ADAPTERS)), load_file(str(two / ADAPTERS))
    assert set(a) == set(b) and a
    assert not (one / "final" / "model.safetensors").exists()  # the adapter folder, as DDP
    assert not (two / "final" / "model.safetensors").exists()
    for key, tensor in a.items():
        if "lora_B" in key:
            assert tensor.abs().sum() > 0, key  # lora_B starts at zero: it trained
        diff = (b[key] - tensor).abs()
        assert (diff <= 1e-5 + 1e-4 * tensor.abs()).float().mean() >= 0.999, key
        assert float(diff.max()) <= 2 * LR, key


def test_fsdp2_lora_two_processes_match_one_process(tmp_path, tiny_policy, toy_data):
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER)  # pi_0 anchor
    proc = launch("run", str(pipeline), "--run-dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "fsdp" / "log.jsonl")
    assert sum(e["event"] == "fsdp2 on cpu" for e in log) == 2
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step-000003"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["sharded"] is True and state["processes"] == 2
    shards = [load_file(str(ckpt / f"trainable-{i}.safetensors")) for i in range(2)]
    assert all(name.count("lora_") for s in shards for name in s)  # only adapters train
    name = "base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight"
    base = load_file(str(tiny_policy / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    rows = base.shape[0]
    assert [s[name].shape[0] for s in shards] == [rows // 2, rows - rows // 2]  # really sharded

    run(pipeline, tmp_path / "single")
    assert_same_adapters(tmp_path / "single", tmp_path / "fsdp")
    # the same rollouts every step: the whole copy received the trained adapters
    sharded = assert_same_run(tmp_path / "fsdp", tmp_path / "single", [1, 2, 3])
    assert sharded[-1]["kl"] > 0  # the reference (adapters off) differs from the policy


def test_fsdp2_lora_sft_matches_one_process(tmp_path, tiny_policy, toy_data):
    trainer = (
        f"{{steps: 4, sft_epochs: 2, prompts_per_step: 4, micro_batch_size: 2, "
        f"learning_rate: {LR}, {LORA}}}"
    )
    # pi_0 (the PEFT copy, adapters off) synthesizes the references in both runs
    single, sharded = sft_matches_one_process(tmp_path, tiny_policy, toy_data, trainer)
    assert_same_adapters(single, sharded)


def test_fsdp2_lora_resume_is_exact(tmp_path, tiny_policy, toy_data):
    trainer = TRAINER.replace("steps: 3", "steps: 4, save_every: 2, lr_scheduler: linear")
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    # step 4's rollouts come from the resumed adapters, pushed to the whole copy at the resume
    straight, cut = straight_and_resumed(tmp_path, pipeline)
    a = load_file(str(straight / ADAPTERS))
    b = load_file(str(cut / ADAPTERS))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
