"""On-policy importance weights taken in the update's own forward.

With fresh rollouts, one optimisation pass and sampler log-probs over the full vocabulary, pi_old
is the update's forward itself, so the weights (and their statistics) need no no-grad pass of
their own. The run must be the one the separate pass gives: same metrics and same weights to
float noise, one forward pass fewer per micro-batch."""

from __future__ import annotations

import pytest
import torch

from cat_framework.engine.grpo_step import GRPOStep
from tests.engine.test_trainer import comparable, initial_weights, read_jsonl, run, write_pipeline

TRAINER = (
    "{steps: 2, prompts_per_step: 2, learning_rate: 0.01, beta: 0.0, "
    "rollout_dtype: bfloat16, vllm_importance_sampling: true%s}"
)


def trained(tmp_path, name, tiny_policy, toy_data, captured, extra: str = ""):
    folder = tmp_path / name
    folder.mkdir()
    run(write_pipeline(folder, tiny_policy, toy_data, TRAINER % extra), folder / "run")
    metrics = comparable(read_jsonl(folder / "run" / "metrics.jsonl"))
    weights = {k: v.clone() for k, v in captured[-1].model.state_dict().items()}
    return metrics, weights


def test_in_pass_weights_train_as_a_pass_of_their_own(
    tmp_path, tiny_policy, toy_data, captured, monkeypatch
):
    passes: list[int] = []
    logps = GRPOStep._logps
    monkeypatch.setattr(
        GRPOStep, "_logps", lambda self, *a, **k: passes.append(1) or logps(self, *a, **k)
    )
    fused, fused_weights = trained(tmp_path, "in-pass", tiny_policy, toy_data, captured)
    assert passes == []  # no pi_old pass at all (beta 0: no reference pass either)
    monkeypatch.setattr(GRPOStep, "weights_in_pass", False)
    apart, apart_weights = trained(tmp_path, "apart", tiny_policy, toy_data, captured)
    assert len(passes) == 2  # one per step
    steps = [m for m in apart if "is_weight/mean" in m]
    assert len(steps) == 2 and all(m["is_weight/logp_gap_mean"] > 0 for m in steps)
    assert len(fused) == len(apart)
    for a, b in zip(fused, apart, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    initial = initial_weights(tiny_policy)
    assert any(not torch.equal(t, initial[n]) for n, t in fused_weights.items() if n in initial)
    for name, tensor in fused_weights.items():
        torch.testing.assert_close(tensor, apart_weights[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "extra", [", num_iterations: 2", ", async_rollouts: 1"], ids=["two-passes", "stale"]
)
def test_stale_or_repeated_passes_keep_their_own_pi_old_pass(
    extra, tmp_path, tiny_policy, toy_data, captured, monkeypatch
):
    """With a second optimisation pass, or rollouts one update old, pi_old is not the
    update's forward: its pass stays."""
    passes: list[int] = []
    logps = GRPOStep._logps
    monkeypatch.setattr(
        GRPOStep, "_logps", lambda self, *a, **k: passes.append(1) or logps(self, *a, **k)
    )
    trained(tmp_path, "run", tiny_policy, toy_data, captured, extra)
    assert len(passes) == 2
