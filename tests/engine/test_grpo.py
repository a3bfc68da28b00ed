"""GRPO math against numbers worked out by hand (the formulas are not re-used to get expectations)."""

from __future__ import annotations

import math

import pytest
import torch

from cat_framework.engine.grpo import (
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    importance_sums,
    importance_weights,
    k3_kl,
    kl_penalized_rewards,
    selective_log_softmax,
    truncation_mask,
    zero_std_fraction,
)
from cat_framework.engine.grpo_losses import loss_names

F64 = torch.float64
LN2 = math.log(2.0)
K3_HALF = 0.1931471805599454  # k3 with ref - logp = ln 0.5: 0.5 + ln 2 - 1


def t(values, dtype=F64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64), t(expected), atol=tol, rtol=tol, check_dtype=False
    )


# ---------------------------------------------------------------- advantages


def test_group_advantages_one_group_of_four():
    # mean 0.5, unbiased var (4 * 0.25) / 3 = 1/3, std 0.57735
    adv = group_advantages(t([1.0, 0.0, 0.0, 1.0]), group_size=4)
    a = 0.5 / (0.5773502691896258 + 1e-4)
    close(adv, [a, -a, -a, a])


def test_group_advantages_scales():
    rewards = t([1.0, 0.0, 3.0, 3.0])
    # groups [1, 0] (mean 0.5, std sqrt(0.5) = 0.70711) and [3, 3] (std 0 -> advantage 0)
    a = 0.5 / (0.7071067811865476 + 1e-4)
    close(group_advantages(rewards, 2, "group"), [a, -a, 0.0, 0.0])
    # batch mean 1.75, squared deviations 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, /3 -> std 1.5
    b = 0.5 / (1.5 + 1e-4)
    close(group_advantages(rewards, 2, "batch"), [b, -b, 0.0, 0.0])
    close(group_advantages(rewards, 2, "none"), [0.5, -0.5, 0.0, 0.0])
    # eps is configurable
    close(group_advantages(rewards, 2, "batch", eps=0.5), [0.25, -0.25, 0.0, 0.0])


def test_group_advantages_single_rollout_groups_are_zero_not_nan():
    for scale in ("group", "batch", "none"):
        close(group_advantages(t([2.0, 5.0]), 1, scale), [0.0, 0.0])
    close(group_advantages(t([7.0]), 1, "batch"), [0.0])


