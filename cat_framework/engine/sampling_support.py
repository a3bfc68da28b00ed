"""The trainer's log-probs on the support the sampler drew from (top-k / top-p), so importance
weights compare like with like.

With top-k or top-p on, an engine that reports the log-probs of the distribution it sampled from
(vLLM's ``processed_logprobs``) renormalises them over the kept tokens, while the trainer's
``log_softmax(logits / T)`` spreads over the whole vocabulary. Their ratio then carries the kept
probability mass ``S`` at every position: an on-policy IS weight of ``S`` (0.1 at top-k 20 on
a 150k vocabulary) instead of 1, not a policy change (trl#6789). The fix here is trainer-side
replay of the truncation, as prime-rl and DeepSeek-V3.2's "keep sampling mask": the same top-k
then top-p filter on the trainer's tempered logits, renormalised over what it keeps. The sampled
token is always kept (a float tie at the edge of the nucleus must not make its log-prob -inf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

#: what a sampler's ``Completion.logprobs`` are log-probs of (``Backend.logprob_support``)
LogprobSupport = Literal["full", "sampled", "raw"]


@dataclass(frozen=True)
class Support:
    """The sampling filter: keep the ``top_k`` best tokens (0: all), then the smallest set of
    them whose probability reaches ``top_p`` (1: all)."""

    top_k: int = 0
    top_p: float = 1.0

    @property
    def truncates(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


def support_log_softmax(logits: torch.Tensor, ids: torch.Tensor, support: Support) -> torch.Tensor:
    """``[N, V]`` tempered logits and ``[N]`` token ids -> ``[N]`` log-probs under the filtered,
    renormalised distribution (vLLM's order: top-k first, then top-p over what top-k kept)."""
    logits = logits.float()
    kept = logits.clone()
    vocab = logits.shape[-1]
    if 0 < support.top_k < vocab:
        kth = torch.topk(logits, support.top_k, dim=-1).values[:, -1:]
        kept.masked_fill_(logits < kth, float("-inf"))
    if support.top_p < 1.0:
        probs = torch.softmax(kept, dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token once the tokens before it already hold top_p of the mass
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) > support.top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        kept.masked_fill_(drop, float("-inf"))
    picked = logits.gather(-1, ids.long().unsqueeze(-1))
    kept.scatter_(-1, ids.long().unsqueeze(-1), picked)  # the sampled token always counts
    return picked.squeeze(-1) - torch.logsumexp(kept, dim=-1)


__all__ = ["LogprobSupport", "Support", "support_log_softmax"]
