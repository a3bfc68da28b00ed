"""Importance weights on the sampler's support (issue 22, item 3) and the KL term kept out of the
group normalisation (item 4): pure functions, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from cat_framework.engine import grpo
from cat_framework.engine.fused_head import chunk_logps, support_chunk_logps
from cat_framework.engine.sampling_support import Support, support_log_softmax


def test_on_the_kept_support_a_token_gets_its_share_of_the_kept_mass():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    # top-k 3 keeps {0.5, 0.2, 0.15}: mass 0.85
    got = support_log_softmax(logits, torch.tensor([1]), Support(top_k=3))
    assert float(got) == pytest.approx(math.log(0.2 / 0.85), rel=1e-6)
    # top-p 0.6: 0.5 alone is short of 0.6, so {0.5, 0.2} (mass 0.7)
    got = support_log_softmax(logits, torch.tensor([0]), Support(top_p=0.6))
    assert float(got) == pytest.approx(math.log(0.5 / 0.7), rel=1e-6)
    # top-k first, then top-p over what top-k kept: {0.5, 0.2, 0.15} renormalised to
    # {0.588, 0.235, 0.176}; top-p 0.8 keeps 0.588 + 0.235 = 0.824 >= 0.8: {0.5, 0.2}
    got = support_log_softmax(logits, torch.tensor([1]), Support(top_k=3, top_p=0.8))
    assert float(got) == pytest.approx(math.log(0.2 / 0.7), rel=1e-6)
    # no truncation: the full softmax
    got = support_log_softmax(logits, torch.tensor([4]), Support())
    assert float(got) == pytest.approx(math.log(0.05), rel=1e-6)


def test_a_sampled_token_at_the_edge_is_never_minus_infinity():
    """A float tie can put the sampled token just outside the trainer's nucleus: it counts."""
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    got = support_log_softmax(logits, torch.tensor([4]), Support(top_k=2))
    assert torch.isfinite(got).all()
    assert float(got) == pytest.approx(math.log(0.05 / 0.75), rel=1e-6)


def test_the_kept_mass_no_longer_biases_the_importance_weight():
    """vLLM's processed log-probs are log(p/S): against the trainer's full softmax the weight is
    S (the bias of trl#6789); against the trainer's log-probs on the same support, 1."""
    torch.manual_seed(0)
    logits = torch.randn(64, 200) * 3
    support = Support(top_k=20, top_p=0.8)
    ids = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
    sampler = support_log_softmax(logits, ids, support)  # what the engine reports
    full = torch.log_softmax(logits, -1).gather(-1, ids[:, None])[:, 0]
    biased = grpo.importance_weights(full, sampler, cap=1e9)
    assert float(biased.max()) < 0.999  # every token weighted by its kept mass
    fixed = grpo.importance_weights(support_log_softmax(logits, ids, support), sampler)
    torch.testing.assert_close(fixed, torch.ones_like(fixed))


@pytest.mark.parametrize("linear", [True, False])
def test_the_support_head_gives_the_same_full_log_probs(linear):
    """One pass of the head gives both: the full log-probs equal the training path's exactly."""
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 50, bias=False)
    module = head if linear else torch.nn.Sequential(head)
    hidden, ids = torch.randn(13, 8), torch.randint(0, 50, (13,))
    with torch.no_grad():
        plain, _ = chunk_logps(module, hidden, ids, temperature=0.7, chunk=4)
    full, kept = support_chunk_logps(module, hidden, ids, 0.7, 4, Support(top_k=5))
    assert torch.equal(full, plain)
    expected = support_log_softmax(module(hidden).float() / 0.7, ids, Support(top_k=5))
    torch.testing.assert_close(kept, expected)


def test_only_kl_signal_groups_are_counted():
    task = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, float("nan"), 1.0, 1.0])
    penalized = task - 1e-3 * torch.tensor([0.1, 0.3, 0.2, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1])
    # group 1: equal task rewards, KL varies -> counted; group 2: task varies; group 3: two
    # scorable equal rewards whose penalised values are equal -> no signal at all
    assert grpo.kl_only_signal_share(task, penalized, 3) == pytest.approx(1 / 3)


def test_kl_kept_out_of_the_group_std_gives_a_beta_scale_signal():
    beta = 1e-3
    task = torch.tensor([1.0, 1.0, 1.0, 1.0])
    penalty = beta * torch.tensor([0.2, 0.5, 0.1, 0.4])
    inside = grpo.group_advantages(task - penalty, 4, "group")
    assert float(inside.abs().max()) > 0.5  # KL noise read as unit-scale signal
    outside = grpo.kl_outside_std(grpo.group_advantages(task, 4, "group"), task, penalty, 4)
    torch.testing.assert_close(outside, -(penalty - penalty.mean()))
    assert float(outside.abs().max()) < 1e-3
    # a group with real task signal keeps its normalised advantage, minus the centred penalty
    task2 = torch.tensor([1.0, 0.0, float("nan"), 0.0])
    out2 = grpo.kl_outside_std(grpo.group_advantages(task2, 4, "group"), task2, penalty, 4)
    assert float(out2[2]) == 0.0  # unscorable stays 0