def test_group_advantages_integer_rewards_and_errors():
    close(group_advantages(torch.tensor([1, 0]), 2, "none"), [0.5, -0.5])
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(t([1.0, 0.0, 1.0, 0.0]), 3)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(t([1.0, 0.0]), 2, "global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(t([[1.0, 0.0]]), 2)


def test_zero_std_fraction():
    # groups [1, 1], [0, 1], [2, 2]: two of three are flat
    assert zero_std_fraction(t([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2) == pytest.approx(2 / 3)
    assert zero_std_fraction(t([1.0, 0.0, 0.0, 1.0]), 4) == 0.0
    assert zero_std_fraction(t([3.0, 4.0]), 1) == 1.0
    with pytest.raises(ValueError):
        zero_std_fraction(t([1.0, 0.0, 1.0]), 2)


# ---------------------------------------------------------------- KL, masks, IS


def test_k3_values():
    logp = t([math.log(0.5), math.log(0.25), -1.0])
    ref = t([math.log(0.25), math.log(0.5), -1.0])
    # d = ref - logp: ln 0.5 -> 0.5 + ln2 - 1; ln 2 -> 2 - ln2 - 1; 0 -> 0
    close(k3_kl(logp, ref), [K3_HALF, 0.3068528194400546, 0.0])
    with pytest.raises(ValueError, match="shape"):
        k3_kl(logp, ref[:2])


def test_kl_penalized_rewards():
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], grad=True)
    ref = t([[-1.5, -1.0, -3.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = kl_penalized_rewards(t([1.0, 0.0]), logp, ref, mask, beta=0.1)
    # row 0: k1 = 0.5 - 1 + 0 = -0.5 -> 1 + 0.05; row 1: 0.5 + 0.5 (padded -9 ignored) -> 0 - 0.1
    close(out, [1.05, -0.1])
    assert not out.requires_grad
    with pytest.raises(ValueError, match="rewards"):
        kl_penalized_rewards(t([1.0]), logp, ref, mask, beta=0.1)


def test_truncation_mask():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = truncation_mask(mask, torch.tensor([False, True, False]))
    assert out.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert out.dtype == mask.dtype
    fmask = torch.ones(2, 2)
    assert truncation_mask(fmask, torch.tensor([1, 0])).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="truncated"):
        truncation_mask(mask, torch.tensor([True]))


def test_importance_weights_truncated_and_detached():
    old = t([[-1.0, -1.0, -2.0, -0.5]], grad=True)
    engine = t([[-1.0, -1.5, -0.5, -2.5]])
    w = importance_weights(old, engine)
    # exp(0) = 1, exp(0.5) = 1.648721, exp(-1.5) = 0.223130, exp(2) = 7.389 -> cap 3
    close(w, [[1.0, 1.6487212707001282, 0.22313016014842982, 3.0]])
    assert not w.requires_grad
    close(importance_weights(old, engine, cap=1.5), [[1.0, 1.5, 0.22313016014842982, 1.5]])


# ---------------------------------------------------------------- loss types

LOGP = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.7]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]  # last token of row 1 is padding
ADV = [1.0, -0.5]


def on_policy(**kwargs):
    logp = t(LOGP, grad=True)
    return grpo_loss(logp, logp.detach(), t(ADV), t(MASK), **kwargs)


def test_loss_types_on_policy():
    # ratio 1 everywhere -> l = -A: row 0 [-1, -1, -1], row 1 [0.5, 0.5, (0.5 padded)]
    # grpo: (mean(-1,-1,-1) + mean(0.5,0.5)) / 2 = (-1 + 0.5) / 2
    close(on_policy(loss_type="grpo").loss, -0.25)
    # dr_grpo: (-3 + 1) / (2 * 5)
    close(on_policy(loss_type="dr_grpo", max_completion_length=5).loss, -0.2)
    # dapo: (-3 + 1) / 5 tokens
    close(on_policy(loss_type="dapo").loss, -0.4)
    stats = on_policy().stats
    assert stats["ratio/mean"] == pytest.approx(1.0)
    assert stats["clip_fraction"] == stats["kl"] == 0.0


def test_loss_with_k3_penalty_and_kl_stat():
    logp = t(LOGP, grad=True)
    # ref - logp = ln 0.5 on row 0, 0 on row 1
    ref = logp.detach() + t([[-LN2] * 3, [0.0] * 3])
    out = grpo_loss(logp, logp.detach(), t(ADV), t(MASK), beta=0.5, ref_logp=ref)
    # row 0: -1 + 0.5 * 0.193147 = -0.9034264; row 1: 0.5 -> (-0.9034264 + 0.5) / 2
    close(out.loss, (-1 + 0.5 * K3_HALF + 0.5) / 2)
    # kl stat: masked token mean = 3 * 0.193147 / 5
    assert out.stats["kl"] == pytest.approx(3 * K3_HALF / 5)


def test_rows_without_tokens_and_empty_mask():
    logp = t(LOGP, grad=True)
    mask = t([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # grpo: row 0 mean -1, row 1 contributes 0 -> -1 / 2
    close(grpo_loss(logp, logp.detach(), t(ADV), mask).loss, -0.5)
    empty = torch.zeros(2, 3, dtype=F64)
    for lt in ("grpo", "dapo"):
        out = grpo_loss(logp, logp.detach(), t(ADV), empty, loss_type=lt)
        assert out.loss.item() == 0.0
        assert out.stats["ratio/mean"] == 0.0


# ---------------------------------------------------------------- clipping

RATIOS = [0.5, 0.9, 1.25, 1.5]


def clip_case(**kwargs):
    old = t([[-1.0] * 4, [-1.0] * 4])
    logp = (old + t([[math.log(r) for r in RATIOS]] * 2)).requires_grad_(True)
    out = grpo_loss(logp, old, t([1.0, -1.0]), torch.ones(2, 4, dtype=F64), **kwargs)
    out.loss.backward()
    return out, logp.grad


def test_clipping_asymmetric():
    out, grad = clip_case(epsilon=0.2, epsilon_high=0.28)
    # A = +1, range [0.8, 1.28]: min(r, clamp(r)) = 0.5, 0.9, 1.25, 1.28 (1.5 clipped high)
    # A = -1: -max(r, clamp(r)) -> l = 0.8 (0.5 clipped low), 0.9, 1.25, 1.5
    row0 = -(0.5 + 0.9 + 1.25 + 1.28) / 4  # -0.9825
    row1 = (0.8 + 0.9 + 1.25 + 1.5) / 4  # 1.1125
    close(out.loss, (row0 + row1) / 2)  # 0.065
    assert out.stats["clip_fraction/high"] == pytest.approx(1 / 8)
    assert out.stats["clip_fraction/low"] == pytest.approx(1 / 8)
    assert out.stats["clip_fraction"] == pytest.approx(2 / 8)
    assert out.stats["ratio/mean"] == pytest.approx(2 * (0.5 + 0.9 + 1.25 + 1.5) / 8)
    # gradient: dl/dlogp = -A * ratio / (4 tokens * 2 sequences); clipped tokens give 0
    close(grad, [[-0.5 / 8, -0.9 / 8, -1.25 / 8, 0.0], [0.0, 0.9 / 8, 1.25 / 8, 1.5 / 8]])


def test_clipping_symmetric_default():
    out, grad = clip_case(epsilon=0.2)
    # range [0.8, 1.2]: row 0 now also clips 1.25 -> 1.2; row 1 unchanged
    close(out.loss, (-(0.5 + 0.9 + 1.2 + 1.2) / 4 + (0.8 + 0.9 + 1.25 + 1.5) / 4) / 2)  # 0.08125
    assert out.stats["clip_fraction/high"] == pytest.approx(2 / 8)
    assert out.stats["clip_fraction/low"] == pytest.approx(1 / 8)
    assert out.stats["clip_fraction"] == pytest.approx(3 / 8)
    close(grad[0], [-0.5 / 8, -0.9 / 8, 0.0, 0.0])


def test_multiple_iterations_ratio_from_old_logp():
    logp = t([[-1.0, -2.0]], grad=True)
    old = t([[-1.1, -1.9]])
    out = grpo_loss(logp, old, t([2.0]), torch.ones(1, 2, dtype=F64))
    # ratios exp(0.1) = 1.1051709, exp(-0.1) = 0.9048374, both inside [0.8, 1.2]
    # l = -2 * ratio -> mean(-2.2103418, -1.8096748) = -2.0100083
    close(out.loss, -2.010008336111607)
    assert out.stats["ratio/mean"] == pytest.approx(1.0050041680558035)
    assert out.stats["clip_fraction"] == 0.0
    out.loss.backward()
    close(logp.grad, [[-2 * 1.1051709180756477 / 2, -2 * 0.9048374180359595 / 2]])


# ---------------------------------------------------------------- IS weights


def test_is_weights_scale_policy_term_only():
    logp = t(LOGP, grad=True)
    w = t([[2.0, 1.0, 0.5], [1.0, 3.0, 1.0]])
    out = grpo_loss(logp, logp.detach(), t(ADV), t(MASK), is_weights=w)
    # row 0: -(2 + 1 + 0.5) / 3 = -1.1666667; row 1: (0.5 * 1 + 0.5 * 3) / 2 = 1 -> / 2 sequences
    close(out.loss, (-3.5 / 3 + 1.0) / 2)
    # zero weights leave only the KL term: row 0 mean 0.5 * 0.193147, row 1 0
    ref = logp.detach() + t([[-LN2] * 3, [0.0] * 3])
    zero = torch.zeros(2, 3, dtype=F64)
    out = grpo_loss(logp, logp.detach(), t(ADV), t(MASK), is_weights=zero, beta=0.5, ref_logp=ref)
    close(out.loss, 0.5 * K3_HALF / 2)


# ---------------------------------------------------------------- micro-batch invariance


@pytest.mark.parametrize("loss_type", loss_names())  # every variant must hold this
def test_micro_batches_sum_to_full_batch(loss_type):
    logp = t(
        [
            [-1.0, -2.0, -0.5, -0.1],
            [-0.3, -1.2, -0.7, -3.0],
            [-0.9, -0.4, -2.2, -1.1],
            [-0.2, -0.6, -1.5, -0.8],
        ]
    )
    old = logp + t(
        [
            [0.1, -0.3, 0.0, 0.4],
            [0.0, 0.2, -0.1, 0.0],
            [-0.5, 0.1, 0.3, 0.0],
            [0.05, 0.0, 0.0, -0.2],
        ]
    )
    ref = logp + t(
        [[0.2, 0.0, -0.1, 0.0], [0.3, -0.2, 0.0, 0.1], [0.0, 0.0, 0.4, -0.3], [-0.1, 0.1, 0.0, 0.0]]
    )
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])  # 3 + 1 + 4 + 2 = 10 tokens
    adv = t([1.0, -0.7, 0.3, -1.2])
    w = t([[1.0, 0.5, 2.0, 1.0], [1.5, 1.0, 1.0, 1.0], [0.8, 1.0, 3.0, 0.2], [1.0, 1.0, 0.1, 1.0]])
    common = dict(
        epsilon=0.2, epsilon_high=0.28, beta=0.04, loss_type=loss_type, max_completion_length=4
    )

    def loss(rows, **glob):
        lp = logp[rows].clone().requires_grad_(True)
        out = grpo_loss(
            lp,
            old[rows],
            adv[rows],
            mask[rows],
            ref_logp=ref[rows],
            is_weights=w[rows],
            **common,
            **glob,
        )
        out.loss.backward()
        return out.loss, lp.grad

    full, full_grad = loss(slice(0, 4))
    glob = dict(num_sequences=4, num_tokens=10.0)
    a, ga = loss(slice(0, 2), **glob)
    b, gb = loss(slice(2, 4), **glob)
    close(a + b, full.item(), tol=1e-12)
    close(torch.cat([ga, gb]), full_grad.tolist(), tol=1e-12)
    # without the global normalisers the halves are normalised locally and do not add up
    c, _ = loss(slice(0, 2))
    d, _ = loss(slice(2, 4))
    assert abs((c + d).item() - full.item()) > 1e-3


# ---------------------------------------------------------------- logits helpers


def test_selective_log_softmax_hand_values_and_temperature():
    logits = t([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    ids = torch.tensor([[0, 1]])
    # softmax([0, ln3]) = [0.25, 0.75]; equal logits -> 0.5
    close(selective_log_softmax(logits, ids), [[math.log(0.25), math.log(0.5)]])
    # T = 2: softmax([0, ln3 / 2]) = [1 / (1 + sqrt3), sqrt3 / (1 + sqrt3)] = [0.3660254, 0.6339746]
    close(
        selective_log_softmax(logits, ids, temperature=2.0), [[-1.005052538742381, math.log(0.5)]]
    )


def test_selective_log_softmax_matches_torch_and_grad():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=F64)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    for temp in (1.0, 0.7):
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        got = selective_log_softmax(a, ids, temperature=temp)
        want = torch.log_softmax(b / temp, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(got, want)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
    half = selective_log_softmax(logits.to(torch.bfloat16), ids)
    assert half.dtype == torch.float32
    ref = (
        torch.log_softmax(logits.to(torch.bfloat16).float(), -1)
        .gather(-1, ids.unsqueeze(-1))
        .squeeze(-1)
    )
    torch.testing.assert_close(half, ref)
    with pytest.raises(ValueError, match="ids"):
        selective_log_softmax(logits, ids[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(logits, ids, temperature=0.0)


def test_entropy_from_logits():
    logits = t([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf]]])
    # uniform over 4 -> ln 4; [0.25, 0.75] -> 0.25 ln 4 + 0.75 ln(4/3) = 0.5623351
    close(entropy_from_logits(logits[..., :4]), [[math.log(4.0), 0.5623351446188083]])
    # T = 2: p = [0.3660254, 0.6339746] -> 0.6568064
    close(entropy_from_logits(t([[[0.0, math.log(3.0)]]]), temperature=2.0), [[0.6568063976894717]])
    g = torch.Generator().manual_seed(1)
    rand = torch.randn(2, 3, 7, generator=g, dtype=F64)
    p = torch.softmax(rand / 1.3, dim=-1)
    torch.testing.assert_close(entropy_from_logits(rand, 1.3), -(p * p.log()).sum(-1))


# ---------------------------------------------------------------- errors


def test_clear_errors():
    logp = t(LOGP)
    adv, mask = t(ADV), t(MASK)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, logp, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, logp, adv, mask, loss_type="bnpo")
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, logp, t([1.0, 2.0, 3.0]), mask)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, logp, adv, mask[:, :2])
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss(logp, logp[:1], adv, mask)
    with pytest.raises(ValueError, match="is_weights"):
        grpo_loss(logp, logp, adv, mask, is_weights=t([1.0]))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, adv, mask, beta=0.1, ref_logp=logp[0])
    with pytest.raises(ValueError, match=r"\[B,T\]"):
        grpo_loss(logp[0], logp[0], adv, mask[0])
    with pytest.raises(ValueError, match="num_sequences"):
        grpo_loss(logp, logp, adv, mask, num_sequences=0)


def test_importance_sums_count_masked_tokens_before_truncation():
    old = torch.tensor([[0.0, -1.0, -2.0], [-0.5, 0.0, 0.0]])
    engine = torch.tensor([[-2.0, -1.0, -1.9], [-0.5, -0.05, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 9.0 is padding: ignored
    sums = importance_sums(old, engine, mask, cap=3.0, gap=math.log(1.1))
    raw = [math.exp(2.0), 1.0, math.exp(-0.1), 1.0, math.exp(0.05)]
    assert sums["is_weight/raw_mean"] == pytest.approx(sum(raw), rel=1e-6)
    assert sums["is_weight/capped_share"] == 1.0  # exp(2) > 3 only
    assert sums["is_weight/logp_gap_mean"] == pytest.approx(2.0 + 0.1 + 0.05, rel=1e-5)
    assert sums["is_weight/mismatch_share"] == 2.0  # |gap| > log 1.1 = 0.0953: 2.0 and 0.1
