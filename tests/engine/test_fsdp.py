"""FSDP2 on CPU (2 processes, gloo): sharded full-parameter training matches one process, and a
run killed after a sharded checkpoint resumes to exactly the weights of an uninterrupted run.
``mode: sft`` under FSDP2 matches one process too, references included: no sampling seed depends
on the process count (exploration by global prompt index, synthesis by the aggregator's seed, each
generated row by its request's seed).

Tolerance (``mode: train``, 3 steps, lr 0.01): metrics equal to 1e-5 relative; final weights
within 1e-5 + 1e-4 x |w| on >= 99.9% of coordinates and within 2 x lr everywhere (Adam moves a
coordinate whose gradient is ~0 up to float summation order by up to one lr-sized step: the same
bound as the DDP test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_trainer import comparable, read_jsonl, run, write_pipeline

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pipelines" / "accelerate" / "fsdp2_cpu_2proc.yaml"
TRAINER = "{steps: 3, prompts_per_step: 4, micro_batch_size: 3, learning_rate: 0.01, beta: 0.01}"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def launch(
    *args: str, script: Path | None = None, config: Path = CONFIG
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    cmd += [str(script)] if script else ["-m", "cat_framework"]
    return subprocess.run(
        [*cmd, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )


def kl_only_pi0(path: Path) -> Path:
    """The anchor is the policy: pi_0 only gives KL log-probs, so it is sharded too."""
    path.write_text(path.read_text().replace("models:\n", "models:\n  anchor: policy\n"))
    return path


def assert_same_run(sharded: Path, single: Path, steps: list[int]) -> list[dict]:
    """Two runs of one pipeline agree: training metrics to 1e-5 relative (a null, e.g. the
    reward of an all-unscorable step, stays null) and the same records (rollouts, rewards,
    references) by step and prompt (processes gather their shards in another order). Returns
    the first run's metrics for further checks."""
    runs = [read_jsonl(d / "metrics.jsonl") for d in (sharded, single)]
    assert [m["step"] for m in runs[0]] == steps
    for a, b in zip(*runs, strict=True):
        for key in ("reward/mean", "loss", "kl", "grad_norm", "entropy"):
            if b.get(key) is None:
                assert a.get(key) is None, key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    key = lambda r: (r["step"], r["prompt_id"])  # noqa: E731
    records = [sorted(read_jsonl(d / "records.jsonl"), key=key) for d in (sharded, single)]
    assert records[0] == records[1]
    return runs[0]


