"""FSDP2 pieces that need no process group: refusals with their fix, sharded checkpoint layout
checks (the multi-process behaviour is in test_fsdp.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from cat_framework import load_plugins
from cat_framework.engine.checkpoint import (
    Checkpoint,
    InvalidCheckpoint,
    check_checkpoint,
    load_checkpoint,
    rng_file,
    shard_files,
)
from cat_framework.engine.policy import AdapterDisabledBackend, PolicyModels, build_policy
from cat_framework.engine.safe_state import save_state
from cat_framework.errors import CatError
from cat_framework.pipeline import load_pipeline
from cat_framework.pipeline.build import BackendPool
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.engine.test_trainer import write_pipeline
from tests.plugins.backends.conftest import build_tiny_model, build_tiny_tokenizer


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(len(tiny_tokenizer))


class ShardingAccelerator:
    """What build_policy reads of an accelerator that shards with FSDP2."""

    is_fsdp2 = True
    num_processes = 2


def test_lora_under_fsdp2_builds_a_whole_peft_copy_fed_adapters(tmp_path, tiny_policy, toy_data):
    """LoRA under FSDP2 (the 2-process run is in test_fsdp_lora.py): rollouts from a whole PEFT
    copy with the trained module's adapters, pi_0 = that copy with adapters off, the KL reference
    = the (sharded) module with adapters off; a push carries the adapters only."""
    trainer = "{steps: 1, prompts_per_step: 2, beta: 0.01, lora: {r: 4, alpha: 8}}"
    plugins = load_plugins(entry_points=False)
    pipeline = load_pipeline(
        write_pipeline(tmp_path, tiny_policy, toy_data, trainer), plugins=plugins
    )
    policy = build_policy(
        pipeline, plugins, BackendPool(), torch.device("cpu"), need_frozen=True,
        accelerator=ShardingAccelerator(),
    )  # fmt: skip
    assert policy.lora and policy.sharded and policy.frozen is None
    assert policy.pushes_weights and policy.sampler.model is policy.generation
    assert isinstance(policy.anchor, AdapterDisabledBackend)
    assert policy.anchor.inner is policy.sampler  # pi_0 generates on the whole copy

    def adapters(module):
        named = module.state_dict().items()
        return {n.removeprefix("base_model.model."): t for n, t in named if "lora_" in n}

    own, served = adapters(policy.model), adapters(policy.generation)
    assert own and own.keys() == served.keys()
    assert all(torch.equal(t, served[n]) for n, t in own.items())  # the same initial adapters
    assert not any(p.requires_grad for p in policy.generation.parameters())
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)  # an update
    policy.release_sampler_memory()  # under LoRA the copy's base is kept: never pushed
    assert all(p.numel() for p in policy.generation.parameters())
    pushed: list[str] = []

    def push():  # the sampler copies each tensor as it comes: the parity check runs at the end
        for name, tensor in policy.trained_tensors():
            pushed.append(name)
            yield name, tensor

    policy.sampler.update_weights(push())
    assert sorted(pushed) == sorted(adapters(policy.generation))  # adapters only, checked
    served = adapters(policy.generation)
    assert all(torch.equal(t, served[n]) for n, t in adapters(policy.model).items())
    base = TransformersBackend({"model": str(tiny_policy), "device": "cpu"})
    context, continuation = ["Q: 1+1?"], ["A: 2"]
    pi_0 = base.score(context, continuation)
    assert policy.anchor.score(context, continuation) == pi_0  # adapters off: the base
    assert policy.sampler.score(context, continuation) != pi_0  # the trained adapters


def sharded_checkpoint(root, processes: int = 2, skip: str | None = None):
    path = root / "checkpoints" / "step-000002"
    path.mkdir(parents=True)
    (path / "state.json").write_text(
        json.dumps({"step": 2, "processes": processes, "sharded": True})
    )
    for rank in range(processes):
        weights, optim = shard_files(rank)
        save_file({"w": torch.zeros(2)}, str(path / weights))
        save_state(path / optim, {"state": {}, "param_groups": []})
        save_state(path / rng_file(rank), {"torch": torch.get_rng_state()})
    save_state(path / "scheduler.safetensors", {"last_epoch": 2})
    if skip:
        (path / skip).unlink()
    return path


def test_a_sharded_checkpoint_needs_every_process_shards(tmp_path):
    assert check_checkpoint(sharded_checkpoint(tmp_path / "whole")).state["sharded"] is True
    for missing in ("trainable-1.safetensors", "optimizer-0.safetensors"):
        with pytest.raises(InvalidCheckpoint, match=f"{missing} is missing"):
            check_checkpoint(sharded_checkpoint(tmp_path / missing, skip=missing))


def test_a_sharded_checkpoint_is_not_loaded_into_a_whole_model(tmp_path):
    path = sharded_checkpoint(tmp_path)
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpoint(path, 2, json.loads((path / "state.json").read_text()))
    with pytest.raises(CatError, match=r"written FSDP2 \(sharded\) but this run trains without"):
        load_checkpoint(ckpt, model, None, None, 0)


def generation_copy_policy(tiny_model, tiny_tokenizer, skip: str | None = None) -> PolicyModels:
    """A 'sharded' policy whose tensors are plain (one process): the push and its parity check
    run the same code as under FSDP2."""

    class Sampler(TransformersBackend):
        def update_weights(self, named_tensors):
            super().update_weights((n, t) for n, t in named_tensors if n != skip)

    generation = copy.deepcopy(tiny_model).requires_grad_(False)
    sampler = Sampler.from_model(generation, tiny_tokenizer)
    trainable = TransformersBackend.from_model(tiny_model, tiny_tokenizer)
    return PolicyModels(
        tiny_model, tiny_tokenizer, trainable, sampler, sampler, None, False, True, generation
    )


def test_the_generation_copy_is_freed_and_refilled_by_the_push(tiny_model, tiny_tokenizer):
    policy = generation_copy_policy(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        tiny_model.lm_head.weight.add_(1.0)  # an update
    policy.release_sampler_memory()
    assert all(p.numel() == 0 for p in policy.generation.parameters())
    policy.sampler.update_weights(policy.trained_tensors())
    served = policy.generation.state_dict()
    assert all(torch.equal(t, served[n]) for n, t in tiny_model.state_dict().items())


def test_a_push_that_skips_a_tensor_fails_the_parity_check(tiny_model, tiny_tokenizer):
    policy = generation_copy_policy(tiny_model, tiny_tokenizer, skip="lm_head.weight")
    with torch.no_grad():
        tiny_model.lm_head.weight.add_(1.0)
    with pytest.raises(CatError, match=r"weight parity check failed(?s:.*)lm_head\.weight"):
        policy.sampler.update_weights(policy.trained_tensors())
