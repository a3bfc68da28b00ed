"""The CaT-SFT cross-entropy, as pure functions of completion log-probs and masks.

The paper's loss (arXiv 2509.14234, v1 Eq. 13 / v3 Eq. 12) is
``L_SFT = -E_(q,s)[(1/|s|) sum_t log pi(s_t | q, s_<t)]``: each reference's *own* token mean,
then the mean over references, so a long reference weighs as much as a short one
(``sequence_mean``). ``token_mean`` (one mean over all target tokens of the batch, where long
references weigh more) was this framework's loss before and stays available.

The update loop sums micro-batch losses over micro-batches and processes
(:mod:`cat_framework.engine.update`), so each function returns a micro-batch's *share* of the
global loss: its sum divided by the global count (tokens, or sequences), never by its own.
"""

from __future__ import annotations

from typing import Literal

import torch

SftLoss = Literal["sequence_mean", "token_mean"]


def sequence_nll(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the mean negative log-likelihood of its target tokens ``[B]`` (``logp``,
    ``mask``: ``[B, C]``). A row without target tokens (padding) is 0, not NaN."""
    mask = mask.to(logp.dtype)
    return -(logp * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def loss_share(logp: torch.Tensor, mask: torch.Tensor, kind: SftLoss, total: float) -> torch.Tensor:
    """This micro-batch's share of the global loss: its sequences' token means summed over
    ``total`` = the global number of sequences (``sequence_mean``), or its target tokens'
    negative log-likelihood summed over ``total`` = the global number of target tokens
    (``token_mean``). The shares of all micro-batches of all processes add up to the loss."""
    if kind == "sequence_mean":
        value = sequence_nll(logp, mask).sum()
    else:
        value = -(logp * mask.to(logp.dtype)).sum()
    return value / max(total, 1.0)


def loss_total(mask: torch.Tensor, kind: SftLoss) -> torch.Tensor:
    """What this process adds to the global count ``loss_share`` divides by: its sequences
    (``sequence_mean``) or its target tokens (``token_mean``), as a float scalar to all-reduce."""
    if kind == "sequence_mean":
        return torch.tensor(float(mask.shape[0]), device=mask.device)
    return mask.sum().float()


def validation_sums(
    logp: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, kind: SftLoss
) -> torch.Tensor:
    """``[loss sum, count]`` of a validation micro-batch, rows weighted by ``weight`` (0 for a
    row that only pads a process's share so that all processes run the same forwards): the
    validation loss is the all-reduced sum over the all-reduced count, the same loss as the
    training one."""
    weight = weight.to(torch.float64)
    if kind == "sequence_mean":
        per_row = sequence_nll(logp, mask).to(torch.float64)
        return torch.stack([(per_row * weight).sum(), weight.sum()])
    masked = mask.to(logp.dtype)
    per_row = -(logp * masked).sum(-1).to(torch.float64)
    tokens = masked.sum(-1).to(torch.float64)
    return torch.stack([(per_row * weight).sum(), (tokens * weight).sum()])


__all__ = ["SftLoss", "loss_share", "loss_total", "sequence_nll", "validation_sums"]
