"""completion_logps skips the columns that are padding in every row of its micro-batch (the
update's forward/backward then costs the micro-batch's own width) and gives the same numbers."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaForCausalLM

from cat_framework.engine.sequences import build_batch, completion_logps
from tests.plugins.backends.conftest import build_tiny_model


def tiny_model() -> LlamaForCausalLM:
    return build_tiny_model(64).eval()


class WidthSpy(torch.nn.Module):
    """Forwards to the model and records the width of every input it is given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.widths = model, []

    def forward(self, **kwargs: Any) -> Any:
        self.widths.append(kwargs["input_ids"].shape[1])
        return self.model(**kwargs)


def test_micro_batch_is_computed_at_its_own_width_with_the_same_logps() -> None:
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    completions = [list(range(20, 40)), [41, 42, 43], [44, 45]]
    batch = build_batch(prompts, completions, pad_id=0)
    assert batch.input_ids.shape == (3, 26)
    with torch.no_grad():
        full, full_ent = completion_logps(model, batch, 0.7, entropy=True)
        spy = WidthSpy(model)
        short, short_ent = completion_logps(spy, batch.rows(slice(1, 3)), 0.7, entropy=True)
    assert spy.widths == [3 + 3]  # the longest prompt and the longest completion of rows 1-2
    assert short.shape == short_ent.shape == (2, 20)  # the caller's layout is kept
    mask = batch.completion_mask[1:3].bool()
    torch.testing.assert_close(short[mask], full[1:3][mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short_ent[mask], full_ent[1:3][mask], rtol=1e-5, atol=1e-5)
    assert not short[:, 3:].any()  # beyond the micro-batch's longest completion


def test_gradients_equal_with_and_without_trimming() -> None:
    model = tiny_model()
    batch = build_batch([[5, 6, 7, 8], [9, 10]], [[20, 21], [22, 23, 24]], pad_id=0)
    wide = build_batch([[5, 6, 7, 8], [9, 10], [1]], [[20, 21], [22, 23, 24], [3] * 9], 0)
    grads = []
    for b in (batch, wide.rows(slice(0, 2))):  # same two rows, laid out at different widths
        model.zero_grad()
        logp, _ = completion_logps(model, b, 1.0)
        (logp * b.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_update_micro_batches_group_similar_lengths_and_keep_row_order() -> None:
    """The step cuts micro-batches from rows sorted by completion length (each then trims to its
    own width); log-probs come back in the rows' own order, equal to one full-batch pass."""
    from types import SimpleNamespace

    from cat_framework.engine.grpo_step import GRPOStep
    from cat_framework.engine.update import micro_batches

    model = tiny_model()
    prompts = [[5, 6], [7, 8, 9], [10], [11, 12]]
    completions = [list(range(20, 38)), [41, 42], list(range(20, 36)), [43]]
    batch = build_batch(prompts, completions, pad_id=0)
    step = GRPOStep.__new__(GRPOStep)
    step.cfg = SimpleNamespace(micro_batch_size=2, logprob_chunk=0)
    step.temperature = 0.7
    micro = micro_batches(batch, 2)
    assert [sorted(m.tolist()) for m in micro] == [[1, 3], [0, 2]]  # short rows together
    spy = WidthSpy(model)
    with torch.no_grad():
        logps = step._logps(spy, batch)
        full, _ = completion_logps(model, batch, 0.7)
    assert spy.widths == [3 + 2, 2 + 18]  # each: its longest prompt + longest completion
    mask = batch.completion_mask.bool()
    assert torch.allclose(logps[mask], full[mask], atol=1e-5)
