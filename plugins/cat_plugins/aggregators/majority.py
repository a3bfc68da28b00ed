"""Majority vote over final answers, clustered by symmetric mathematical equivalence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, Reference, RolloutGroup
from cat_framework.answers import Answer, cluster_answers, normalize_answer, read_answer


class MajorityParams(ComponentParams):
    mode: Literal["math_verify", "string"] = Field(
        "math_verify",
        description="How answers are grouped: math_verify (equivalent values, e.g. 1/2 and 0.5, "
        "share a cluster) or string (the paper's normalised string match).",
    )
    fallback: Literal["none", "phrase", "number"] = Field(
        "phrase",
        description="What counts as a rollout's vote: none (\\boxed{} or '#### n' only), phrase "
        "(also 'the final answer is X'; default: rollouts that commit to no answer do not "
        "vote), or number (also the last number or expression).",
    )


def _order_key(answer: Answer, text: str) -> tuple[str, str, str]:
    """A key that does not depend on sampling order: the answer, then the rollout itself."""
    return (normalize_answer(answer.text), answer.text, text)


class MajorityAggregator(Aggregator):
    """The most common final answer among the rollouts (math only).

    Answers are extracted from every rollout and clustered by equivalence that holds both ways
    (math-verify is asymmetric: with a cluster's first member as gold, two orders of the same
    rollouts could elect different winners) between *every* two members of a cluster, so no
    answer chains two different values into one cluster
    (:func:`~cat_framework.answers.cluster_answers`). The largest cluster wins; a tie goes to the
    cluster whose smallest normalised answer sorts first, and the reference is the member with
    the smallest (normalised answer, answer, text): permuting the rollouts never changes the
    reference. Rollouts without a committed answer do not vote; if none has one, the reference
    is empty text with ``answer=None``. ``details``: ``index``, ``answers`` (per rollout),
    ``votes`` (one ``{answer, count, members}`` per cluster, winner first), ``no_answer``
    (count), ``tie`` (whether the tie-break decided).
    """

    name = "majority"
    tasks = frozenset({"math"})
    is_answer_vote = True
    Params = MajorityParams

    params: MajorityParams

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        return [self._vote(g) for g in groups]

    def _vote(self, group: RolloutGroup) -> Reference:
        texts = [r.text for r in group.rollouts]
        read = [read_answer(t, fallback=self.params.fallback) for t in texts]
        clusters = cluster_answers(read, self.params.mode)
        heads = {
            id(c): min(c, key=lambda i: _order_key(read[i], texts[i]))  # type: ignore[arg-type]
            for c in clusters
        }

        def rank(cluster: list[int]) -> tuple[int, tuple[str, str, str]]:
            head = heads[id(cluster)]
            return (-len(cluster), _order_key(read[head], texts[head]))  # type: ignore[arg-type]

        ranked = sorted(clusters, key=rank)
        answers = [a.text if a is not None else None for a in read]
        votes = [{"answer": answers[heads[id(c)]], "count": len(c), "members": c} for c in ranked]
        details = {
            "answers": answers,
            "votes": votes,
            "no_answer": len(texts) - sum(len(c) for c in clusters),
            "tie": len(ranked) > 1 and len(ranked[0]) == len(ranked[1]),
        }
        if not ranked:
            return Reference(
                text="", method=self.name, answer=None, details={**details, "index": None}
            )
        winner = heads[id(ranked[0])]
        return Reference(
            text=texts[winner],
            method=self.name,
            answer=answers[winner],
            details={**details, "index": winner},
        )