def test_fsdp2_two_processes_match_one_process(tmp_path, tiny_policy, toy_data):
    pipeline = kl_only_pi0(write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER))
    proc = launch("run", str(pipeline), "--run-dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "fsdp" / "log.jsonl")
    assert sum(e["event"] == "fsdp2 on cpu" for e in log) == 2
    assert sum(e["event"] == "sharded weights: no replica check" for e in log) == 2
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step-000003"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["sharded"] is True and state["processes"] == 2
    shards = [load_file(str(ckpt / f"trainable-{i}.safetensors")) for i in range(2)]
    name = "model.layers.0.mlp.up_proj.weight"
    rows = load_file(str(tiny_policy / "model.safetensors"))[name].shape[0]
    assert [s[name].shape[0] for s in shards] == [rows // 2, rows - rows // 2]  # really sharded

    run(pipeline, tmp_path / "single")
    one = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    start = load_file(str(tiny_policy / "model.safetensors"))
    assert set(one) == set(two)
    assert_same_training(one, two, start)
    assert_same_run(tmp_path / "fsdp", tmp_path / "single", [1, 2, 3])


def assert_same_training(
    one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> None:
    assert set(one) == set(two)
    for key, tensor in one.items():
        assert not torch.equal(tensor, start[key])
        diff = (two[key] - tensor).abs()
        close = diff <= 1e-5 + 1e-4 * tensor.abs()
        assert close.float().mean() >= 0.999, key
        assert float(diff.max()) <= 2 * 0.01, key


def to_sft(path: Path) -> Path:
    """The test pipeline as ``mode: sft`` whose references pi_0 synthesizes (free-form)."""
    text = (
        path.read_text().replace("mode: train", "mode: sft").replace("reward: programmatic\n", "")
    )
    text = text.replace(
        "{name: majority, fallback: number}", "{name: synthesis, max_new_tokens: 12}"
    )
    path.write_text(text.replace("{dataset: jsonl,", "{dataset: jsonl, task: freeform,"))
    return path


def sft_matches_one_process(
    tmp_path: Path, tiny_policy: Path, toy_data: Path, trainer: str
) -> tuple[Path, Path]:
    """Run ``mode: sft`` (pi_0 synthesizes the references) under FSDP2 with 2 processes and in
    one process, and check what must agree: losses to 1e-5 relative and the same references
    (compared by prompt: the main process writes each batch's rows process by process).
    Returns (one process's run, the sharded run) for the weight checks."""
    path = to_sft(write_pipeline(tmp_path, tiny_policy, toy_data, trainer))
    proc = launch("run", str(path), "--run-dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = tmp_path / "fsdp" / "checkpoints" / "step-000004" / "state.json"
    assert json.loads(state.read_text())["sharded"] is True  # really FSDP2, not DDP
    run(path, tmp_path / "single")
    sharded = read_jsonl(tmp_path / "fsdp" / "metrics.jsonl")
    assert [m["step"] for m in sharded] == [1, 2, 3, 4]
    for a, b in zip(sharded, read_jsonl(tmp_path / "single" / "metrics.jsonl"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    refs = [
        sorted(read_jsonl(tmp_path / d / "records.jsonl"), key=lambda r: r["prompt_id"])
        for d in ("fsdp", "single")
    ]
    assert len(refs[0]) == 6 and refs[0] == refs[1]
    return tmp_path / "single", tmp_path / "fsdp"


def test_fsdp2_sft_matches_one_process(tmp_path, tiny_policy, toy_data):
    trainer = (
        "{steps: 4, sft_epochs: 2, prompts_per_step: 4, micro_batch_size: 2, learning_rate: 0.01}"
    )
    single, sharded = sft_matches_one_process(tmp_path, tiny_policy, toy_data, trainer)
    one = load_file(str(single / "final" / "model.safetensors"))
    two = load_file(str(sharded / "final" / "model.safetensors"))
    assert_same_training(one, two, load_file(str(tiny_policy / "model.safetensors")))


KILL_AFTER_STEP_3 = textwrap.dedent("""\
    import os
    import sys
    from cat_framework import hookimpl, load_plugins
    from cat_framework.runner import run_pipeline
    from cat_framework.pipeline import load_pipeline

    class Kill:
        @hookimpl
        def on_step_end(self, step):
            if step == 3:  # the main process dies; the launcher then kills the other
                os._exit(3)

    plugins = load_plugins(entry_points=False, extra=[("kill", Kill())])
    pipeline = load_pipeline(sys.argv[1], plugins=plugins)
    run_pipeline(pipeline, plugins=plugins, run_dir=sys.argv[2])
""")


def straight_and_resumed(tmp_path: Path, pipeline: Path) -> tuple[Path, Path]:
    """Run ``pipeline`` (4 steps, checkpoints every 2) straight, and again killed after step 3
    then resumed; check the metrics and records agree and return (straight, resumed) runs."""
    straight = launch("run", str(pipeline), "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_STEP_3)
    killed = launch(str(pipeline), str(tmp_path / "cut"), script=script)
    assert killed.returncode != 0
    assert [m["step"] for m in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3]
    resumed = launch("run", str(pipeline), "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = tmp_path / "straight", tmp_path / "cut"
    metrics = [read_jsonl(d / "metrics.jsonl") for d in runs]
    assert comparable(metrics[0]) == comparable(metrics[1])
    assert read_jsonl(runs[0] / "records.jsonl") == read_jsonl(runs[1] / "records.jsonl")
    return runs


def test_fsdp2_resume_is_exact(tmp_path, tiny_policy, toy_data):
    trainer = TRAINER.replace("steps: 3", "steps: 4, save_every: 2, lr_scheduler: linear")
    pipeline = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)  # pi_0 anchor: whole
    straight, cut = straight_and_resumed(tmp_path, pipeline)
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
