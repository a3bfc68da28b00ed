"""Log-probs through a linear LM head with a hand-written backward: one ``[chunk, V]`` buffer.

Autograd through ``log_softmax(x W^T) gathered at ids`` keeps several vocabulary-sized tensors
alive per chunk (the logits, the exp inside logsumexp, the scattered one-hot gradient, their
sum). The gradient has a closed form, ``d logp / d logits = onehot(ids) - softmax(logits)``, so
the backward recomputes one chunk's logits, turns them into that gradient in place, and
multiplies it into the gradients of the hidden states and the weight: one ``[chunk, V]``
float32 buffer at a time. Only the hidden states, the weight and one logsumexp per token are
saved between forward and backward.

The head's matmul runs in ``compute_dtype`` (the autocast dtype when autocast is on, else the
weight's own), in the forward and again in the backward, so both see the same logits; the
softmax algebra is float32, as in ``selective_log_softmax``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in here: autocast's, if on for the weight's device."""
    kind = weight.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def linear_logps(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    ids: torch.Tensor,
    temperature: float,
    chunk: int,
    entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax((hidden W^T + b) / temperature)`` at ``ids`` (``[N,H] -> [N]``, float32),
    and the per-token entropy when asked (no gradient)."""
    dtype = compute_dtype(head.weight)
    with torch.autocast(hidden.device.type, enabled=False):
        logp, ent = _LinearLogps.apply(
            hidden, head.weight, head.bias, ids, temperature, chunk, dtype, entropy
        )
    return logp, (ent if entropy else None)


def tempered_logits(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: float
) -> torch.Tensor:
    """``(h W^T + b) / t`` in float32, the matmul in ``w``'s dtype (one chunk's logits)."""
    logits = F.linear(h.to(w.dtype), w, None if b is None else b.to(w.dtype)).float()
    return logits.div_(t) if t != 1.0 else logits


class _LinearLogps(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        ids: torch.Tensor,
        temperature: float,
        chunk: int,
        dtype: torch.dtype,
        entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight.to(dtype)
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        ent = hidden.new_zeros(n if entropy else 0, dtype=torch.float32)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = tempered_logits(hidden[s:e], w, bias, temperature)
            lse[s:e] = torch.logsumexp(logits, dim=-1)
            logp[s:e] = logits.gather(-1, ids[s:e].long().unsqueeze(-1)).squeeze(-1) - lse[s:e]
            if entropy:  # H = logsumexp - sum p x (-inf logits: p = 0, x clamped finite)
                probs = logits.sub(lse[s:e].unsqueeze(-1)).exp_()
                x = logits.clamp_(min=torch.finfo(torch.float32).min)
                ent[s:e] = lse[s:e] - probs.mul_(x).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, bias, ids, lse)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_ent: Any) -> tuple[Any, ...]:
        hidden, weight, bias, ids, lse = ctx.saved_tensors
        t, dtype = ctx.temperature, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
        n = hidden.shape[0]
        for s in range(0, n, ctx.chunk):
            e = min(s + ctx.chunk, n)
            g = grad_logp[s:e].float().unsqueeze(-1)
            # d logp / d logits = onehot(ids) - softmax, times the incoming gradient, / t
            grad = tempered_logits(hidden[s:e], w, bias, t).sub_(lse[s:e].unsqueeze(-1)).exp_()
            grad.mul_(-g).scatter_add_(-1, ids[s:e].long().unsqueeze(-1), g)
            if t != 1.0:
                grad.div_(t)
            if grad_b is not None:
                grad_b += grad.sum(0)
            grad = grad.to(dtype)
            if grad_h is not None:
                grad_h[s:e] = (grad @ w).to(hidden.dtype)
            if grad_w is not None:  # float32 accumulation over chunks
                h = hidden[s:e].to(dtype)
                if dtype == torch.float32:
                    grad_w.addmm_(grad.t(), h)
                else:
                    grad_w.add_(grad.t() @ h)
        gw = grad_w.to(weight.dtype) if grad_w is not None else None
        gb = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, gw, gb, None, None, None, None, None


__all__ = ["compute_dtype", "linear_logps", "tempered_logits"]
