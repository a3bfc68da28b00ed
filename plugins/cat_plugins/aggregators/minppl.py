"""minPPL: the rollout the scorer model finds least surprising (lowest mean token NLL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cat_framework import Aggregator, ComponentParams, Reference, RolloutGroup
from cat_framework.answers import extract_answer
from cat_plugins.aggregators.answer_level import AnswerLevel, selected_answer_field


def mean_nll(logprobs: Sequence[float]) -> float:
    """Mean negative log-likelihood per token; an empty continuation is infinitely unlikely."""
    return -sum(logprobs) / len(logprobs) if logprobs else float("inf")


def argmin_first(values: Sequence[float]) -> int:
    """Index of the smallest value; ties go to the earliest rollout."""
    return min(range(len(values)), key=lambda i: (values[i], i))


class MinPPLAggregator(Aggregator):
    """The rollout with the lowest mean token NLL of its output tokens under the policy.

    The paper's minPPL ranks rollouts by the perplexity of the model that sampled them (the
    policy); ``scorer: anchor`` ranks them under the frozen anchor instead (an ablation)."""

    name = "minppl"

    class Params(ComponentParams):
        scorer: Literal["anchor", "policy"] = Field(
            "policy",
            description="Model whose log-probs rank the rollouts (teacher forcing): the policy "
            "that sampled them (paper) or the frozen anchor.",
        )
        use_sampled_logprobs: bool = Field(
            False,
            description="With scorer=policy, rank by the log-probs recorded at sampling time "
            "instead of a scoring pass (only exact at temperature 1).",
        )
        fallback: AnswerLevel = selected_answer_field()

    def aggregate(self, groups: Sequence[RolloutGroup]) -> list[Reference]:
        roles = self.require_roles()
        backend = roles.anchor if self.params.scorer == "anchor" else roles.policy
        flat = [(g, r) for g in groups for r in g.rollouts]
        if self.params.use_sampled_logprobs and self.params.scorer == "policy":
            scored = [list(r.logprobs or ()) for _, r in flat]
        else:
            contexts = [g.prompt.messages for g, _ in flat]
            continuations = [list(r.token_ids) if r.token_ids else r.text for _, r in flat]
            scored = backend.score(contexts, continuations) if flat else []
        refs, k = [], 0
        for g in groups:
            nlls = [mean_nll(scored[k + i]) for i in range(len(g.rollouts))]
            k += len(g.rollouts)
            best = argmin_first(nlls)
            text = g.rollouts[best].text
            refs.append(
                Reference(
                    text=text,
                    method=self.name,
                    answer=extract_answer(text, fallback=self.params.fallback),
                    details={"index": best, "mean_nll": [round(x, 6) for x in nlls]},
                )
            )
        return refs
