"""What a LoRA policy under FSDP2 pushes, checked in one process on plain tensors (the gathering
code is the same; the 2-process runs are in test_fsdp_lora.py): merged weights for an engine,
adapters for the whole PEFT copy, and the parity check on them."""

from __future__ import annotations

import copy

import pytest
import torch

from cat_framework.engine.lora import base_name
from cat_framework.engine.policy import PolicyModels, add_lora
from cat_framework.errors import CatError
from cat_framework.pipeline.schema import Lora
from cat_plugins.backends.transformers_backend import TransformersBackend
from tests.plugins.backends.conftest import build_tiny_model, build_tiny_tokenizer


@pytest.fixture
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def peft_model(tokenizer):
    model = add_lora(build_tiny_model(len(tokenizer)), Lora(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # trained adapters: B starts at zero
                param.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def policy(model, tokenizer, *, sharded: bool, sampler=None, generation=None) -> PolicyModels:
    trainable = TransformersBackend.from_model(model, tokenizer)
    sampler = sampler or trainable
    return PolicyModels(
        model, tokenizer, trainable, sampler, sampler, None, True, sharded, generation
    )


def test_an_engine_gets_the_same_merged_weights_as_without_fsdp2(peft_model, tokenizer):
    """No generation copy (an engine samples): the adapters are merged into streamed tensors,
    the same numbers as PEFT's merge_adapter."""
    before = {
        base_name(n): t.clone() for n, t in peft_model.state_dict().items() if "base_layer" in n
    }
    unsharded = policy(peft_model, tokenizer, sharded=False).trained_tensors()
    expected = [(n, t.clone()) for n, t in unsharded]  # copied while merged
    merged = list(policy(peft_model, tokenizer, sharded=True).trained_tensors())
    assert [n for n, _ in merged] == [n for n, _ in expected]
    assert before and not any("lora_" in n or "base_layer" in n for n, _ in merged)
    for (name, ours), (_, peft) in zip(merged, expected, strict=True):
        assert torch.equal(ours, peft), name
        if name in before:
            assert not torch.equal(ours, before[name]), name  # the adapter's delta is in


def whole_copy(peft_model, tokenizer, skip: str | None = None) -> PolicyModels:
    class Sampler(TransformersBackend):
        def update_weights(self, named_tensors):
            super().update_weights(
                (n, t) for n, t in named_tensors if skip is None or skip not in n
            )

    generation = copy.deepcopy(peft_model).requires_grad_(False).get_base_model()
    with torch.no_grad():
        for name, param in generation.named_parameters():
            if "lora_" in name:
                param.zero_()  # stale adapters, as before a push
    sampler = Sampler.from_model(generation, tokenizer)
    return policy(peft_model, tokenizer, sharded=True, sampler=sampler, generation=generation)


def test_the_whole_copy_receives_exactly_the_adapters(peft_model, tokenizer):
    pol = whole_copy(peft_model, tokenizer)
    pol.sampler.update_weights(pol.trained_tensors())
    served = pol.generation.state_dict()
    for name, tensor in peft_model.state_dict().items():
        assert torch.equal(served[name.removeprefix("base_model.model.")], tensor), name


def test_a_push_that_skips_an_adapter_fails_the_parity_check(peft_model, tokenizer):
    pol = whole_copy(peft_model, tokenizer, skip="layers.1.self_attn.v_proj.lora_B")
    with pytest.raises(CatError, match=r"weight parity check failed(?s:.*)layers\.1\.self_attn"):
        pol.sampler.update_weights(pol.trained_tensors())
