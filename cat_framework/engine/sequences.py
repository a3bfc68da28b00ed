"""Token batches for training: left-padded prompts + right-padded completions, and the policy's
log-probs of the completion tokens.

Prompts are left-padded and completions right-padded (TRL's layout), so every row's completion
starts at the same column: log-probs need one slice and ``logits_to_keep`` skips the LM head on
prompt positions, which is most of the vocabulary-sized work for short answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cat_framework.engine.fused_head import fusable, logp_head
from cat_framework.engine.grpo import entropy_from_logits, selective_log_softmax
from cat_framework.engine.sampling_support import Support, support_log_softmax


@dataclass
class TokenBatch:
    """``input_ids``/``attention_mask`` [B, P + C]; ``completion_mask`` [B, C] marks real
    completion tokens; ``prompt_width`` is P."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    def rows(self, index: Sequence[int] | slice | torch.Tensor) -> TokenBatch:
        """A micro-batch (same column layout, so log-probs line up with the full batch)."""
        idx = index if isinstance(index, (slice, torch.Tensor)) else torch.as_tensor(list(index))
        return TokenBatch(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.completion_mask[idx],
            self.prompt_width,
        )

    def trimmed(self) -> TokenBatch:
        """The same rows without the columns that are padding in every row: prompt columns
        left of the longest prompt and completion columns right of the longest completion (a
        length-sorted micro-batch then costs its own width, not the step's widest)."""
        live = self.attention_mask.any(0)
        first = min(int(live.long().argmax()) if bool(live.any()) else 0, self.prompt_width)
        used = self.completion_mask.any(0).nonzero()
        width_c = int(used[-1]) + 1 if len(used) else 1
        end = self.prompt_width + width_c
        if first == 0 and end == self.input_ids.shape[1]:
            return self
        return TokenBatch(
            self.input_ids[:, first:end],
            self.attention_mask[:, first:end],
            self.completion_mask[:, :width_c],
            self.prompt_width - first,
        )

    def to(self, device: Any) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            self.prompt_width,
        )


def build_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> TokenBatch:
    """One row per (prompt, completion) pair of token ids."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    width_p = max((len(p) for p in prompts), default=0)
    width_c = max(1, max((len(c) for c in completions), default=1))
    rows = len(prompts)
    ids = torch.full((rows, width_p + width_c), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width_p + width_c), dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if p:
            ids[b, width_p - len(p) : width_p] = torch.tensor(list(p))
            mask[b, width_p - len(p) : width_p] = 1
        if c:
            ids[b, width_p : width_p + len(c)] = torch.tensor(list(c))
            mask[b, width_p : width_p + len(c)] = 1
    return TokenBatch(ids, mask, mask[:, width_p:].clone(), width_p)


def completion_logps(
    model: Any,
    batch: TokenBatch,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, C] of the completion tokens under ``log_softmax(logits / temperature)`` (the
    same temperature the backend sampled with, so old and new log-probs are comparable), and
    optionally the per-token entropy (no gradient). All-padding columns are not computed: the
    results are zero there (masked out by every caller). ``chunk`` > 0 fuses the log-softmax
    with the LM head, that many tokens at a time (``fused_head``: no ``[B,T,V]`` logits), where
    the model allows it."""
    full_width = batch.completion_mask.shape[1]
    batch = batch.trimmed()
    width_c = batch.completion_mask.shape[1]
    if chunk > 0 and fusable(model):
        with logp_head(model, batch.completion_ids, temperature, chunk, entropy) as head:
            logp = _forward(model, batch, width_c).logits[:, :-1, 0]
        ent = head.entropy
    else:
        logits = _forward(model, batch, width_c).logits[:, :-1]
        logp = selective_log_softmax(logits, batch.completion_ids, temperature)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = entropy_from_logits(logits.detach(), temperature)
    if width_c < full_width:  # back to the caller's [B, C] layout
        logp = torch.nn.functional.pad(logp, (0, full_width - width_c))
        ent = torch.nn.functional.pad(ent, (0, full_width - width_c)) if ent is not None else None
    return logp, ent


@torch.no_grad()
def completion_logps_on_support(
    model: Any, batch: TokenBatch, temperature: float, support: Support, chunk: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """No gradient: :func:`completion_logps` and the log-probs on the sampler's ``support``
    (:mod:`cat_framework.engine.sampling_support`), ``[B, C]`` each, from one forward pass."""
    full_width = batch.completion_mask.shape[1]
    batch = batch.trimmed()
    width_c = batch.completion_mask.shape[1]
    if chunk > 0 and fusable(model):
        with logp_head(model, batch.completion_ids, temperature, chunk, support=support) as head:
            logp = _forward(model, batch, width_c).logits[:, :-1, 0]
        assert head.on_support is not None
        kept = head.on_support
    else:
        logits = _forward(model, batch, width_c).logits[:, :-1]
        logp = selective_log_softmax(logits, batch.completion_ids, temperature)
        scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
        ids = batch.completion_ids
        kept = torch.stack(
            [support_log_softmax(scaled[b], ids[b], support) for b in range(len(ids))]
        )
    pad = (0, full_width - width_c)
    return torch.nn.functional.pad(logp, pad), torch.nn.functional.pad(kept, pad)


def _forward(model: Any, batch: TokenBatch, width_c: int) -> Any:
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        logits_to_keep=width_c + 1,
        use_cache=False,
    )


__all__ = ["TokenBatch", "build_batch", "completion_logps", "completion_logps_on_support"]
