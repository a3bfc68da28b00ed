"""Majority vote over final answers, clustered by mathematical equivalence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, Reference, RolloutGroup
from cat_framework.answers import cluster_answers, extract_answer


class MajorityParams(ComponentParams):
    mode: Literal["math_verify", "string"] = Field(
        "math_verify",
        description="How answers are grouped: math_verify (equivalent values, e.g. 1/2 and 0.5, "
        "share a cluster) or string (the paper's normalised string match).",
    )
    fallback: Literal["none", "phrase", "number"] = Field(
        "number",
        description="Answer extraction when a rollout has no \\boxed{} or '#### n': none, phrase "
        "('the answer is X'), or number (the phrase, else the last number).",
    )


class MajorityAggregator(Aggregator):
    """The most common final answer among the rollouts (math only).

    Answers are extracted from every rollout and clustered by equivalence; the largest cluster
    wins. Ties go to the cluster whose first member comes earliest in the group (deterministic,
    and the same as sampling order). The reference is that first member's rollout, with its
    answer. Rollouts without an answer do not vote; if none has one, the reference is empty
    text with ``answer=None``. ``details``: ``index``, ``answers`` (per rollout), ``votes``
    (one ``{answer, count, members}`` per cluster, largest first), ``no_answer`` (count),
    ``tie`` (whether the tie-break decided).
    """

    name = "majority"
    tasks = frozenset({"math"})
    Params = MajorityParams

    params: MajorityParams

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        return [self._vote(g) for g in groups]

    def _vote(self, group: RolloutGroup) -> Reference:
        answers = [extract_answer(r.text, fallback=self.params.fallback) for r in group.rollouts]
        clusters = cluster_answers(answers, self.params.mode)
        ranked = sorted(clusters, key=lambda c: (-len(c), c[0]))
        votes = [{"answer": answers[c[0]], "count": len(c), "members": c} for c in ranked]
        details = {
            "answers": answers,
            "votes": votes,
            "no_answer": len(group.rollouts) - sum(len(c) for c in clusters),
            "tie": len(ranked) > 1 and len(ranked[0]) == len(ranked[1]),
        }
        if not ranked:
            return Reference(
                text="", method=self.name, answer=None, details={**details, "index": None}
            )
        winner = ranked[0][0]
        return Reference(
            text=group.rollouts[winner].text,
            method=self.name,
            answer=answers[winner],
            details={**details, "index": winner},
        )
