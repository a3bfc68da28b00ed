"""The LM head fused with the log-softmax in token chunks (``engine/fused_head.py``): the same
log-probs, entropies and gradients as the full logits, and no ``[B,T,V]`` tensor on the way."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cat_framework.engine.fused_head import chunk_logps, fusable
from cat_framework.engine.grpo import entropy_from_logits, selective_log_softmax
from cat_framework.engine.sequences import build_batch, completion_logps
from tests.plugins.backends.conftest import build_tiny_model

VOCAB = 512


def batch() -> Any:
    prompts = [[5, 6, 7], [8, 9], [10]]
    completions = [list(range(20, 100)), [50, 51, 2], list(range(100, 160))]
    return build_batch(prompts, completions, pad_id=0)


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def make_head(kind: str) -> torch.nn.Module:
    """``linear``/``bias``: the closed-form backward; ``module``: any other head (checkpointed)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, VOCAB, bias=kind == "bias")
    return torch.nn.Sequential(head) if kind == "module" else head


@pytest.mark.parametrize("kind", ["linear", "bias", "module"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_equals_full_logits(chunk: int, temperature: float, kind: str) -> None:
    head = make_head(kind)
    weight = head.weight if kind != "module" else head[0].weight
    hidden = torch.randn(40, 16, requires_grad=True)
    ids = torch.randint(0, VOCAB, (40,))
    full = selective_log_softmax(head(hidden).unsqueeze(0), ids.unsqueeze(0), temperature)[0]
    (full * torch.arange(40)).sum().backward()
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    logp, ent = chunk_logps(head, hidden, ids, temperature, chunk, entropy=True)
    (logp * torch.arange(40)).sum().backward()
    torch.testing.assert_close(logp, full, rtol=0, atol=1e-5)
    with torch.no_grad():
        want_ent = entropy_from_logits(head(hidden).unsqueeze(0), temperature)[0]
    torch.testing.assert_close(ent, want_ent, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.grad, want_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weight.grad, want_w, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_matches_the_plain_path() -> None:
    """Under autocast the head's matmul runs in bf16 in forward and backward alike."""
    model = build_tiny_model(VOCAB).train()
    b = batch()
    out = []
    for chunk in (0, 16):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = completion_logps(model, b, 1.0, chunk=chunk)
        (logp * b.completion_mask).sum().backward()
        out.append((logp.detach(), model.lm_head.weight.grad.clone(), grads(model)))
    mask = b.completion_mask.bool()
    assert out[1][0].dtype == torch.float32
    torch.testing.assert_close(out[1][0][mask], out[0][0][mask], rtol=0, atol=0.1)
    cos = torch.nn.functional.cosine_similarity(out[1][2], out[0][2], dim=0)
    assert cos > 0.999  # the same gradient up to bf16 rounding


@pytest.mark.parametrize("lora", [False, True])
def test_model_log_probs_and_gradients_match_and_head_is_restored(lora: bool) -> None:
    model = build_tiny_model(VOCAB).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
        with torch.no_grad():  # B starts at zero: give the adapters something to differentiate
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    head = model.get_output_embeddings()
    b = batch()
    out = []
    for chunk in (0, 5):
        model.zero_grad()
        logp, ent = completion_logps(model, b, 0.7, entropy=True, chunk=chunk)
        (logp * b.completion_mask).sum().backward()
        out.append((logp.detach(), ent, grads(model)))
    assert model.get_output_embeddings() is head
    mask = b.completion_mask.bool()
    torch.testing.assert_close(out[1][0][mask], out[0][0][mask], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[1][1][mask], out[0][1][mask], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[1][2], out[0][2], rtol=1e-3, atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_full_vocabulary_logits_in_forward_or_backward() -> None:
    model = build_tiny_model(VOCAB).train()
    b = batch()
    rows, width = b.completion_mask.shape
    full = rows * width * VOCAB
    seen = {}
    for chunk in (0, 8):
        with LargestTensor() as spy:
            logp, _ = completion_logps(model, b, 1.0, chunk=chunk)
            (logp * b.completion_mask).sum().backward()
        seen[chunk] = spy.largest
    assert seen[0] >= full  # the plain path does hold [B,T,V] logits
    hidden = model.config.hidden_size
    assert full > 2 * VOCAB * hidden  # logits would be larger than the head's own weight
    assert seen[8] <= max(8, hidden) * VOCAB  # one chunk's logits, or the head's weight


def test_models_that_transform_the_head_output_are_not_fused() -> None:
    model = build_tiny_model(VOCAB)
    assert fusable(model)
    model.config.final_logit_softcapping = 30.0
    assert not fusable(model)
    model.config.final_logit_softcapping = None
    model.config.logit_scale = 0.5
    assert not fusable(model)


def test_head_is_restored_when_the_forward_fails() -> None:
    model = build_tiny_model(VOCAB)
    head = model.get_output_embeddings()
    b = batch()
    b.input_ids[0, 0] = VOCAB + 5  # out of the embedding's range
    with pytest.raises(IndexError):
        completion_logps(model, b, 1.0, chunk=4)
    assert model.get_output_embeddings() is head
