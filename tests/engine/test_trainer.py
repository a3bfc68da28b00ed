"""CaT-RL on a tiny random Llama (CPU, seconds): full and LoRA updates, checkpoints, exact resume.

The policy's rollouts are random characters; the ``majority`` reference over their last numbers
with the ``programmatic`` reward gives groups with mixed rewards, so the GRPO gradient is real.
"""

from __future__ import annotations

import gc
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cat_framework import hookimpl, load_plugins
from cat_framework.engine.checkpoint import latest_checkpoint
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.records import RunRecord
from cat_framework.runner import run_pipeline


def write_pipeline(tmp: Path, model: Path, data: Path, trainer: str, extra: str = "") -> Path:
    text = (
        textwrap.dedent(f"""\
        name: tiny-cat-rl
        mode: train
        seed: 3
        models:
          policy: {{backend: transformers, model: "{model}", device: cpu}}
        data:
          train: {{dataset: jsonl, path: "{data}", answer_field: answer, id_field: id}}
        rollouts: {{n: 4, temperature: 1.0, max_new_tokens: 10}}
        # a tiny random model commits to no answer: its last numbers vote and are rewarded
        # (a signal to train on)
        aggregator: {{name: majority, fallback: number}}
        reward: {{name: programmatic, fallback: number}}
        trainer: {trainer}
        """)
        + extra
    )
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


def run(
    pipeline: Path, run_dir: Path, *extra: Any, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    plugins = load_plugins(entry_points=False, extra=list(extra))
    pipe = load_pipeline(pipeline, plugins=plugins)
    return run_pipeline(
        pipe,
        plugins=plugins,
        run_dir=None if resume else str(run_dir),
        resume=str(run_dir) if resume else None,
        overwrite=overwrite,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_two_full_steps_change_every_parameter(tmp_path, tiny_policy, toy_data, captured):
    trainer = (
        "{steps: 3, prompts_per_step: 3, micro_batch_size: 5, learning_rate: 0.01, beta: 0.01}"
    )
    run(write_pipeline(tmp_path, tiny_policy, toy_data, trainer), tmp_path / "run")
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["kl"])
        assert 0 <= m["frac_reward_zero_std"] <= 1
        for key in ("entropy", "clip_fraction", "time/teacher", "time/training"):
            assert key in m
        # the teacher's diagnostics, every step: groups whose majority has no answer are counted
        assert m["reference/no_answer/total"] == 3
        assert 0 <= m["reward/unscorable"] <= 1
    assert min(m["frac_reward_zero_std"] for m in metrics) < 1  # some group carried signal
    assert metrics[-1]["kl"] > 0  # the policy moved away from pi_0
    records = read_jsonl(tmp_path / "run" / "records.jsonl")
    assert len(records) == 3 * 3
    for rec in records:
        assert RunRecord.from_dict(rec).to_dict() == rec  # one typed schema, read back losslessly
        assert len(rec["rollouts"]) == 4 and all(ro["trained"] for ro in rec["rollouts"])
        assert rec["primary"] == "majority" and rec["mode"] == "train"
        advantages = [ro["advantage"] for ro in rec["rollouts"]]
        assert abs(sum(advantages)) < 1e-4  # group-relative
        if rec["references"]["majority"]["answer"] is None:  # no reference: no signal
            assert [ro["reward"] for ro in rec["rollouts"]] == [None] * 4
            assert advantages == [0.0] * 4
    before = initial_weights(tiny_policy)
    after = captured[0].model.state_dict()
    unchanged = [n for n, t in before.items() if torch.equal(t, after[n])]
    assert unchanged == []
    # pi_0 (anchor and KL reference) is a frozen copy that did not move
    frozen = captured[0].frozen.state_dict()
    assert all(torch.equal(t, frozen[n]) for n, t in before.items())
    final = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(final[n], after[n]) for n in final)
    assert latest_checkpoint(tmp_path / "run").step == 3


def test_lora_changes_only_adapters_and_keeps_one_base_copy(
    tmp_path, tiny_policy, toy_data, captured
):
    from transformers import LlamaForCausalLM

    trainer = (
        "{steps: 2, prompts_per_step: 3, learning_rate: 0.05, beta: 0.01, "
        "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}"
    )
    gc.collect()
    existing = {id(o) for o in gc.get_objects() if isinstance(o, LlamaForCausalLM)}
    run(write_pipeline(tmp_path, tiny_policy, toy_data, trainer), tmp_path / "run")
    policy = captured[0]
    assert policy.frozen is None  # anchor and reference = base with adapters disabled
    assert policy.anchor.peft_model is policy.model
    gc.collect()
    made = [
        o for o in gc.get_objects() if isinstance(o, LlamaForCausalLM) and id(o) not in existing
    ]
    assert len(made) == 1  # the run loaded the base model once and copied nothing
    before = initial_weights(tiny_policy)
    state = policy.model.state_dict()
    changed_lora = unchanged_lora = 0
    for name, tensor in state.items():
        if "lora_" in name:
            # lora_B starts at zero: every adapter matrix must have moved
            if "lora_B" in name:
                changed_lora += bool(tensor.abs().sum() > 0)
                unchanged_lora += bool(tensor.abs().sum() == 0)
            continue
        base = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(tensor, before[base]), name
    assert changed_lora == 4 and unchanged_lora == 0  # 2 layers x (q, v)
    ckpt = load_file(str(latest_checkpoint(tmp_path / "run").path / "trainable.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


class StopAt:
    """An observer that interrupts the run after a step, like a kill between steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s", "sync/time"))}
        for r in rows
    ]


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_policy, toy_data, captured):
    trainer = (
        "{steps: 4, prompts_per_step: 2, learning_rate: 0.01, beta: 0.01, save_every: 2, "
        "lr_scheduler: linear}"
    )
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    run(pipeline, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "cut", ("stop", StopAt(3)))
    assert latest_checkpoint(tmp_path / "cut").step == 2
    assert [m["step"] for m in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3]
    run(pipeline, tmp_path / "cut", resume=True)
    straight = captured[0].model.state_dict()
    resumed = captured[2].model.state_dict()
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
    m_straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    m_resumed = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert comparable(m_straight) == comparable(m_resumed)
    r_straight = read_jsonl(tmp_path / "straight" / "records.jsonl")
    assert r_straight == read_jsonl(tmp_path / "cut" / "records.jsonl")


def test_fresh_run_in_a_used_directory_is_refused_or_overwritten(tmp_path, tiny_policy, toy_data):
    trainer = "{steps: 2, prompts_per_step: 2, learning_rate: 0.01, save_every: 1}"
    run(write_pipeline(tmp_path, tiny_policy, toy_data, trainer), tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run").step == 2
    (tmp_path / "run" / "notes.txt").write_text("mine")  # not the run's: never deleted
    shorter = "{steps: 1, prompts_per_step: 2, learning_rate: 0.01, save_every: 1}"
    with pytest.raises(CatError, match=r"already holds a run.*--resume"):
        run(write_pipeline(tmp_path, tiny_policy, toy_data, shorter), tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run").step == 2  # the refused run touched nothing
    run(write_pipeline(tmp_path, tiny_policy, toy_data, shorter), tmp_path / "run", overwrite=True)
    # the old step-2 checkpoint must not outlive the new run (a --resume would load it)
    assert latest_checkpoint(tmp_path / "run").step == 1
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
