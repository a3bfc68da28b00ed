"""GRPO math as pure tensor functions: advantages, KL estimators, the clipped loss, IS weights.

Nothing here touches a model, a tokenizer, a process group or a file, so every function can be
checked against numbers computed by hand (``tests/engine/test_grpo.py``) and the trainer only
wires them together.

Conventions (and which trainer each follows):

* Group advantages ``(r - mean_group) / (std_group + eps)`` with a Bessel-corrected std and
  ``eps = 1e-4``; ``scale_rewards`` ``group`` / ``batch`` / ``none`` as TRL's ``GRPOConfig``.
* KL: per-token k3 estimator in the loss (TRL, verl ``low_var_kl``; no clamping, as TRL), or k1
  summed over the sequence and subtracted from the reward (the CaT paper's / PPO-RLHF setting).
* ``loss_type``: the token losses are aggregated by the function registered under that name in
  :mod:`cat_framework.engine.grpo_losses` (TRL's ``grpo``, ``dr_grpo``, ``dapo``). Every
  normaliser can be passed globally, so summing the losses of micro-batches (gradient
  accumulation, data-parallel ranks) equals the loss of the whole batch.
* vLLM/trainer mismatch correction: truncated token-level IS weights (TRL ``token_truncate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from cat_framework.engine.grpo_losses import Normalisers, get_loss

ScaleRewards = Literal["group", "batch", "none"]

_SCALES = get_args(ScaleRewards)


def _unbiased_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std; 0 (not NaN) when only one element is reduced."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim))
    return x.std() if dim is None else x.std(dim=dim)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_rewards: ScaleRewards = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages of a flat reward vector ``[num_groups * group_size]``.

    Groups are contiguous. ``A = r - mean_group``, then divided by ``std_group + eps``
    (``"group"``), by ``std_batch + eps`` (``"batch"``) or not at all (``"none"``, Dr. GRPO).
    Stds are Bessel-corrected (as TRL); a group of one rollout has std 0. ``eps`` (TRL's 1e-4)
    keeps the division finite: a zero-std group has a zero numerator and so gets advantage 0,
    and a tiny-std group is amplified at most ``1/eps`` times.

    A ``NaN`` reward is *unscorable* (the teacher could not score that rollout): it is left out
    of its group's mean and std (and the batch std) and gets advantage 0, so a teacher failure
    never becomes a made-up reward (TRL's ``None`` reward semantics). A group with fewer than
    two scorable rollouts carries no signal: all its advantages are 0.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_groups*group_size], got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale_rewards not in _SCALES:
        raise ValueError(f"scale_rewards must be one of {_SCALES}, got {scale_rewards!r}")
    r = rewards.float() if not rewards.is_floating_point() else rewards
    valid = ~torch.isnan(r)
    if bool(valid.all()):
        groups = r.reshape(-1, group_size)
        centred = (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)
        if scale_rewards == "group":
            std = _unbiased_std(groups, dim=1).repeat_interleave(group_size)
            return centred / (std + eps)
        if scale_rewards == "batch":
            return centred / (_unbiased_std(r) + eps)
        return centred
    groups = torch.where(valid, r, torch.zeros_like(r)).reshape(-1, group_size)
    ok = valid.reshape(-1, group_size).to(r.dtype)
    count = ok.sum(dim=1, keepdim=True)
    mean_g = groups.sum(dim=1, keepdim=True) / count.clamp(min=1)
    dev = (groups - mean_g) * ok
    informative = (count >= 2).to(r.dtype)  # one scorable rollout has nothing to compare with
    centred = (dev * informative).reshape(-1)
    if scale_rewards == "group":
        var = (dev**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        std = var.sqrt().expand(-1, group_size).reshape(-1)
        return centred / (std + eps)
    if scale_rewards == "batch":
        return centred / (_unbiased_std(r[valid]) + eps)
    return centred


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups that carry no GRPO signal: all scorable rewards equal (unscorable
    ``NaN`` rewards ignored; a group with no scorable reward counts as no signal)."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if rewards.numel() == 0:
        return 0.0
    groups = rewards.float().reshape(-1, group_size)
    nan = torch.isnan(groups)
    hi = torch.where(nan, torch.full_like(groups, -torch.inf), groups).max(dim=1).values
    lo = torch.where(nan, torch.full_like(groups, torch.inf), groups).min(dim=1).values
    same = (hi == lo) | (nan.sum(dim=1) >= group_size - 1)
    return same.float().mean().item()


def unscorable_fraction(rewards: torch.Tensor) -> float:
    """Share of rollouts the teacher could not score (``NaN`` rewards)."""
    return torch.isnan(rewards.float()).float().mean().item() if rewards.numel() else 0.0


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): ``exp(d) - d - 1`` with ``d = ref - logp`` (>= 0)."""
    _same_shape("ref_logp", ref_logp, "logp", logp)
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def kl_penalized_rewards(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Reward-level KL: ``r_i - beta * sum_t mask * (logp - ref_logp)`` (k1 over the sequence).

    Shapes ``[B]``, ``[B,T]``, ``[B,T]``, ``[B,T]``; the result is detached.
    """
    _same_shape("ref_logp", ref_logp, "logp", logp)
    _same_shape("mask", mask, "logp", logp)
    _check_per_sequence("rewards", rewards, logp)
    k1 = ((logp - ref_logp) * mask.to(logp.dtype)).sum(dim=-1)
    return (rewards - beta * k1).detach()


def kl_outside_std(
    task_advantages: torch.Tensor, task: torch.Tensor, penalty: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Advantages with the reward-level KL penalty kept out of the group normalisation: the task
    reward's group advantages minus the penalty's deviation from its group mean (``penalty`` =
    beta x sequence KL). A group of equal task rewards then gets a beta-scale signal, not a
    unit-scale one; an unscorable row (NaN task reward) keeps advantage 0."""
    kl = torch.where(torch.isnan(task), torch.full_like(penalty, float("nan")), penalty)
    return task_advantages - group_advantages(kl, group_size, "none")


def kl_only_signal_share(task: torch.Tensor, penalized: torch.Tensor, group_size: int) -> float:
    """The share of groups whose only signal is the KL term: their task rewards carry none (all
    equal, or fewer than two scorable) while the KL-penalised rewards differ. Under group std
    scaling such a group gets advantages of unit scale from KL noise alone, which
    ``frac_reward_zero_std`` (task rewards) does not show. ``[G*n]`` each, NaN = unscorable."""
    t, p = task.reshape(-1, group_size).float(), penalized.reshape(-1, group_size).float()
    valid = ~torch.isnan(t)
    enough = valid.sum(dim=1) >= 2
    inf = torch.tensor(float("inf"), device=t.device)

    def spread(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x, -inf).amax(dim=1) - torch.where(valid, x, inf).amin(dim=1)

    only_kl = enough & (spread(t) == 0) & (spread(p) > 0)
    return float(only_kl.float().mean()) if len(only_kl) else 0.0


def truncation_mask(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """``mask [B,T]`` with the rows where ``truncated [B]`` is true zeroed (same dtype)."""
    _check_per_sequence("truncated", truncated, mask)
    keep = ~truncated.to(torch.bool)
    return mask * keep.unsqueeze(-1).to(mask.dtype)


def importance_weights(
    old_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float = 3.0
) -> torch.Tensor:
    """Truncated per-token IS weights ``min(exp(old_logp - engine_logp), cap)``, detached.

    Corrects for rollouts sampled by another engine (vLLM) than the trainer (TRL token_truncate).
    """
    _same_shape("engine_logp", engine_logp, "old_logp", old_logp)
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    return torch.exp(old_logp - engine_logp).clamp(max=cap).detach()


def importance_sums(
    old_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float, gap: float
) -> dict[str, float]:
    """Masked token sums of the importance-weight statistics, before truncation: the raw
    weight ``exp(old - engine)``, the tokens it exceeds ``cap`` on, the absolute log-prob gap,
    and the tokens whose gap exceeds ``gap``. Sums (not means), so micro-batches and processes
    add up; divide by the global token count."""
    _same_shape("engine_logp", engine_logp, "old_logp", old_logp)
    diff = old_logp - engine_logp
    raw = torch.where(mask > 0, torch.exp(diff), 0.0)  # no inf * 0
    spread = torch.where(mask > 0, diff.abs(), 0.0)
    values = {"raw_mean": raw, "capped_share": raw > cap, "logp_gap_mean": spread,
              "mismatch_share": spread > gap}  # fmt: skip
    return {f"is_weight/{k}": float((v.to(mask.dtype) * mask).sum()) for k, v in values.items()}


def _check_logits(logits: torch.Tensor, temperature: float) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B,T,V], got {tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _row_logits(logits: torch.Tensor, b: int, temperature: float) -> torch.Tensor:
    row = logits[b] if logits.dtype in (torch.float32, torch.float64) else logits[b].float()
    return row / temperature if temperature != 1.0 else row


def selective_log_softmax(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` gathered at ``ids``: ``[B,T,V] x [B,T] -> [B,T]``.

    One row at a time (gather minus logsumexp), so no full ``[B,T,V]`` log-softmax is kept;
    half-precision rows are upcast to float32 and the result is float32. Differentiable.
    """
    _check_logits(logits, temperature)
    if ids.shape != logits.shape[:2]:
        raise ValueError(f"ids {tuple(ids.shape)} must be logits[:2] {tuple(logits.shape[:2])}")
    out = []
    for b in range(logits.shape[0]):
        row = _row_logits(logits, b, temperature)
        picked = row.gather(-1, ids[b].long().unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(row, dim=-1))
    if not out:
        return logits.new_zeros(ids.shape, dtype=torch.promote_types(logits.dtype, torch.float32))
    return torch.stack(out)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token entropy ``[B,T]`` of ``softmax(logits / temperature)``, one row at a time.

    Callers wrap it in ``torch.no_grad()``; half-precision rows are computed in float32 and
    ``-inf`` logits (masked vocabulary) contribute 0.
    """
    _check_logits(logits, temperature)
    out = []
    for b in range(logits.shape[0]):
        logp = torch.log_softmax(_row_logits(logits, b, temperature), dim=-1)
        p = logp.exp()
        out.append(-(p * logp).masked_fill(p == 0, 0.0).sum(dim=-1))  # -inf logits add 0
    if not out:
        return logits.new_zeros(
            logits.shape[:2], dtype=torch.promote_types(logits.dtype, torch.float32)
        )
    return torch.stack(out)


@dataclass
class LossOutput:
    """The scalar loss and detached statistics of one ``grpo_loss`` call."""

    loss: torch.Tensor
    stats: dict[str, float]


def _same_shape(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, {ref_name} {tuple(ref.shape)}")


def _check_per_sequence(name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    if ref.dim() != 2:
        raise ValueError(f"expected [B,T] tensors, got {tuple(ref.shape)}")
    if x.shape != ref.shape[:1]:
        raise ValueError(f"{name} must be [B]={ref.shape[0]}, got {tuple(x.shape)}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return (x * mask).sum().item() / n.item() if n.item() > 0 else 0.0


def _check_loss_args(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    is_weights: torch.Tensor | None,
    beta: float,
) -> None:
    """Shape and argument errors of ``grpo_loss``, raised before any compute."""
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B,T], got {tuple(logp.shape)}")
    _same_shape("old_logp", old_logp, "logp", logp)
    _same_shape("mask", mask, "logp", logp)
    _check_per_sequence("advantages", advantages, logp)
    if is_weights is not None:
        _same_shape("is_weights", is_weights, "logp", logp)
    if ref_logp is not None:
        _same_shape("ref_logp", ref_logp, "logp", logp)
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (reference log-probs of the sampled tokens)")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> LossOutput:
    """Clipped GRPO surrogate over ``[B,T]`` token log-probs.

    Per token: ``ratio = exp(logp - old_logp)``,
    ``l = -min(ratio * A, clamp(ratio, 1 - epsilon, 1 + epsilon_high) * A)``, times
    ``is_weights`` if given, plus ``beta * k3(logp, ref_logp)`` if ``beta > 0``. The masked
    ``l`` is aggregated by the function registered as ``loss_type`` in
    :mod:`~cat_framework.engine.grpo_losses` (an unknown name is a ValueError that lists them).

    ``num_sequences`` (default ``B``) and ``num_tokens`` (default ``mask.sum()``) are global
    normalisers: with the whole batch's counts passed, the losses of micro-batches sum to the
    loss of the batch. Stats are local to this call: ``kl`` (masked mean of k3 when ``ref_logp``
    is given, else 0.0), ``clip_fraction`` (``/low``: ratio < 1-eps with A < 0, ``/high``:
    ratio > 1+eps_high with A > 0) and ``ratio/mean``, all over the masked tokens.
    """
    _check_loss_args(logp, old_logp, advantages, mask, ref_logp, is_weights, beta)
    n_seq = logp.shape[0] if num_sequences is None else num_sequences
    norm = Normalisers(n_seq, num_tokens, max_completion_length)
    variant = get_loss(loss_type)
    variant.check(norm)
    eps_low = epsilon
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if not 0 <= eps_low < 1 or eps_high < 0:
        raise ValueError(f"need 0 <= epsilon < 1 and epsilon_high >= 0, got {eps_low}, {eps_high}")
    if n_seq < 1:
        raise ValueError(f"num_sequences must be >= 1, got {n_seq}")

    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)
    if is_weights is not None:
        per_token = per_token * is_weights.to(logp.dtype)
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        if beta > 0:
            per_token = per_token + beta * kl
    loss = variant.aggregate(per_token, m, norm)

    with torch.no_grad():
        r = ratio.detach()
        low = ((r < 1 - eps_low) & (adv < 0)).to(m.dtype)
        high = ((r > 1 + eps_high) & (adv > 0)).to(m.dtype)
        stats = {
            "kl": _masked_mean(kl.detach(), m) if kl is not None else 0.0,
            "clip_fraction": _masked_mean(low + high, m),
            "clip_fraction/low": _masked_mean(low, m),
            "clip_fraction/high": _masked_mean(high, m),
            "ratio/mean": _masked_mean(r, m),
        }
    return LossOutput(loss=loss, stats=stats)
