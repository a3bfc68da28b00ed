"""``confidence_vote``: majority vote weighted by each rollout's token-level confidence.

A low-confidence rollout (one the policy sampled through many unlikely tokens) counts for less
than a confident one; with equal confidences this is exactly majority vote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, Reference, RolloutGroup, hookimpl
from cat_framework.answers import cluster_answers, extract_answer


class ConfidenceVote(Aggregator):
    """Majority vote over final answers, each vote weighted by exp(mean token log-prob)."""

    name = "confidence_vote"
    tasks = frozenset({"math"})

    class Params(ComponentParams):
        sharpness: float = Field(
            1.0, ge=0.0, description="Weight = confidence ** sharpness (0 = plain majority vote)."
        )
        missing_logprobs_weight: float = Field(
            1.0, ge=0.0, description="Weight of a rollout whose backend returned no log-probs."
        )

    def weight(self, logprobs: Sequence[float] | None) -> float:
        if not logprobs:
            return self.params.missing_logprobs_weight
        confidence = math.exp(sum(logprobs) / len(logprobs))
        return confidence**self.params.sharpness

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        return [self._one(g) for g in groups]

    def _one(self, group: RolloutGroup) -> Reference:
        answers = [extract_answer(r.text) for r in group.rollouts]
        weights = [self.weight(r.logprobs) for r in group.rollouts]
        clusters = cluster_answers(answers)
        if not clusters:
            return Reference(
                text=group.rollouts[0].text, method=self.name, details={"no_answers": True}
            )
        scores = [sum(weights[i] for i in c) for c in clusters]
        # ties go to the cluster whose first member came first (clusters are in that order)
        best = max(range(len(clusters)), key=lambda k: (scores[k], -clusters[k][0]))
        winner = clusters[best][0]
        return Reference(
            text=group.rollouts[winner].text,
            method=self.name,
            answer=answers[winner],
            details={
                "scores": {
                    answers[c[0]]: round(s, 6) for c, s in zip(clusters, scores, strict=True)
                },
                "weights": [round(w, 6) for w in weights],
                "answers": answers,
                "index": winner,
            },
        )


@hookimpl
def register_aggregators(register):
    register(ConfidenceVote)
