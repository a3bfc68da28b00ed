"""The paper's length penalty: "-1 to responses longer than 750 tokens" (HealthBench training).

Whether that -1 replaces the rubric reward or is added to it is not published, so both exist:

- ``add`` (default): ``reward = score + penalty`` for a long rollout. Long rollouts still differ
  by content (a better long answer keeps a higher reward), but any long one ranks below a short
  one with the same score.
- ``replace``: ``reward = penalty`` for a long rollout, whatever its score: every long rollout
  ties at the bottom of its group.

The penalty applies only to scorable rewards: an unscorable rollout (``None``) stays unscorable.
"Longer than" is strict: exactly ``max_tokens`` tokens is not penalised. The token count is
``len(completion.token_ids)``; a completion without token ids (a server that returns none) counts
its whitespace-separated words instead, an under-estimate that is recorded as such.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cat_framework import Completion, ComponentParams

PenaltyMode = Literal["add", "replace"]


class LengthPenalty(ComponentParams):
    """``length_penalty:`` parameters shared by the judge-based rewards."""

    max_tokens: int = Field(
        750, ge=1, description="Rollouts with more tokens than this are penalised (paper: 750)."
    )
    penalty: float = Field(-1.0, description="The penalty value (paper: -1).")
    mode: PenaltyMode = Field(
        "add",
        description="add: reward = score + penalty; replace: reward = penalty (score ignored).",
    )


def count_tokens(completion: Completion) -> tuple[int, bool]:
    """``(count, exact)``: token ids when present, else whitespace words (``exact=False``)."""
    if completion.token_ids:
        return len(completion.token_ids), True
    return len(completion.text.split()), False


def penalized(n_tokens: int, config: LengthPenalty | None) -> bool:
    """Whether a rollout of ``n_tokens`` tokens is penalised (strictly longer than the limit)."""
    return config is not None and n_tokens > config.max_tokens


def penalize(score: float | None, n_tokens: int, config: LengthPenalty | None) -> float | None:
    """The reward after the length penalty (``score`` unchanged when off or short enough).

    An unscorable ``None`` stays ``None``, even in ``replace`` mode: a penalty alone would turn a
    rollout the teacher could not score into a made-up reward."""
    if score is None or config is None or not penalized(n_tokens, config):
        return score
    return score + config.penalty if config.mode == "add" else config.penalty


__all__ = ["LengthPenalty", "PenaltyMode", "count_tokens", "penalize", "penalized"]
