"""Log-probs of the chosen tokens fused with the LM head, in token chunks: no ``[B,T,V]`` logits.

At long completions the full-vocabulary logits dominate the update's memory: 8 rows of 4k tokens
over a 49k vocabulary are 6.4 GB in float32, kept for backward, and their gradient is as large
again. Here the model's output embedding is swapped, for one forward, for a head that runs the
original one on chunks of tokens inside a non-reentrant checkpoint: the forward keeps one
chunk's logits at a time and returns only the log-probs; backward recomputes each chunk's logits
from the saved hidden states. The numbers are those of ``selective_log_softmax`` on the full
logits (float32 log-softmax of ``logits / temperature``), to float rounding.

The swap happens inside the model's own forward, so DDP, FSDP2 (the head belongs to the root
group, gathered during the root's forward and again for backward) and PEFT wrappers see an
ordinary call. Models whose forward transforms the head's output (soft-capping, logit scaling)
are not fused: :func:`fusable` says which.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from cat_framework.engine.linear_logps import compute_dtype, linear_logps, tempered_logits
from cat_framework.engine.sampling_support import Support, support_log_softmax

#: config keys of models whose forward changes the head's output before returning it
_POST_HEAD_KEYS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def chunk_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 256,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(head(hidden) / temperature)`` at ``ids`` (``[N,H] x [N] -> [N]``, float32),
    ``chunk`` tokens at a time, and optionally the per-token entropy (no gradient)."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if type(head) is torch.nn.Linear:  # closed-form backward: one [chunk, V] buffer
        return linear_logps(hidden, head, ids, temperature, chunk, entropy)
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], ids[start : start + chunk]
        if torch.is_grad_enabled():
            # the entropy only on the first call: backward's recompute needs the log-probs alone
            first = [entropy]
            lp, ent = checkpoint(_logps_once, head, h, t, temperature, first, use_reentrant=False)
        else:
            lp, ent = _logps(head, h, t, temperature, entropy)
        logps.append(lp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros(ids.shape, dtype=torch.float32)
        return empty, (empty if entropy else None)
    return torch.cat(logps), (torch.cat(ents) if entropy else None)


@torch.no_grad()
def support_chunk_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    chunk: int,
    support: Support,
) -> tuple[torch.Tensor, torch.Tensor]:
    """No gradient: the log-probs of :func:`chunk_logps` and those on ``support``
    (:func:`~cat_framework.engine.sampling_support.support_log_softmax`), both from the same
    logits, ``chunk`` tokens at a time."""
    full, kept = [], []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], ids[start : start + chunk]
        if type(head) is torch.nn.Linear:  # the very logits linear_logps computes
            w = head.weight.to(compute_dtype(head.weight))
            with torch.autocast(h.device.type, enabled=False):
                logits = tempered_logits(h, w, head.bias, temperature)
        else:
            logits = head(h).float()
            logits = logits / temperature if temperature != 1.0 else logits
        picked = logits.gather(-1, t.long().unsqueeze(-1)).squeeze(-1)
        full.append(picked - torch.logsumexp(logits, dim=-1))
        kept.append(support_log_softmax(logits, t, support))
    if not full:
        empty = hidden.new_zeros(ids.shape, dtype=torch.float32)
        return empty, empty
    return torch.cat(full), torch.cat(kept)


def _logps_once(
    head: torch.nn.Module, h: torch.Tensor, ids: torch.Tensor, temperature: float, first: list
) -> tuple[torch.Tensor, torch.Tensor]:
    entropy, first[0] = first[0], False
    return _logps(head, h, ids, temperature, entropy)


def _logps(
    head: torch.nn.Module, h: torch.Tensor, ids: torch.Tensor, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(h).float()
    if temperature != 1.0:
        logits = logits / temperature
    norm = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1) - norm
    if not entropy:
        return picked, picked.new_zeros(())
    with torch.no_grad():  # H = logsumexp - sum p x: two [N,V] temporaries, not five
        p = torch.softmax(logits, dim=-1)
        ent = norm - (p * logits).nansum(dim=-1)  # -inf logits: 0 * -inf is nan, counted 0
    return picked, ent


class _LogpHead(torch.nn.Module):
    """Stands in for the output embedding for one forward: ``[B, C+1, H] -> [B, C+1, 1]`` log-probs
    of ``targets [B, C]`` (the last position, which predicts past the completion, is 0)."""

    def __init__(self, inner: torch.nn.Module, targets: torch.Tensor, temperature: float,
                 chunk: int, entropy: bool, support: Support | None = None) -> None:  # fmt: skip
        super().__init__()
        self.inner = inner
        self.targets, self.temperature, self.chunk = targets, temperature, chunk
        self.want_entropy = entropy
        self.entropy: torch.Tensor | None = None
        self.support = support
        self.on_support: torch.Tensor | None = None  # [B, C] when ``support`` is given

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b, c = self.targets.shape
        if hidden.shape[:2] != (b, c + 1):
            raise ValueError(f"hidden {tuple(hidden.shape)} does not match targets [{b}, {c}+1]")
        flat = hidden[:, :-1].reshape(b * c, hidden.shape[-1])
        if self.support is not None:
            logp, kept = support_chunk_logps(
                self.inner, flat, self.targets.reshape(-1), self.temperature, self.chunk,
                self.support,
            )  # fmt: skip
            self.on_support = kept.reshape(b, c)
            return torch.nn.functional.pad(logp.reshape(b, c), (0, 1)).unsqueeze(-1)
        logp, ent = chunk_logps(
            self.inner, flat, self.targets.reshape(-1), self.temperature, self.chunk,
            self.want_entropy,
        )  # fmt: skip
        if ent is not None:
            self.entropy = ent.reshape(b, c)
        return torch.nn.functional.pad(logp.reshape(b, c), (0, 1)).unsqueeze(-1)


def _core(model: Any) -> Any:
    """The model that owns the output embedding, through DDP's ``module``."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def fusable(model: Any) -> bool:
    """Whether the model's forward returns its output embedding's result unchanged."""
    core = _core(model)
    if not hasattr(core, "get_output_embeddings") or core.get_output_embeddings() is None:
        return False
    config = getattr(core, "config", None)
    text = getattr(config, "text_config", None) or config
    return not any(getattr(text, key, None) not in (None, 1, 1.0) for key in _POST_HEAD_KEYS)


@contextmanager
def logp_head(
    model: Any,
    targets: torch.Tensor,
    temperature: float,
    chunk: int,
    entropy: bool = False,
    support: Support | None = None,
) -> Iterator[_LogpHead]:
    """Within the block, ``model(...).logits`` is ``[B, C+1, 1]`` log-probs of ``targets`` (and,
    with ``support``, without gradient, the head's ``on_support`` log-probs)."""
    core = _core(model)
    original = core.get_output_embeddings()
    head = _LogpHead(original, targets, temperature, chunk, entropy, support)
    core.set_output_embeddings(head)
    try:
        yield head
    finally:
        core.set_output_embeddings(original)


__all__ = ["chunk_logps", "fusable", "logp_head", "support_chunk_logps"]
