"""``trainer.rollout_dtype``: rollouts from a lower-precision copy of the trained weights.

The copy is one more :class:`SeparateEngine` (no branch in the loops): it must serve exactly the
trained weights rounded to its dtype before and after every update (the same model loaded at
that dtype scores the same), while the trained weights, pi_0 and the export stay float32; a
policy on its own engine, or generation on FSDP2 shards, is refused with the fix."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from cat_framework import load_plugins
from cat_framework.engine.placement import build_placement, choose
from cat_framework.engine.placement.table import Launch
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.pipeline.build import BackendPool
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.engine.test_placements import an_update, score
from tests.engine.test_separate_engine import EnginePlugin, engine_pipeline
from tests.engine.test_trainer import read_jsonl, run, write_pipeline

TRAINER = "{steps: 2, prompts_per_step: 2, beta: 0.01, rollout_dtype: bfloat16%s}"
LORA = ", lora: {r: 4, alpha: 8}"


def placement_for(tmp_path, tiny_policy, toy_data, extra: str = "", sharded: bool = False):
    plugins = load_plugins(entry_points=False)
    path = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER % extra)
    pipeline = load_pipeline(path, plugins=plugins)
    launch = SimpleNamespace(
        is_fsdp2=sharded, num_processes=1, process_index=0, device=torch.device("cpu")
    )
    return build_placement(
        pipeline, plugins, BackendPool(), launch, need_frozen=True, plan=lambda step: None
    )


def cast_scores(model: torch.nn.Module, tokenizer, folder) -> list[float]:
    """What the trained weights score once saved and loaded at bfloat16 (as a user would)."""
    copy.deepcopy(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return score(TransformersBackend({"model": str(folder), "device": "cpu", "dtype": "bfloat16"}))


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "sharded"])
@pytest.mark.parametrize("extra", ["", LORA], ids=["full", "lora"])
def test_the_copy_serves_the_trained_weights_rounded_to_its_dtype(
    extra, sharded, tmp_path, tiny_policy, toy_data
):
    """Sharded: the FSDP2 code path on plain tensors in one process (as test_placements.py)."""
    placement = placement_for(tmp_path, tiny_policy, toy_data, extra, sharded)
    assert placement.topology == ("gathered-copy" if sharded else "separate-engine")
    base = {p.dtype for n, p in placement.sampler.model.named_parameters() if "lora_" not in n}
    assert base == {torch.bfloat16}
    assert {p.dtype for p in placement.model.parameters()} == {torch.float32}
    initial = score(TransformersBackend({"model": str(tiny_policy), "device": "cpu"}))
    loaded_low = TransformersBackend(
        {"model": str(tiny_policy), "device": "cpu", "dtype": "bfloat16"}
    )
    assert score(placement.sampler) == score(loaded_low)  # the same rounding, bit for bit
    assert score(placement.sampler) != pytest.approx(initial, rel=1e-6)  # it is bf16
    torch.manual_seed(0)
    with placement.update(1) as moved:
        an_update(placement.model)
    if placement.lora:  # the trainer's base stays pi_0
        merged = placement.model.merge_and_unload()
        expected = cast_scores(merged, placement.tokenizer, tmp_path / "merged")
        if sharded:  # the gathered copy gets the adapters alone: W_bf16 + BA, not bf16(W + BA)
            assert score(placement.sampler) == pytest.approx(expected, rel=5e-3)
            assert score(placement.sampler) != score(loaded_low)  # the adapters arrived
        else:  # an engine gets merged weights, rounded once
            assert score(placement.sampler) == expected
    else:
        if not sharded:  # an engine's push: every float32 tensor carried
            weights = placement.model.state_dict().values()
            assert moved.timings["sync/bytes"] == sum(t.numel() * 4 for t in weights)
        assert score(placement.sampler) == cast_scores(
            placement.model, placement.tokenizer, tmp_path / "trained"
        )
        assert score(placement.anchor) == pytest.approx(initial, rel=1e-6)  # pi_0 is float32


def test_under_fsdp2_the_gathered_copy_is_the_copy_and_refusals_name_the_fix(
    tmp_path, tiny_policy, toy_data
):
    plugins = load_plugins(entry_points=False, extra=[("engine", EnginePlugin())])
    sharded = Launch(sharded=True, processes=2)
    path = write_pipeline(tmp_path, tiny_policy, toy_data, TRAINER % "")
    choice = choose(load_pipeline(path, plugins=plugins), plugins, sharded)
    assert choice.topology.topology == "gathered-copy" and choice.rollout_dtype == torch.bfloat16
    on_shards = write_pipeline(
        tmp_path, tiny_policy, toy_data, TRAINER % ", fsdp_gather_for_generation: false"
    )
    with pytest.raises(CatError, match="rollout_dtype: bfloat16 samples from a whole copy"):
        choose(load_pipeline(on_shards, plugins=plugins), plugins, sharded)
    (tmp_path / "e").mkdir()
    engine = engine_pipeline(tmp_path / "e", tiny_policy, toy_data, TRAINER % "")
    with pytest.raises(CatError, match=r"samples on its own engine(?s:.*)dtype: bfloat16"):
        choose(load_pipeline(engine, plugins=plugins), plugins, Launch())


def test_a_run_samples_from_the_copy_and_weighs_the_mismatch(tmp_path, tiny_policy, toy_data):
    """Two GRPO steps: the rollouts' log-probs come from bfloat16 weights, so importance
    weights are on without being asked for, the train-vs-rollout gap is measured (non-zero)
    and every weight pushed."""
    trainer = TRAINER % ""
    path = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    run(path, tmp_path / "run")
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [m for m in metrics if "sync/bytes" in m]
    assert len(steps) == 2
    assert all(m["is_weight/logp_gap_mean"] > 0 for m in steps)
    assert all(m["sync/bytes"] == steps[0]["sync/bytes"] > 0 for m in steps)


def test_the_cast_keeps_buffers_and_the_modules_a_model_keeps_in_float32():
    from cat_framework.engine.placement.contract import frozen_copy

    class Net(torch.nn.Module):
        _keep_in_fp32_modules = ["norm"]

        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.register_buffer("inv_freq", torch.rand(4), persistent=False)

    low = frozen_copy(Net(), torch.bfloat16)
    assert low.proj.weight.dtype == low.proj.bias.dtype == torch.bfloat16
    assert low.norm.weight.dtype == torch.float32 and low.inv_freq.dtype == torch.float32
    assert not any(p.requires_grad for p in low.parameters())
