"""The placement contract, one case per topology (and LoRA / one-step-off on them), in one
process: sharded topologies run their real code on plain tensors (gathering a plain tensor is
the tensor itself), so what each promises is checked here without a process group. For every
case: after an update the sampler serves exactly the trained weights (a push carries them and
is parity-checked), pi_0 still serves the initial weights, the KL reference is pi_0, and the
exported final model loads and scores like the trained one. The 2-process equivalence runs
(FSDP2 = one process, resume exact) are in test_placement_equivalence.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel

from cat_framework import load_plugins
from cat_framework.engine.lora import merged_tensors
from cat_framework.engine.placement import Placement, build_placement
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.pipeline.build import BackendPool
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.engine.test_separate_engine import EnginePlugin, engine_pipeline
from tests.engine.test_trainer import write_pipeline

LORA = "lora: {r: 4, alpha: 8}"

#: case -> (sharded launch, trainer settings, policy on a separate engine, expected topology)
CASES = {
    "colocated": (False, "", False, "colocated"),
    "colocated-lora": (False, LORA, False, "colocated"),
    "separate-engine": (False, "", True, "separate-engine"),
    "separate-engine-lora": (False, LORA, True, "separate-engine"),
    "sharded-engine": (True, "", True, "separate-engine"),
    "gathered-copy": (True, "", False, "gathered-copy"),
    "gathered-copy-lora": (True, LORA, False, "gathered-copy"),
    "on-shards": (True, "fsdp_gather_for_generation: false", False, "on-shards"),
    "one-step-off": (False, "async_rollouts: 1", False, "separate-engine+one-step-off"),
}
CONTEXT, CONTINUATION = ["Q: What is 1 + 1?"], ["A: 2"]


def build(case: str, tmp_path, tiny_policy, toy_data) -> Placement:
    sharded, settings, engine, _ = CASES[case]
    trainer = "{steps: 2, prompts_per_step: 2, beta: 0.01" + (
        f", {settings}}}" if settings else "}"
    )
    extra = [("engine", EnginePlugin())] if engine else []
    plugins = load_plugins(entry_points=False, extra=extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    if engine:
        path = engine_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    else:
        path = write_pipeline(tmp_path, tiny_policy, toy_data, trainer)
    pipeline = load_pipeline(path, plugins=plugins)
    launch = SimpleNamespace(
        is_fsdp2=sharded, num_processes=1, process_index=0, device=torch.device("cpu")
    )
    # on the shards pi_0 would be sharded too, which needs a process group: no KL there
    need_frozen = case != "on-shards"
    return build_placement(
        pipeline, plugins, BackendPool(), launch, need_frozen=need_frozen,
        plan=lambda step: None,
    )  # fmt: skip


def score(backend) -> list[float]:
    """Per-token log-probs of a fixed continuation: equal scores, equal weights in use."""
    return backend.score(CONTEXT, CONTINUATION)[0]


def an_update(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))


@pytest.mark.parametrize("case", list(CASES))
def test_a_placement_keeps_its_promises(case, tmp_path, tiny_policy, toy_data):
    placement = build(case, tmp_path, tiny_policy, toy_data)
    assert placement.topology == CASES[case][3]
    initial = score(TransformersBackend({"model": str(tiny_policy), "device": "cpu"}))
    assert score(placement.sampler) == pytest.approx(initial, rel=1e-5)
    torch.manual_seed(0)
    with placement.update(1) as moved:
        an_update(placement.model)
    trained = score(placement.trainable)
    assert trained != pytest.approx(initial, rel=1e-5)
    # after the update the sampler serves exactly what was trained
    assert score(placement.sampler) == pytest.approx(trained, rel=1e-5)
    assert ("time/training/push_weights" in moved.timings) == placement.pushes_weights
    if case != "on-shards":  # pi_0 is kept: the anchor and the KL reference
        assert score(placement.anchor) == pytest.approx(initial, rel=1e-5)
        with placement.reference() as ref:
            assert score(TransformersBackend.from_model(ref, placement.tokenizer)) == (
                pytest.approx(initial, rel=1e-5)
            )
    final = tmp_path / "final"
    placement.model.save_pretrained(final, state_dict=placement.export())
    placement.tokenizer.save_pretrained(final)
    if placement.lora:
        base = TransformersBackend({"model": str(tiny_policy), "device": "cpu"}).model
        loaded = TransformersBackend.from_model(
            PeftModel.from_pretrained(base, final), placement.tokenizer
        )
    else:
        loaded = TransformersBackend({"model": str(final), "device": "cpu"})
    assert score(loaded) == pytest.approx(trained, rel=1e-5)
    placement.close()


SKIPPED = {
    "separate-engine": "lm_head.weight",
    "sharded-engine": "lm_head.weight",
    "separate-engine-lora": "layers.1.self_attn.v_proj.weight",
    "gathered-copy": "lm_head.weight",
    "gathered-copy-lora": "layers.1.self_attn.v_proj.lora_B",
}


@pytest.mark.parametrize("case", list(SKIPPED))
def test_a_push_that_skips_a_tensor_fails_the_parity_check(case, tmp_path, tiny_policy, toy_data):
    """An engine is caught skipping by the names the push meant to carry; a gathered copy by
    checking each of its tensors against what was gathered."""
    placement = build(case, tmp_path, tiny_policy, toy_data)
    skip = SKIPPED[case]
    if case.startswith("gathered"):  # the copy drops a tensor it was sent
        sampler = placement.sampler
        receive = sampler.update_weights
        sampler.update_weights = lambda ts: receive((n, t) for n, t in ts if skip not in n)
    else:  # the push stream misses a tensor
        stream = placement.trained_tensors
        placement.trained_tensors = lambda: ((n, t) for n, t in stream() if skip not in n)
    an_update(placement.model)
    with pytest.raises(CatError, match=r"weight parity check failed(?s:.*)layers|lm_head"):
        placement.push()


def test_the_gathered_copy_is_freed_during_updates_but_kept_under_lora(
    tmp_path, tiny_policy, toy_data
):
    full = build("gathered-copy", tmp_path / "a", tiny_policy, toy_data)
    full.release()
    assert all(p.numel() == 0 for p in full.generation.parameters())
    full.push()  # refilled
    assert all(p.numel() for p in full.generation.parameters())
    lora = build("gathered-copy-lora", tmp_path / "b", tiny_policy, toy_data)
    lora.release()  # its base never changes: a push carries only the adapters
    assert all(p.numel() for p in lora.generation.parameters())


def test_merged_lora_tensors_equal_peft_merge(tmp_path, tiny_policy, toy_data):
    """An engine gets ``W + s*B@A`` computed apart: the same numbers as PEFT's merge_adapter,
    without ever changing the trained module's base weights."""
    placement = build("separate-engine-lora", tmp_path, tiny_policy, toy_data)
    an_update(placement.model)
    base = placement.model.get_base_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    streamed = {n: t.clone() for n, t in merged_tensors(placement.model)}
    after = {k: v.clone() for k, v in base.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # the module is untouched
    placement.model.merge_adapter()
    merged = {k.replace(".base_layer", ""): v.clone() for k, v in base.state_dict().items()}
    placement.model.unmerge_adapter()
    for name, tensor in streamed.items():
        torch.testing.assert_close(tensor, merged[name], rtol=1e-6, atol=1e-7)
